"""Every published number says what its record says.

docs/benchmarks.md and the README's results table are generated from benchmarks/results/*.json by
benchmarks/report.py; ``report.py --check`` regenerates both in memory and compares. Figures in the
README's prose must appear on that generated page (so each has a record); results files are
append-only, and moving records is done by benchmarks/results_tool.py, never by hand.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))

def _check(env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


# figures in the prose that are not benchmark results, with the reason
NOT_RESULTS = {"3.11": "the Python version"}
#: a figure right after one of these names is the value a run was set to ("at `tau` 0.7"), not a result
PARAMETERS = ("tau",)
#: the names a figure is attributed to in the prose, lower case, "-" and "_" as spaces: the columns (methods) of a table,
#: which must name the figure's own cell (its column, row or text), and the settings (detector, metric, export,
#: review), which may name it anywhere above it (section heading, table caption)
COLUMNS = ("co mining", "joint", "original", "brl", "augmented", "retrain", "supervised", "mean teacher", "acrst", "stac",
           "mixed", "self training", "full")
SETTINGS = ("fcos", "faster r cnn", "onnx", "review", "ap50", "ap75", "ap", "precision", "recall")
LABELS = COLUMNS + SETTINGS
#: variants a column's name carries on the page ("brl_2x", "co_mining_valcheck") and how the prose says them: a figure
#: of a variant says it in its clause, and a figure whose clause says it is that variant's
VARIANTS = {"2x": "twice the batch", "valcheck": "with the val check"}
#: units a count is published with ("51 boxes"): a count with one of them is a figure too
COUNT_UNITS = ("boxes", "nuclei")
_FIGURE = (r"(?<![\w.])(\d+(?:\.\d+)? ± \d+(?:\.\d+)?(?: ?%)?|\d+(?:\.\d+)?×|\d+(?:\.\d+)? ?%|\d+\.\d+"
           rf"|\d+(?= (?:{'|'.join(COUNT_UNITS)})\b))")


def _plain(text: str) -> str:
    """``text`` without code, links and the generated results table (figures there are checked by report.py --check)."""
    body = re.sub(r"```.*?```", "", text, flags=re.S)
    if "<!-- results:start" in body:
        body = body[:body.index("<!-- results:start")] + body[body.index("<!-- results:end -->"):]
    body = re.sub(r"`[^`]*`", lambda m: " " + m.group(0).strip("`").replace("_", " ") + " "
                  if re.fullmatch(r"`[a-z_ ]+`", m.group(0)) else " ", body)  # a `name` stays a label, code goes
    return re.sub(r"\]\([^)]*\)", "]", body)


def _words(text: str) -> str:
    return " " + re.sub(r"[^a-z0-9%.×±]+", " ", text.lower().replace("'s", " ").replace("-", " ").replace("_", " ")).strip() + " "


def _label(window: str, names: tuple[str, ...], first: bool) -> set[str]:
    """The first (or the last) of ``names`` in ``window``, as a set (empty when it names none)."""
    w = _words(window)
    found = [(w.find(f" {n} ") if first else w.rfind(f" {n} "), n) for n in names if f" {n} " in w]
    return {(min if first else max)(found)[1]} if found else set()


def prose_claims(text: str) -> list[tuple[str, set[str]]]:
    """(figure, labels) for each figure of ``text``: a mean and its spread are one figure ("74.1 ± 0.1"). Its column is
    the first of :data:`COLUMNS` between the figure before it (or its clause's start) and it: the clause's subject
    ("co-mining on BRL's loss 74.2" is co-mining's); without one, the last before it in its sentence. Its setting is
    the last of :data:`SETTINGS` in that clause ("AP 9.3"), else in its sentence. A percentage also needs "%", a count ("51 boxes") its unit."""
    body = _plain(text)
    claims, last = [], 0
    for m in re.finditer(_FIGURE, body):
        fig = m.group(1)
        if re.search(rf"\b(?:{'|'.join(PARAMETERS)})\s+$", body[max(0, m.start() - 20):m.start()]):
            continue  # a setting's value, not a result
        start = max(last, body.rfind("(", 0, m.start()) + 1, body.rfind(";", 0, m.start()) + 1, body.rfind(": ", 0, m.start()) + 1)
        sentence = max(body.rfind(". ", 0, m.start()), (i + 2 if (i := body.rfind(".** ", 0, m.start())) >= 0 else -1), body.rfind("\n- ", 0, m.start()),
                       body.rfind("\n\n", 0, m.start()))
        start = max(start, sentence + 1)  # a clause never reaches back into the sentence before
        column = _label(body[start:m.start()], COLUMNS, first=True) or _label(body[sentence + 1:m.start()], COLUMNS, first=False)
        setting = _label(body[start:m.start()], SETTINGS, first=False) or _label(body[sentence + 1:m.start()], SETTINGS, first=False)
        labels = column | setting
        said = _words(body[start:m.start()] if _label(body[start:m.start()], COLUMNS, first=True) else body[sentence + 1:m.start()])
        said = said[said.rfind(f" {next(iter(column))} "):] if column else ""  # what the clause says of its column
        labels |= {f"+{v}" for v, way in VARIANTS.items() if f" {way} " in said}
        unit = re.match(r" (\w+)", body[m.end():])
        labels |= {"%"} if fig.endswith("%") else {unit.group(1)} if re.fullmatch(r"\d+", fig) and unit else set()
        claims.append((fig, labels))
        last = m.end()
    return claims


def _prose_figures(text: str) -> list[str]:
    return [fig for fig, _ in prose_claims(text)]


def page_contexts(page: str) -> list[tuple[str, str]]:
    """Every place of the generated page a figure can stand in, as (its own text, what stands above it): a table cell
    with its column header and row label, under its section heading and table caption; any other line under its
    section heading. A cell of a "%" column or row says "%". A row's label is its first cell and, in a table with a
    "method" column, that cell ("10% | acrst"); a row that begins "the same" measures what the row above it does, whose
    label it carries."""
    out, heading, caption, head, row_above = [], "", "", None, ""
    for line in page.splitlines():
        if line.startswith("#"):
            heading = line
        if not line.startswith("|"):
            head = None
            if line.strip():
                caption = line
                out.append((line, heading))
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if head is None:
            head, row_above = cells, ""
        elif not re.fullmatch(r"[\s:-]*", "".join(cells)):
            row = " ".join([cells[0]] + [c for h, c in zip(head[1:], cells[1:]) if h == "method"])
            row = f"{row_above} {row}" if row.startswith("the same") else row
            row_above = row
            out += [(f"{col} | {row} | {cell}" + (" %" if "%" in col + row else ""), f"{heading} {caption}")
                    for col, cell in zip(head, cells)]
    return out


def _stands_in(figure: str, context: str) -> bool:
    """``figure`` is in ``context`` on word boundaries: "2.2" is not in "82.2", a mean is not a spread ("± 2.2"), a
    spread ("± 2.2", "std (2.2)") nor a signed difference ("+2.2 AP"), a percentage may stand in a cell of a "%" column without its sign."""
    fig = figure.rstrip(" %")
    return re.search(rf"(?<![\w.+−-])(?<!± )(?<!std \(){re.escape(fig)}(?![\w]|\.\d)", context) is not None


def unbound(text: str, page: str) -> list[str]:
    """The figures of ``text`` that no place of ``page`` gives together with the name it is attributed to: each must
    stand, on word boundaries, in one cell or line of the page that names its column (the cell's header, row or text)
    and its setting (there or in the heading and caption above)."""
    def variant_fits(labels: set[str], own: str) -> bool:
        """``own`` (a cell's column, row and text, or a line) carries the variants the figure's clause says, and no
        other: by a name ("brl_2x") or in words ("twice the batch")."""
        names = {token for name in re.findall(r"[a-z0-9_.]+", own.lower()) for token in name.split("_")}
        return all((f"+{v}" in labels) == (v in names or f" {way} " in _words(own)) for v, way in VARIANTS.items())

    def binds(labels: set[str], own: str, above: str) -> bool:
        named = {label for label in labels if label[0] not in "+-"}
        return variant_fits(labels, own) and all(
            f" {label} " in _words(own if label in COLUMNS else f"{above} {own}") or label in own for label in named)

    contexts = page_contexts(page)
    return [f"{fig} ({', '.join(sorted(labels)) or 'no label'})" for fig, labels in prose_claims(text)
            if fig not in NOT_RESULTS and not any(_stands_in(fig, own) and binds(labels, own, above) for own, above in contexts)]


def test_page_and_readme_table_are_generated_from_the_records():
    proc = _check()
    assert proc.returncode == 0, proc.stderr


#: the texts whose prose quotes benchmark results: the README, the user guide and the findings page
PROSE = ["README.md", "docs/guide.md", "docs/findings.md"]


@pytest.mark.parametrize("doc", PROSE)
def test_every_figure_in_the_prose_stands_on_the_page_with_its_label(doc):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    text = (ROOT / doc).read_text()
    assert prose_claims(text), "the extractor found no figure at all"
    missing = unbound(text, page)
    assert not missing, f"{doc} figures the page does not give with their label: {missing}"


def test_changelog_figures_above_the_history_heading_stand_on_the_page():
    """CHANGELOG entries above "## History (figures of their day)" are checked like the prose; those below are history."""
    text = (ROOT / "CHANGELOG.md").read_text()
    assert HISTORY in text
    missing = unbound(text.split(HISTORY, 1)[0], (ROOT / "docs" / "benchmarks.md").read_text())
    assert not missing, f"CHANGELOG.md figures above {HISTORY!r} the page does not give with their label: {missing}"


#: the CHANGELOG heading below which figures are history (not checked)
HISTORY = "## History (figures of their day)"


@pytest.mark.parametrize("doc, old, new", [
    ("docs/findings.md", "co-mining AP 9.3", "co-mining AP 2.2"),  # "2.2" stands in "82.2": a substring would pass
    ("README.md", "51 boxes", "91 boxes"),
    ("docs/findings.md", "`joint` on BRL's loss 74.9 ± 0.6", "co-mining on BRL's loss 74.9 ± 0.6"),  # joint's, to co-mining
    # a variant's figure given to its plain column, and back: the page names both "brl" and "brl_2x", "co_mining" and
    # "co_mining_valcheck"
    ("docs/findings.md", "BRL's loss on twice the batch reached 78.9", "BRL's loss reached 78.9"),
    ("docs/findings.md", "co-mining with the val check 26.1 ± 2.9", "co-mining without the val check 26.1 ± 2.9"),
    ("docs/findings.md", "co-mining without it 30.3", "co-mining with the val check 30.3"),
    ("docs/findings.md", "dev AP50: self-training 22.4", "dev AP50: the original 22.4"),  # self-training's, to the original
])
def test_the_checker_fails_a_figure_changed_or_given_to_another_label(doc, old, new):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    text = (ROOT / doc).read_text()
    assert old in text
    assert set(unbound(text.replace(old, new), page)) - set(unbound(text, page))


@pytest.mark.parametrize("doc", PROSE)
def test_every_link_into_a_docs_page_names_one_of_its_headings(doc):
    from report import heading_anchor

    links = re.findall(r"(?:docs/)?(benchmarks|findings)\.md#([^)\s]+)", (ROOT / doc).read_text())
    assert links, f"{doc} links no section of the pages"
    broken = []
    for target, anchor in links:
        page = (ROOT / "docs" / f"{target}.md").read_text()
        if anchor not in {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", page, flags=re.M)}:
            broken.append(f"{target}.md#{anchor}")
    assert not broken, f"{doc} links to sections the pages do not have: {sorted(set(broken))}"


def test_heading_anchor_is_the_one_github_renders():
    from report import heading_anchor

    assert heading_anchor("Real images: nuclei (fluorescence microscopy), 50 % of the boxes erased, tiled") == \
        "real-images-nuclei-fluorescence-microscopy-50--of-the-boxes-erased-tiled"
    assert heading_anchor("Self-training (`method.ema_decay=0.99`)") == "self-training-methodema_decay099"


def test_prose_extractor_sees_figures_outside_code_and_the_table_with_their_labels():
    text = ("Co-mining gains 4.2 AP (12 %) at 2.5× the cost, 70.0 ± 10.6 % recovered.\n```bash\nminedet train x tau=0.55\n```\n"
            "`0.66` <!-- results:start -->| 77.7 |<!-- results:end --> [link](a#b-9.9) `joint` on it 75.0 ± 1.2, 51 boxes")
    assert prose_claims(text) == [("4.2", {"co mining"}), ("12 %", {"co mining", "%", "ap"}), ("2.5×", {"co mining", "ap"}),
                                  ("70.0 ± 10.6 %", {"co mining", "%", "ap"}), ("75.0 ± 1.2", {"joint"}),
                                  ("51", {"joint", "boxes"})]


def test_a_figure_binds_on_word_boundaries_to_its_own_cell():
    page = ("## Rivals\n\n**AP** (mean)\n\n| split | original | joint_brl | joint_brl recall (%) |\n|---|---|---|---|\n"
            "| hard | 82.2 | 75.0 ± 1.2 | 52.7 ± 16.7 |\n\n- hard: joint - original = +2.2 AP, within one std (3.3)\n")
    assert unbound("The original reached AP 82.2; `joint` on BRL's loss 75.0 ± 1.2 and recall 52.7 ± 16.7 %.", page) == []
    assert unbound("The original reached AP 2.2.", page) == ["2.2 (ap, original)"]  # not inside 82.2, nor +2.2
    assert unbound("co-mining on BRL's loss 75.0 ± 1.2", page) == ["75.0 ± 1.2 (co mining)"]  # joint's cell
    assert unbound("The original reached 3.3.", page) == ["3.3 (original)"]  # a spread is not a figure of its own
    assert unbound("joint recall 16.7 %", page) == ["16.7 % (%, joint, recall)"]
    variants = ("## Trees\n\n| column | dev AP50 |\n|---|---|\n| brl | 34.4 |\n| brl_2x | 36.0 |\n| co_mining | 30.3 |\n"
                "| **co_mining_valcheck** (default) | 28.3 |\n\n| | original on BRL's loss, twice the batch |\n|---|---|\n"
                "| AP | 48.0 ± 2.6 |\n")
    assert unbound("BRL's loss 34.4, BRL's loss on twice the batch 36.0; co-mining with the val check 28.3, co-mining "
                   "without it 30.3; BRL's loss on twice the batch 48.0 ± 2.6", variants) == []
    assert unbound("BRL's loss 36.0", variants) == ["36.0 (brl)"]  # the variant's figure, given to the plain column
    assert unbound("BRL's loss on twice the batch 34.4", variants) == ["34.4 (+2x, brl)"]
    assert unbound("co-mining 28.3", variants) == ["28.3 (co mining)"]  # a prefix of the column's name binds nothing
    assert unbound("co-mining with the val check 30.3", variants) == ["30.3 (+valcheck, co mining)"]


def test_a_row_label_takes_its_method_cell_and_the_same_row_takes_the_label_above():
    page = ("## Semi\n\n| labelled | method | 1 | 7 |\n|---|---|---|---|\n| 10% | acrst | 49.0 ± 11.9 | 54.3 ± 3.9 |\n"
            "| 10% | mean_teacher | 54.4 ± 5.2 | 34.7 ± 13.9 |\n\n## Nuclei\n\n| | brl |\n|---|---|\n"
            "| recall at mined precision ≥ 80 % (%) | 50.7 ± 14.5 |\n| the same with the part rule (%) | 52.7 ± 16.7 |\n")
    assert unbound("Class 1: ACRST 49.0 ± 11.9 where Mean Teacher's reaches 54.4 ± 5.2.", page) == []
    assert unbound("Class 1: Mean Teacher 49.0 ± 11.9.", page) == ["49.0 ± 11.9 (mean teacher)"]
    assert unbound("BRL's mined boxes at precision ≥ 80 % recover 52.7 ± 16.7 % with the part rule.", page) == []
    assert unbound("BRL's mined boxes at precision 52.7 ± 16.7 % with the part rule.", page.replace("the same", "with")) != []
    assert [f for f, _ in prose_claims("At `tau` 0.7 the teacher; tau 0.5 reached 68.3")] == ["68.3"]  # a setting's value


def _sandbox(tmp_path: Path) -> dict:
    shutil.copytree(BENCH / "results", tmp_path / "results")
    (tmp_path / "docs").mkdir()
    shutil.copy(ROOT / "docs" / "benchmarks.md", tmp_path / "docs" / "benchmarks.md")
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    return {"MINEDET_BENCH_RESULTS": str(tmp_path / "results"), "MINEDET_BENCH_DOCS": str(tmp_path / "docs"),
            "MINEDET_BENCH_README": str(tmp_path / "README.md")}


@pytest.mark.slow
def test_check_fails_when_a_published_figure_or_a_record_changes(tmp_path):
    env = _sandbox(tmp_path)
    assert _check(env).returncode == 0
    readme = tmp_path / "README.md"
    text = readme.read_text()
    start, end = text.index("<!-- results:start"), text.index("<!-- results:end -->")
    table = text[start:end]
    figure = re.search(r"\d+\.\d ± \d+\.\d", table).group(0)
    # changed in the table itself (the prose may quote the same figure earlier)
    readme.write_text(text[:start] + table.replace(figure, "99.9 ± 0.1", 1) + text[end:])
    proc = _check(env)
    assert proc.returncode == 1 and "README.md" in proc.stderr
    readme.write_text(text)
    # a new record (a re-run) changes what the page must say
    res_path = tmp_path / "results" / "demo.json"
    res = json.loads(res_path.read_text())
    res["records"].append({**res["records"][0], "ap": 0.123, "origin": {"command": "x", "date": "2030-01-01T00:00:00+00:00",
                                                                       "git_commit": "0" * 40, "machine": {}}})
    res_path.write_text(json.dumps(res))
    proc = _check(env)
    assert proc.returncode == 1 and "benchmarks.md" in proc.stderr


def test_results_are_appended_with_their_origin_and_tables_use_the_latest(tmp_path, monkeypatch):
    import common

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    rec = {"method": "original", "split": "hard", "seed": 0, "ap": 0.5}
    common.append_results("t", [rec], note="first", derive=lambda rs: [f"{len(rs)} settings"])
    common.append_results("t", [{**rec, "ap": 0.6}, {**rec, "seed": 1, "ap": 0.7}], derive=lambda rs: [f"{len(rs)} settings"])
    res = common.load_results("t")
    assert [r["ap"] for r in res["records"]] == [0.5, 0.6, 0.7]  # nothing replaced
    assert all(r["origin"]["command"] and "date" in r["origin"] for r in res["records"])
    assert res["note"] == "first" and res["derived"] == ["2 settings"]
    assert sorted(r["ap"] for r in common.latest(res["records"])) == [0.6, 0.7]
    with pytest.raises(ValueError, match="append-only"):
        common.write_json("t", {**res, "records": res["records"][1:]})
    with pytest.raises(ValueError, match="no origin"):
        common.append_records("t", [rec])


def test_benchmarks_appending_at_once_keep_every_record(tmp_path):
    """Benchmarks run side by side append to one results file; none may drop another's record."""
    code = ("import sys; sys.path.insert(0, {bench!r}); import common; "
            "[common.append_results('t', [{{'method': 'm', 'seed': int(sys.argv[1]), 'i': i}}]) for i in range(15)]")
    env = {**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path)}
    procs = [subprocess.Popen([sys.executable, "-c", code.format(bench=str(BENCH)), str(k)], cwd=ROOT, env=env)
             for k in range(4)]
    assert all(p.wait() == 0 for p in procs)
    recs = json.loads((tmp_path / "t.json").read_text())["records"]
    assert sorted((r["seed"], r["i"]) for r in recs) == [(k, i) for k in range(4) for i in range(15)]


def test_results_tool_restores_lost_records_and_copies_with_provenance(tmp_path, monkeypatch):
    import common
    import results_tool

    monkeypatch.setattr(common, "RESULTS", tmp_path)
    old = {"name": "d", "command": "python benchmarks/bench_demo.py", "date": "2026-01-01T00:00:00+00:00", "git_commit": "abc",
           "machine": {"cores": 2}, "records": [{"method": "m", "seed": 0, "ap": 0.1}, {"method": "m", "seed": 0, "ap": 0.2}]}
    now = {**old, "records": [old["records"][1]]}
    lost = results_tool.lost_records(old, now)
    assert [r["ap"] for r in lost] == [0.1]
    assert lost[0]["origin"]["git_commit"] == "abc" and lost[0]["origin"]["command"] == "python benchmarks/bench_demo.py"
    assert results_tool.lost_records(old, old) == []
    copies = results_tool.matching(old, {"ap": "0.2"})
    assert len(copies) == 1 and copies[0]["origin"]["copied_from"] == "d"
    (tmp_path / "src.json").write_text(json.dumps({**old, "name": "src"}))
    env = {**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(BENCH / "results_tool.py"), "copy", "src", "dst", "--where", "seed=0", "ap=0.1"],
                          cwd=ROOT, capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    dst = json.loads((tmp_path / "dst.json").read_text())
    assert [r["ap"] for r in dst["records"]] == [0.1] and dst["records"][0]["origin"]["copied_from"] == "src"
