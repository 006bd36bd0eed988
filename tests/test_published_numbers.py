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

# figures in the README prose that are not benchmark results, with the reason
NOT_RESULTS = {"3.11": "the Python version"}


def _check(env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH / "report.py"), "--check"], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=300)


def _prose_figures(readme: str) -> list[str]:
    """Decimal figures, percentages and ratios in a README-like text outside code, links and the generated table."""
    body = re.sub(r"```.*?```", "", readme, flags=re.S)
    if "<!-- results:start" in body:
        start, end = body.index("<!-- results:start"), body.index("<!-- results:end -->")
        body = body[:start] + body[end:]
    body = re.sub(r"`[^`]*`", "", body)
    body = re.sub(r"\]\([^)]*\)", "]", body)
    # a mean and its spread are one figure: "74.1 ± 0.1" must stand on the page as written, not each half somewhere
    return re.findall(r"(?<![\w.])(\d+(?:\.\d+)? ± \d+(?:\.\d+)?(?: ?%)?|\d+(?:\.\d+)?×|\d+(?:\.\d+)? ?%|\d+\.\d+)", body)


def _percent_cells(page: str) -> set[str]:
    """Figures the page gives in percent: in a table cell whose column header or row label says "%", each
    "mean ± std" and its mean alone (a prose figure may quote the mean), plus every figure written with "%"."""
    found = set(re.findall(r"(\d+(?:\.\d+)?(?: ± \d+(?:\.\d+)?)?) ?%", page))
    lines = page.splitlines()
    for i, line in enumerate(lines[:-1]):
        if not (line.startswith("|") and re.fullmatch(r"\|[\s:|-]+\|", lines[i + 1].strip())):
            continue
        head = [c.strip() for c in line.strip().strip("|").split("|")]
        for row in lines[i + 2:]:
            if not row.startswith("|"):
                break
            cells = [c.strip() for c in row.strip().strip("|").split("|")]
            for col, cell in zip(head, cells):
                if "%" in col or "%" in cells[0]:
                    # a count in brackets ("32 mined per run") is not a percentage
                    for mean, spread in re.findall(r"(?<![\w.])(\d+(?:\.\d+)?)( ± \d+(?:\.\d+)?)?",
                                                   re.sub(r"\([^)]*\)", "", cell)):
                        found |= {mean, mean + spread}
    return found


def _unpublished(figures: list[str], page: str) -> list[str]:
    """The figures the page does not give: a percentage must be a percentage there too, the rest must appear as written."""
    percent = _percent_cells(page)
    return [f for f in figures if f not in NOT_RESULTS
            and (f.rstrip("% ") not in percent if f.endswith("%") else f not in page)]


def test_page_and_readme_table_are_generated_from_the_records():
    proc = _check()
    assert proc.returncode == 0, proc.stderr


#: the texts whose prose quotes benchmark results: the README, the user guide and the findings page
PROSE = ["README.md", "docs/guide.md", "docs/findings.md"]


@pytest.mark.parametrize("doc", PROSE)
def test_every_figure_in_the_prose_is_on_the_generated_page(doc):
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    figures = _prose_figures((ROOT / doc).read_text())
    assert figures, "the extractor found no figure at all"
    missing = _unpublished(figures, page)
    assert not missing, f"{doc} figures with no record on docs/benchmarks.md: {missing}"


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


def test_prose_extractor_sees_figures_outside_code_and_the_table():
    text = ("Co-mining gains 4.2 AP (12 %) at 2.5× the cost, 70.0 ± 10.6 % recovered.\n```bash\nminedet train x tau=0.55\n```\n"
            "`0.66` <!-- results:start -->| 77.7 |<!-- results:end --> [link](a#b-9.9)")
    assert _prose_figures(text) == ["4.2", "12 %", "2.5×", "70.0 ± 10.6 %"]


def test_a_percentage_must_be_a_percentage_on_the_page():
    page = ("AP 65.9 on hard; mined 12% of them.\n\n| | a | recall (%) |\n|---|---|---|\n| x | 40.0 | 52.7 ± 16.7 / 3.5 |\n"
            "| precision (%) | 81.0 ± 2.0 (7 mined) | – |\n")
    figures = ["65.9 %", "65.9", "12 %", "52.7 ± 16.7 %", "52.7 %", "3.5 %", "81.0 %", "81.0 ± 2.0", "40.0 %", "40.0", "7 %"]
    assert _unpublished(figures, page) == ["65.9 %", "40.0 %", "7 %"]


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
