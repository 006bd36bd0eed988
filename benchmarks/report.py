"""Regenerate docs/benchmarks.md (and docs/img/*.png) from benchmarks/results/*.json.

Usage: python benchmarks/report.py
Tables are never typed by hand: every number below comes from a results file, with the command
that produced it, its date, commit and machine.
"""

from __future__ import annotations

import json
import os
import re
import statistics
import sys
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

from bench_co_mining import BY_LABEL as CO_MINING_COLUMNS
from bench_mixed import COLUMNS as MIXED_COLUMNS
from bench_real import BY_LABEL as NUCLEI_BY_LABEL
from bench_real import COLUMNS as NUCLEI_COLUMNS
from bench_real import NucleiColumn, retrain_suffix
from common import RESULTS, ROOT, latest, record_key, threads_of

# MINEDET_BENCH_DOCS redirects the generated page and its plots (used by the smoke tests)
_DOCS_DIR = os.environ.get("MINEDET_BENCH_DOCS") or ROOT / "docs"
DOCS = Path(_DOCS_DIR) / "benchmarks.md"
IMG = Path(_DOCS_DIR) / "img"


def pct(x) -> str:
    return "–" if x is None else f"{100 * x:.1f}"


def mean_std(xs: list[float]) -> str:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{100 * xs[0]:.1f}"
    return f"{100 * statistics.mean(xs):.1f} ± {100 * statistics.stdev(xs):.1f}"


def origins(res: dict) -> list[dict]:
    """Where each record came from: its own ``origin`` (command, date, commit, machine), or, for a
    record written before records carried one, the file's header (its command list and commit)."""
    legacy = {"commands": list(dict.fromkeys(res.get("commands") or [res["command"]])), "date": res["date"],
              "git_commit": res.get("git_commit"), "machine": res.get("machine", {}), "legacy": True}
    return [r.get("origin") or legacy for r in res["records"]]


def header(res: dict) -> list[str]:
    """The commands, commits and machines every record of the section came from."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, o in enumerate(origins(res)):
        key = (o.get("git_commit") or "?")[:10], tuple(o.get("commands") or [o["command"]]), bool(o.get("legacy"))
        groups[key + (o.get("restored_from") or o.get("copied_from") or "",)].append(i)
    out = []
    for (commit, cmds, legacy, moved), idx in groups.items():
        o = origins(res)[idx[0]]
        m = o.get("machine", {})
        note = ""
        if legacy:
            written = [f"`{c}`" for c in res.get("legacy_commits", [])]
            note = (" (written before each record carried its own origin: the file's last commit and machine, every "
                    "command that wrote to it" + (f"; the file was written at commits {', '.join(written)}" if written else "")
                    + ")")
        if o.get("restored_from"):
            note += f" (restored by `benchmarks/results_tool.py` from the file as it was at commit `{o['restored_from']}`)"
        if o.get("copied_from"):
            note += f" (copied by `benchmarks/results_tool.py` from {o['copied_from']}.json)"
        out.append(f"- {len(idx)} record{'s' * (len(idx) != 1)} from commit `{commit}`{note}, {o['date'][:10]}, "
                   f"{m.get('cores', '?')} cores, {m.get('torch_threads', '?')} torch thread(s), torch {m.get('torch', '?')}, "
                   f"{m.get('device', 'cpu')}" + (f" ({m['cpu_capability']} kernels)" if m.get("cpu_capability") else "")
                   + _beside([origins(res)[i] for i in idx]) + ": " + ", ".join(f"`{c}`" for c in cmds))
    return out + [""]


def _beside(group: list[dict]) -> str:
    """", beside N other benchmark processes (M paused)" for origins that counted them, else nothing."""
    running = sorted({o["other_benchmarks"] for o in group if o.get("other_benchmarks") is not None})
    if not running:
        return ""
    paused = sorted({o.get("paused_benchmarks") or 0 for o in group})
    n = str(running[0]) if len(running) == 1 else f"{running[0]}–{running[-1]}"
    stopped = "" if paused == [0] else f" ({paused[0] if len(paused) == 1 else f'{paused[0]}–{paused[-1]}'} paused)"
    return f", beside {n} other benchmark process{'es' * (running != [1])}{stopped}"


def _seed_list(rs: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in rs if r.get("seed") is not None})
    return f"seed{'s' * (len(seeds) != 1)} {', '.join(map(str, seeds))}"


def by_threads(rs: list[dict], fmt) -> str:
    """``fmt(records)`` for the records of one cell; records of different thread counts never share a figure (the
    count alone moves AP): then one figure per count, each followed by its count and its seeds, joined by " / "."""
    groups: dict[int | None, list[dict]] = defaultdict(list)
    for r in rs:
        groups[threads_of(r)].append(r)
    if len(groups) <= 1:
        return fmt(rs)
    order = sorted(groups, key=lambda n: (n is None, n or 0))
    return " / ".join(f"{fmt(groups[n])} ({'threads not recorded' if n is None else f'{n} thread' + 's' * (n != 1)}, "
                      f"{_seed_list(groups[n])})" for n in order)


def seed_cell(rs: list[dict], metric: str, all_seeds: list) -> str:
    """mean ± std of ``metric`` over the records of one table cell (split by thread count, :func:`by_threads`); a cell
    with fewer seeds than the table's header names them."""
    def fmt(group: list[dict]) -> str:
        return mean_std([r.get(metric) for r in group])

    mixed = len({threads_of(r) for r in rs}) > 1
    seeds = sorted(r["seed"] for r in rs)
    few = f" ({_seed_list(rs)})" if rs and seeds != all_seeds and not mixed else ""
    return by_threads(rs, fmt) + few


def reruns(res: dict, label) -> list[str]:
    """Every setting run more than once, with each run's AP and origin (tables use the latest)."""
    by_key: dict[tuple, list[tuple[dict, dict]]] = defaultdict(list)
    for r, o in zip(res["records"], origins(res)):
        by_key[record_key(r)].append((r, o))
    lines = []
    for runs in by_key.values():
        if len(runs) > 1 and runs[0][0].get("ap") is not None:
            parts = [f"{pct(r['ap'])} (commit `{(o.get('git_commit') or '?')[:10]}`, {o['date'][:10]}, "
                     + (f"threads not recorded: the file's last write used {o.get('machine', {}).get('torch_threads', '?')})"
                        if o.get("legacy") else f"{o.get('machine', {}).get('torch_threads', '?')} thread(s))")
                     for r, o in runs]
            lines.append(f"- {label(runs[0][0])}: AP " + ", then ".join(parts))
    if lines:
        lines = ["Settings run more than once (the tables use the latest run; every run stays in the results file):", "",
                 *lines, ""]
    return lines


def section_demo(res: dict) -> list[str]:
    out = [f"## {TITLES['demo']}", "", *header(res), "| run date | command | steps | wall (min) | AP | AP50 | AP75 | target met |",
           "|---|---|---|---|---|---|---|---|"]
    for r, o in sorted(zip(res["records"], origins(res)), key=lambda ro: ro[1]["date"]):
        out.append(f"| {o['date'][:16].replace('T', ' ')} | `{r['demo_command']}` | {r['steps']} | {r['wall_s'] / 60:.1f} | "
                   f"{pct(r['ap'])} | {pct(r['ap50'])} | {pct(r['ap75'])} | {'yes' if r['meets_target'] else 'no'} |")
    out += ["", f"Target: {res.get('target', '')}. Wall time includes building the dataset.", ""]
    pc = res["records"][0].get("per_class") or {}
    if pc:
        out += ["Per-class AP: " + ", ".join(f"{k}: {pct(v)}" for k, v in pc.items()), ""]
    return out


def section_splits(res: dict) -> list[str]:
    out = [f"## {TITLES['splits']}", "", *header(res), "| operation | images | boxes | wall (s) | peak RSS (MB) | within limits |",
           "|---|---|---|---|---|---|"]
    for r in res["records"]:
        out.append(f"| {r['op']} | {r['images']:,} | {r['boxes']:,} | {r['wall_s']:.1f} | {r['peak_rss_mb']:.0f} | "
                   f"{'yes' if r['within_limits'] else 'no'} |")
    lim = res.get("limits", {})
    out += ["", f"Limits: {lim.get('wall_s', '?')} s and {lim.get('peak_rss_mb', '?')} MB per operation.", ""]
    return out


def section_runs(res: dict, title: str) -> list[str]:
    """Generic multi-seed training comparison: rows (split), columns (method), mean ± std AP."""
    recs = latest(res["records"])
    splits = sorted(dict.fromkeys(r["split"] for r in recs),
                    key=lambda s: SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER))
    # the paper's column order (Table 1: original, augmented, joint, co-mining), then variants as recorded
    first = ["original", "augmented", "joint", "brl", "retrain", "co_mining"]
    methods = sorted(dict.fromkeys(r["method"] for r in recs), key=lambda m: first.index(m) if m in first else len(first))
    all_seeds = sorted({r["seed"] for r in recs})
    cells = defaultdict(list)
    for r in recs:
        cells[(r["split"], r["method"])].append(r)
    out = [f"## {title}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    legend = [f"`{m}`: {CO_MINING_COLUMNS[m].meaning}" for m in methods if m in CO_MINING_COLUMNS]
    if legend and res.get("name", "").startswith("co_mining"):
        out += ["Columns: " + "; ".join(legend) + ".", ""]
    if "easy" in splits and "hard" in splits:
        out += ["The splits follow the BRL protocol: `easy` erases one box of every image, `hard` floor(n/2) of an image's n. "
                "With the digits' few boxes per image, `easy` erases fewer boxes than `hard` but leaves no image complete, "
                "and an image with one box loses its only label (`hard` keeps it), so `easy` need not be the milder split here.", ""]
    for metric in ("ap", "ap50"):
        out += [f"**{metric.upper()}** (mean ± std over seeds {all_seeds})", "",
                "| split | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
        for s in splits:
            out.append(f"| {s} | " + " | ".join(seed_cell(cells[(s, m)], metric, all_seeds) for m in methods) + " |")
        out.append("")
    times = {m: [r["step_time_s"] for r in recs if r["method"] == m and r.get("step_time_s")] for m in methods}
    if times[methods[0]] and sum(bool(t) for t in times.values()) > 1:  # a ratio needs the base and one more
        base = methods[0]
        out += ["| method | mean step time (s) | ratio to " + base + " |", "|---|---|---|"]
        for m in methods:
            if times[m] and times[base]:
                t, b = statistics.mean(times[m]), statistics.mean(times[base])
                out.append(f"| {m} | {t:.3f} | {t / b:.2f}× |")
        out += ["", "These step times come from separate runs, some hours apart, so machine noise is in the ratios; "
                "the [Loader](#loader) section times the methods' steps alternately in one process.", ""]
    totals = [(r["split"], r["method"], *t) for r in recs if (t := pseudo_totals(r)) is not None]
    if totals:
        out += ["Mined boxes against the erased annotations over the whole run (branch o; precision, recall, boxes mined "
                "per erased box; mean over seeds):", ""]
        for s, m in dict.fromkeys((s, m) for s, m, *_ in totals):
            xs = [t[2:] for t in totals if t[:2] == (s, m)]
            out.append(f"- {s}/{m}: precision {statistics.mean(x[0] for x in xs):.2f}, recall {statistics.mean(x[1] for x in xs):.3f}, "
                       f"{statistics.mean(x[2] for x in xs):.3f} mined per erased box"
                       + false_kinds_text([r for r in recs if (r["split"], r["method"]) == (s, m)]))
        out.append("")
    for key, label in (("quality_o_precision", "pseudo precision (branch o)"), ("quality_o_recall", "pseudo recall (branch o)"),
                       ("quality_precision", "pseudo precision"), ("quality_recall", "pseudo recall")):
        vals = [(r["split"], r["method"], r[key]) for r in recs if r.get(key) is not None]
        if vals:
            out.append(f"{label} at the end of training: " + ", ".join(
                f"{s}/{m} {statistics.mean([v for s2, m2, v in vals if (s2, m2) == (s, m)]):.2f}"
                for s, m in dict.fromkeys((s, m) for s, m, _ in vals)))
            out.append("")
    out += reruns(res, lambda r: f"{r['split']}/{r['method']} seed {r['seed']}")
    out += plots(res)
    for line in res.get("derived", []):
        out.append(f"- {line}")
    if res.get("derived"):
        out.append("")
    return out


def running_quality(rec: dict, branch: str = "o") -> list[tuple[int, float, float, float]]:
    """(step, precision, recall, mined per erased box) of a co-mining run's pseudo-labels, running
    totals over the logged rows of its curve (every ``log_every``-th step); empty without hidden truth."""
    tp = n_pseudo = n_hidden = 0.0
    out = []
    for row in rec.get("curve", []):
        nh, npseudo, r = (row.get(f"quality/{branch}_{k}") for k in ("n_hidden", "n_pseudo", "recall"))
        if nh is None or npseudo is None:
            continue
        n_hidden += nh
        n_pseudo += npseudo
        tp += round((r or 0.0) * nh)
        if n_hidden:
            out.append((row["step"], tp / n_pseudo if n_pseudo else float("nan"), tp / n_hidden, n_pseudo / n_hidden))
    return out


def false_kinds_text(recs: list[dict], branch: str = "o") -> str:
    """What the false mined boxes lay on over the run (the last logged running totals, mean over the records that
    logged them; minedet.pseudo.quality), as shares of all mined boxes; empty for records from before it was logged."""
    from minedet.pseudo.quality import FALSE_KINDS

    lasts = [next((row for row in reversed(r.get("curve", [])) if row.get(f"quality/{branch}_total_false_background")
                   is not None), None) for r in recs]
    lasts = [row for row in lasts if row is not None]
    if not lasts:
        return ""
    shares = {k: statistics.mean(row.get(f"quality/{branch}_total_false_{k}") or 0.0 for row in lasts) for k in FALSE_KINDS}
    return ("; false, as shares of the mined boxes: " + ", ".join(f"{k} {v:.2f}" for k, v in shares.items())
            + (f" ({len(lasts)} of {len(recs)} runs logged them)" if len(lasts) < len(recs) else ""))


def pseudo_totals(rec: dict, branch: str = "o") -> tuple[float, float, float] | None:
    """(precision, recall, mined per erased box) over the whole run, None without hidden truth."""
    series = running_quality(rec, branch)
    return series[-1][1:] if series else None


def section_loader(res: dict) -> list[str]:
    title = TITLES.get(res["name"], f"Loader and step cost: {res['name'].removeprefix('loader_')}")  # loader_DETECTOR
    out = [f"## {title}", "", *header(res), res.get("note", ""), "", "| method | what | images/s |", "|---|---|---|"]
    for r in res["records"]:
        out.append(f"| {r['method']} | {r['what']} | {r['images_per_s']} |")
    for m in dict.fromkeys(r["method"] for r in res["records"]):
        pipe = [r["images_per_s"] for r in res["records"] if r["method"] == m and r["workers"] is not None]
        step = [r["images_per_s"] for r in res["records"] if r["method"] == m and r["workers"] is None]
        if pipe and step:
            out.append(f"\n{m}: the slowest pipeline setting delivers {min(pipe) / step[0]:.1f}x the images the training step consumes.")
    out.append("")
    for line in res.get("derived", []):
        out.append(f"- {line}")
    return out + [""]


def plots(res: dict) -> list[str]:
    """PNG plots from the records: pseudo-label quality over training, and mining precision-recall."""
    from minedet.viz import plot_curves

    lines = []
    name = res["name"]
    curves, running = {}, False
    for r in res["records"]:
        label = f"{r['split']} {r['method']} s{r['seed']}"
        series = [x for x in running_quality(r) if x[1] == x[1]]  # from the first mined box on
        if any(c.get("quality/o_n_hidden") is not None for c in r.get("curve", [])):
            running = True  # co-mining logs counts: plot running totals, the per-step numbers are too noisy to read
            if series:
                curves[f"{label} precision"] = ([x[0] for x in series], [x[1] for x in series])
                curves[f"{label} recall"] = ([x[0] for x in series], [x[2] for x in series])
            continue
        for key in ("quality/precision", "quality/recall"):
            pts = [(c["step"], c[key]) for c in r.get("curve", []) if c.get(key) is not None]
            if pts:
                curves[f"{label} {key.split('/')[1]}"] = ([p[0] for p in pts], [p[1] for p in pts])
    if curves:
        path = IMG / f"{name}_pseudo_quality.png"
        plot_curves(curves, path, xlabel="step", ylabel="precision / recall vs hidden truth",
                    title="Mined boxes of branch o vs the erased boxes (running totals)" if running
                    else "Pseudo-label quality during training (per logged step)")
        lines += [f"![pseudo-label quality](img/{path.name})", ""]
    pr = {}
    for r in res["records"]:
        rows = [row for row in r.get("mine_pr", []) if row["precision"] == row["precision"]]
        if rows:
            pr[f"{r['split']} {r['method']} s{r['seed']}"] = ([row["recall"] for row in rows], [row["precision"] for row in rows])
    if pr:
        path = IMG / f"{name}_mine_pr.png"
        plot_curves(pr, path, xlabel="recall of erased boxes", ylabel="precision",
                    title="minedet mine on the sparse training set (thresholds 0.3-0.9)")
        lines += [f"![mining precision-recall](img/{path.name})", ""]
    return lines


def section_semi(res: dict, title: str) -> list[str]:
    """Semi-supervised comparison: rows (labelled fraction), columns (method), AP of the saved model
    (the teacher for Mean Teacher / ACRST), per-class AP of the most frequent and rarest classes,
    step times, pseudo-label quality (ACRST Table 10 variants) and the multi-label classifier."""
    recs = latest(res["records"])
    fractions = sorted({r["fraction"] for r in recs if r.get("fraction") is not None})
    methods = list(dict.fromkeys(r["method"] for r in recs))
    detectors = list(dict.fromkeys(r.get("detector", "retinanet") for r in recs))
    out = [f"## {title}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    seeds = sorted({r["seed"] for r in recs})
    for det in detectors:
        label = f" ({det})" if len(detectors) > 1 else ""
        out += _semi_detector_tables([r for r in recs if r.get("detector", "retinanet") == det], label, fractions,
                                     methods, seeds)
    out += _semi_step_times(recs, methods)
    out += _semi_filter_quality(recs, methods, fractions)
    out += _semi_pseudo_counts(recs, methods, fractions)
    out += _semi_multilabel(recs)
    out += _semi_quality_plot(res, recs, seeds)
    out += reruns(res, lambda r: f"{r['method']} {r.get('fraction'):g}% seed {r['seed']}")
    nonfinite = sum(r.get("nonfinite_steps", 0) or 0 for r in recs)
    out.append(f"- non-finite steps skipped by the trainer's guard: {nonfinite} over {len(recs)} runs")
    for line in res.get("derived", []):
        out.append(f"- {line}")
    return out + [""]


def _semi_detector_tables(rows: list[dict], label: str, fractions: list[float], methods: list[str],
                          seeds: list[int]) -> list[str]:
    """One detector's records of a semi-supervised table (``label``: its name in the headings, where the table has
    several): AP of the saved model per labelled fraction and method, the student's AP, and the per-class AP of the
    three most frequent and the three rarest classes (ACRST Fig. 6)."""
    def cell(f, m, key="ap"):
        return [r.get(key) for r in rows if r.get("fraction") == f and r["method"] == m]

    def ap_cell(f, m):
        return seed_cell([r for r in rows if r.get("fraction") == f and r["method"] == m], "ap", seeds)

    out = [f"**AP{label}** of the saved model (teacher for mean_teacher / acrst), mean ± std over seeds {seeds}", "",
           "| labelled | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for f in fractions:
        out.append(f"| {f:g}% | " + " | ".join(ap_cell(f, m) for m in methods) + " |")
    out.append("")
    students = [m for m in methods if any(r.get("student_ap") is not None for r in rows if r["method"] == m)]
    if students:
        out += ["Student AP (the other evaluated model): " + "; ".join(
            f"{m} {f:g}%: {mean_std(cell(f, m, 'student_ap'))}" for f in fractions for m in students if cell(f, m, 'student_ap')), ""]
    names = None
    for r in rows:
        if r.get("per_class"):
            names = list(r["per_class"])
            break
    if names and len(names) >= 6:
        freq, rare = names[:3], names[-3:]
        out += [f"Per-class AP{label} (ACRST Fig. 6): the three most frequent classes {', '.join(freq)} and the three "
                f"rarest {', '.join(rare)}", "",
                "| labelled | method | " + " | ".join(freq + rare) + " | mean rare |", "|---|---|" + "---|" * 7]
        for f in fractions:
            for m in methods:
                rs = [r for r in rows if r.get("fraction") == f and r["method"] == m and r.get("per_class")]
                if not rs:
                    continue
                vals = [mean_std([r["per_class"].get(c) for r in rs]) for c in freq + rare]
                mr = [statistics.mean([r["per_class"][c] for c in rare if r["per_class"].get(c) is not None]) for r in rs]
                out.append(f"| {f:g}% | {m} | " + " | ".join(vals) + f" | {mean_std(mr)} |")
        out.append("")
    return out


def _semi_step_times(recs: list[dict], methods: list[str]) -> list[str]:
    """Mean step time of each method, with and without the data wait, as ratios to Mean Teacher's (or the first
    method's where Mean Teacher did not run)."""
    times = {m: [r["step_time_s"] for r in recs if r["method"] == m and r.get("step_time_s")] for m in methods}
    comp = {m: [r["compute_time_s"] for r in recs if r["method"] == m and r.get("compute_time_s")] for m in methods}
    if not any(times.values()):
        return []
    base = "mean_teacher" if times.get("mean_teacher") else methods[0]
    out = [f"| method | step time (s) | ratio to {base} | without data wait (s) | ratio |", "|---|---|---|---|---|"]
    for m in methods:
        if times[m] and times[base]:
            t, b = statistics.mean(times[m]), statistics.mean(times[base])
            c, cb = (statistics.mean(comp[m]), statistics.mean(comp[base])) if comp[m] and comp[base] else (None, None)
            out.append(f"| {m} | {t:.3f} | {t / b:.2f}× | {'–' if c is None else f'{c:.3f}'} | "
                       f"{'–' if c is None else f'{c / cb:.2f}×'} |")
    return out + ["", "Step times average every logged step, burn-in included (half of each semi-supervised run).", ""]


def _semi_filter_quality(recs: list[dict], methods: list[str], fractions: list[float]) -> list[str]:
    """The teacher's pseudo-labels against the hidden truth, cumulative over training, for single-stage filtering,
    two-stage filtering and two-stage mining (ACRST Table 10)."""
    variants = [("quality_single", "single-stage"), ("quality_two_stage", "two-stage filtering"), ("quality_mining", "two-stage mining")]
    qrows = [r for r in recs if r.get("quality_single_precision") is not None]
    if not qrows:
        return []
    out = ["Pseudo-labels of the teacher against the hidden truth, cumulative over training (ACRST Table 10):", "",
           "| method | labelled | " + " | ".join(f"{v} precision | {v} recall" for _, v in variants) + " |",
           "|---|---|" + "---|---|" * len(variants)]
    for m in methods:
        for f in fractions:
            rs = [r for r in qrows if r["method"] == m and r.get("fraction") == f]
            if rs:
                vals = []
                for k, _ in variants:
                    for q in ("precision", "recall"):
                        xs = [r.get(f"{k}_{q}") for r in rs if r.get(f"{k}_{q}") is not None]
                        vals.append(f"{statistics.mean(xs):.3f}" if xs else "–")
                out.append(f"| {m} | {f:g}% | " + " | ".join(vals) + " |")
    return out + [""]


def _semi_pseudo_counts(recs: list[dict], methods: list[str], fractions: list[float]) -> list[str]:
    """How many pseudo-labels the teacher gives per hidden object after burn-in: over the whole run per seed, and
    its first against its last 10 logged steps (a shrinking count: objects taught as background)."""
    shrink = []
    for m in methods:
        for f in fractions:
            early, late = [0.0, 0.0], [0.0, 0.0]
            for r in recs:
                pts = [c for c in r.get("curve", []) if c.get("quality/n_hidden")] if r["method"] == m and r.get("fraction") == f else []
                for part, acc in ((pts[:10], early), (pts[-10:], late)):
                    acc[0] += sum(c["quality/n_pseudo"] for c in part)
                    acc[1] += sum(c["quality/n_hidden"] for c in part)
            if early[1] and late[1]:
                shrink.append(f"{m} {f:g}%: {early[0] / early[1]:.2f} -> {late[0] / late[1]:.2f}")
    per_run = []
    for m in methods:
        for f in fractions:
            vals = []
            for r in sorted((r for r in recs if r["method"] == m and r.get("fraction") == f), key=lambda r: r["seed"]):
                pts = [c for c in r.get("curve", []) if c.get("quality/n_hidden")]
                if pts:
                    vals.append(f"{sum(c['quality/n_pseudo'] for c in pts) / sum(c['quality/n_hidden'] for c in pts):.3f}")
            if vals:
                per_run.append(f"{m} {f:g}%: {', '.join(vals)}")
    out = []
    if per_run:
        out += ["Teacher pseudo-labels per hidden object over all logged steps after burn-in, one number per seed in seed "
                "order: " + "; ".join(per_run) + ".", ""]
    if shrink:
        out += ["Teacher pseudo-labels per hidden object on the unlabelled batches, first vs last 10 logged steps after "
                "burn-in (all seeds): " + "; ".join(shrink) + ". Objects the teacher does not label are taught as "
                "background to the student (`method.ignore_below` is the switch that ignores the uncertain ones).", ""]
    return out


def _semi_multilabel(recs: list[dict]) -> list[str]:
    """The multi-label classifier's accuracy and recall on the unlabelled images, mean over runs (ACRST Table 9)."""
    ml = [r["multilabel"] for r in recs if r.get("multilabel")]
    if not ml:
        return []

    def avg(k):
        xs = [d[k] for d in ml if d.get(k) is not None and d[k] == d[k]]
        return f"{statistics.mean(xs):.3f}" if xs else "–"
    return [f"Multi-label classifier (SSMLL) on the unlabelled images, mean of {len(ml)} runs (ACRST Table 9): negative labels "
            f"(p < {ml[0].get('tau_ml')}) accuracy {avg('neg_accuracy')}, recall {avg('neg_recall')}; positive labels "
            f"(p >= {ml[0].get('pos_thresh')}) accuracy {avg('pos_accuracy')}, recall {avg('pos_recall')}.", ""]


def _semi_quality_plot(res: dict, recs: list[dict], seeds: list[int]) -> list[str]:
    """The teacher's pseudo-label precision and recall per logged step, first seed, as a PNG under IMG; its link."""
    curves = {}
    for r in recs:
        for key in ("quality/precision", "quality/recall"):
            pts = [(c["step"], c[key]) for c in r.get("curve", []) if c.get(key) is not None]
            if pts and r["seed"] == seeds[0]:
                curves[f"{r['method']} {r.get('fraction'):g}% {key.split('/')[1]}"] = ([p[0] for p in pts], [p[1] for p in pts])
    if not curves:
        return []
    from minedet.viz import plot_curves

    path = IMG / f"{res['name']}_pseudo_quality.png"
    plot_curves(curves, path, xlabel="step", ylabel="precision / recall vs hidden truth",
                title=f"Teacher pseudo-labels per logged step (seed {seeds[0]})")
    return [f"![pseudo-label quality](img/{path.name})", ""]


def section_cropbank(res: dict) -> list[str]:
    recs = res["records"]
    out = [f"## {TITLES['cropbank']}", "", *header(res)]
    for r in recs:
        if "records" in r:
            out += [f"A pseudo bank of {r['records']:,} records ({r['images']:,} unlabelled images): "
                    f"{r['heap_mb']} MB of Python heap ({r['bytes_per_record_heap']} bytes per record), {r['flat_mb']} MB of flat "
                    f"record arrays, a {r['snapshot_file_mb']} MB snapshot file; filling it took {r['fill_s']} s, a refresh "
                    f"(snapshot + publish) {r['refresh_s']} s, loading it in a worker {r['worker_load_s']} s, drawing 10 crops "
                    f"{r['sample10_ms']} ms.", ""]
    rows = [r for r in recs if "images_per_s" in r]
    if rows:
        out += [res.get("note", ""), "", "| pipeline | images/s | crops pasted per image |", "|---|---|---|"]
        for r in rows:
            out.append(f"| {r['what']} | {r['images_per_s']} | {r['pasted_per_image']} |")
        out.append("")
    return out


def recall_at_p80(rec: dict, key: str = "mine_pr") -> float:
    """A nuclei record's best recall of the erased nuclei over the score thresholds whose mined precision is >= 0.8
    (0 when none is)."""
    return max([x["recall"] for x in rec[key] if x["precision"] is not None and x["precision"] >= 0.8], default=0.0)


#: the co-mining tables' row order and the README's co-mining rows: Table 1's (full labels, then the BRL protocol's
#: easy, hard, extreme); other splits follow as recorded
SPLIT_ORDER = ("full", "easy", "hard", "extreme")


def section_real(res: dict) -> list[str]:
    """bench_real.py: sparse labels on one real microscopy image (nuclei), trained and predicted on tiles."""
    last: dict[tuple, dict] = {}
    for r in res["records"]:  # a re-run of a (method, seed) replaces it in the tables; every run stays in the file
        last[(r["method"], r["seed"])] = r
    recs = list(last.values())
    cols = _nuclei_columns(recs)
    seeds = sorted({r["seed"] for r in recs})
    by = {c.label: sorted((r for r in recs if r["method"] == c.label), key=lambda r: r["seed"]) for c in cols}
    d = res.get("data", {})
    out = [f"## {TITLES['real_nuclei']}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    out += _nuclei_table(recs, by, cols, seeds)
    out += _nuclei_column_notes(by, cols, d)
    out += ["AP per seed (the seed draws both the erased nuclei and the training run):", "",
            "| seed | " + " | ".join(c.heading for c in cols) + " |", "|---|" + "---|" * len(cols)]
    for s in seeds:
        cell = {r["method"]: r for r in recs if r["seed"] == s}
        out.append(f"| {s} | " + " | ".join(pct(cell[c.label]["ap"]) if c.label in cell else "–" for c in cols) + " |")
    out.append("")
    out += _nuclei_recovery(by, cols)
    n_val = int(d.get("val_boxes") or 0)
    out += [f"**One image is a small sample.** Every number above comes from one {d.get('image', ['?'])[0]} px image: "
            f"{d.get('train_boxes', '?')} training nuclei (about half of them labelled per seed) and {n_val} val nuclei. "
            "The ± is the spread over training seeds and erasure draws on these same val nuclei; it says nothing about "
            "how the methods vary between images, slides, stains or microscopes, which one image cannot measure, so "
            "the true uncertainty of a comparison is larger than the ± shown. With "
            f"{n_val} val nuclei one nucleus found or missed moves AP50 by about {100 / max(1, n_val):.0f} points: treat "
            "differences smaller than that, or than the spread, as no difference.", ""]
    if res.get("figure"):
        drawn = next(c.heading for c in NUCLEI_COLUMNS if c.figure)  # the column whose model draws the figure
        out += ["![mined boxes on a training tile](img/real_nuclei_mined.png)", "",
                f"{drawn[:1].upper()}{drawn[1:]} model, {res['figure']}.", ""]
    return out


def _nuclei_columns(recs: list[dict]) -> list[NucleiColumn]:
    """The nuclei columns the records hold, in their declared order (``bench_real.COLUMNS``); a held-out fold column
    retrained on the boxes mined above another score (``bench_real.py --retrain-score``: the same fold models, so the
    same mined boxes; its records name that score) right after its base column, named after it."""
    retrained: dict[str, tuple[NucleiColumn, NucleiColumn]] = {}
    for r in recs:
        score = r.get("retrain_score")
        for base in (c for c in NUCLEI_COLUMNS if c.folds is not None and score is not None):
            if r["method"] not in NUCLEI_BY_LABEL and r["method"] == base.label + retrain_suffix(score):
                heading = f"{base.heading} on boxes mined at score > {round(100 * score) / 100:g}"
                retrained[r["method"]] = base, replace(base, label=r["method"], short=None, heading=heading)
    cols = list(NUCLEI_COLUMNS)
    for m in sorted(retrained):
        base, col = retrained[m]
        cols.insert(cols.index(base) + 1, col)
    return [c for c in cols if any(r["method"] == c.label for r in recs)]


def _nuclei_table(recs: list[dict], by: dict[str, list[dict]], cols: list[NucleiColumn], seeds: list[int]) -> list[str]:
    """The nuclei table: one row per measure (AP, mining quality, minutes, steps), one column per nuclei column."""
    def row(name: str, fn) -> str:
        return f"| {name} | " + " | ".join(by_threads(by[c.label], fn) if by[c.label] else "–" for c in cols) + " |"

    def mined(rs: list[dict], t: float = 0.5, key: str = "mine_pr") -> str:
        got = [x for r in rs for x in r.get(key, []) if x["threshold"] == t]
        if not got:
            return "–"
        p = [x["precision"] for x in got if x["precision"] is not None]
        return (f"{mean_std(p) if p else '–'} / {mean_std([x['recall'] for x in got])} "
                f"({sum(x['n_mined'] for x in got) / len(got):.0f} mined per run)")

    def recall_at_80(rs: list[dict], key: str) -> str:
        got = [recall_at_p80(r, key) for r in rs if r.get(key)]
        return mean_std(got) if got else "–"

    def train_quality(rs: list[dict]) -> str:
        p = [r.get("quality_o_total_precision") for r in rs if r.get("quality_o_total_precision") is not None]
        q = [r.get("quality_o_total_recall") for r in rs if r.get("quality_o_total_recall") is not None]
        return f"{mean_std(p)} / {mean_std(q)}" if (p or q) else "–"

    return [f"Mean ± std over seeds {seeds} (val: the right quarter of the image, predicted tile by tile):", "",
            "| | " + " | ".join(c.heading for c in cols) + " |", "|---|" + "---|" * len(cols),
            row("AP", lambda rs: mean_std([r["ap"] for r in rs])),
            row("AP50", lambda rs: mean_std([r["ap50"] for r in rs])),
            row("mined boxes, score > 0.5: precision / recall of the erased nuclei (%)", mined),
            row("the same with the part rule (`minedet mine --part 0.3`; runs that recorded it; %)",
                lambda rs: mined(rs, key="mine_pr_part")),
            row("highest recall of the erased nuclei at mined precision ≥ 80 % (any score threshold 0.3-0.9; %)",
                lambda rs: recall_at_80(rs, "mine_pr")),
            row("the same with the part rule: recall at mined precision ≥ 80 % (%)", lambda rs: recall_at_80(rs, "mine_pr_part")),
            row("co-mining's own mined boxes over training: precision / recall (%)", train_quality),
            *([row("held-out folds: AP of the fold models (each trained on one band; the column's AP is the model "
                   "retrained on the completed labels)", lambda rs: mean_std([a for r in rs for a in r.get("fold_ap", [])])
                   if any(r.get("fold_ap") for r in rs) else "–")] if any(r.get("fold_ap") for r in recs) else []),
            row("minutes per run (training, val and mining)", lambda rs: f"{sum(r['wall_s'] for r in rs) / len(rs) / 60:.1f}"),
            row("training steps (a column trained longer is not comparable)",
                lambda rs: " / ".join(str(n) for n in sorted({r["steps"] for r in rs}))),
            ""]


def _nuclei_column_notes(by: dict[str, list[dict]], cols: list[NucleiColumn], d: dict) -> list[str]:
    """What the held-out fold, BRL and twice-the-batch columns are, where the records hold them; why a column skipped
    while its method block is the paper's (co-mining, best defaults) is missing, where it is."""
    out = []
    if any(by.get(c.label) for c in NUCLEI_COLUMNS if c.folds is not None):
        out += ["**Held-out folds** (`minedet data folds` + `minedet mine --folds`): the training region is cut into two "
                "vertical bands, each tiled on its own; the model of each fold trains on the other band's sparse tiles and "
                "mines its band, so no model mines a nucleus it was taught as background. The mined rows of these columns "
                "score both bands' mined boxes together; then the boxes mined at score > 0.5 (IoU and part rules) join the "
                "labels of the ordinary tiles and a supervised model is retrained on them: the AP rows are that model's. "
                "Three trainings per seed (two fold models on half the tiles, one retraining).", ""]
    if any(by.get(c.label) for c in cols if c.on_brl):
        out += ["**BRL's loss** (`model.extra.cls_loss=brl`, background recalibration): an uncertain detection far from "
                "every label is not taught as background, so the model still scores the erased nuclei of the tiles it "
                "trained on and can mine them. *co-mining on BRL's loss* is the `digits_co_mining` preset whole (its method "
                "block and its loss; the ignored band is off on this loss); the blurred-view column swaps its colour view, "
                "which on this grey image changes only brightness and contrast, for a Gaussian blur (`method.view=blur`)."
                + (" *joint on BRL's loss* is the same two views and loss without co-generation (`method.cogeneration="
                   "false`): what the mined boxes add on top of the second view." if any(
                   by.get(c.label) for c in NUCLEI_COLUMNS if c.on_brl and c.settings.get("cogeneration") is False)
                   else ""), ""]
    twice = [r for c in cols if c.batch > 1 for r in by[c.label]]
    if twice and d.get("tiles"):
        views = twice[0]["steps"] * twice[0]["batch_size"]  # tile views in one run
        out += [f"**Twice the batch** (the *_2x columns: {twice[0]['batch_size']} tiles per step, what a two-view "
                "step of joint or co-mining costs): each of the "
                f"{d['tiles']} training tiles is seen about {views / d['tiles']:.0f} times in a run, about "
                f"{views / 2 / d['tiles']:.0f} at the normal batch: what more tiles per step buy on a small set trained "
                "long.", ""]
    for c in (c for c in NUCLEI_COLUMNS if c.skip_if_paper and not by.get(c.label)):
        out += [f"*{c.heading}* was not run: when these runs were made, the `digits_co_mining` preset's method "
                f"block resolved to the paper's setting, so it would repeat the {NUCLEI_BY_LABEL['co_mining'].heading} "
                f"column. Once the defaults change, add the column with `python benchmarks/bench_real.py --methods "
                f"{c.label}`.", ""]
    return out


def _nuclei_recovery(by: dict[str, list[dict]], cols: list[NucleiColumn]) -> list[str]:
    """The share of the AP lost to the erased labels each column recovers (against full labels, and full labels at
    twice the batch for a twice-the-batch column)."""
    full, orig = [r["ap"] for r in by["full"]], [r["ap"] for r in by["original"]]
    if not (full and orig and statistics.mean(full) > statistics.mean(orig)):
        return []
    out = []
    gap = statistics.mean(full) - statistics.mean(orig)
    gap_2x = statistics.mean(r["ap"] for r in by["full_2x"]) - statistics.mean(orig) if by.get("full_2x") else None
    for c in cols:  # every column but the ceilings and original itself
        if c.labels != "full" and c.label != "original" and by.get(c.label):
            got = statistics.mean(r["ap"] for r in by[c.label]) - statistics.mean(orig)
            ceiling = f"; full labels at twice the batch {100 * gap_2x:+.1f}" if c.batch > 1 and gap_2x is not None else ""
            out.append(f"- {c.heading} recovers {100 * got / gap:.0f} % of the AP lost to the erased labels "
                       f"({100 * got:+.1f} AP over original; full labels {100 * gap:+.1f}{ceiling}).")
    return out + [""]


def section_export(res: dict) -> list[str]:
    """ONNX export: parity with PyTorch eager and paired batch-1 latency (the latest record of each setting)."""
    recs = latest(res["records"])
    out = [f"## {TITLES['export']}", "", *header(res)]
    par = [r for r in recs if "matched" in r]
    if par:
        out += ["| set | image size | images | detections | matched (IoU >= 0.99) / compared | min IoU | max score diff | "
                "AP PyTorch | AP ONNX | same |", "|---|---|---|---|---|---|---|---|---|---|"]
        for r in par:
            out.append(f"| {r['what'].removeprefix('parity, ')} | {r['image_size']} | {r['images']} | {r['detections']} | "
                       f"{r['matched']} / {r['compared']} | {r['min_iou']:.4f} | {r['max_score_diff']:.1g} | "
                       f"{pct(r['ap_pytorch'])} | {pct(r['ap_onnx'])} | {'yes' if r['same'] else 'no'} |")
        out.append("")
    lat = [r for r in recs if "speedup" in r]
    if lat:
        out += ["| batch 1, image size | input | threads (torch / ONNX Runtime) | PyTorch eager (ms) | ONNX Runtime (ms) | "
                "speedup | target met |", "|---|---|---|---|---|---|---|"]
        for r in lat:
            out.append(f"| {r['image_size']} px | {'x'.join(map(str, r['input_shape']))} | {r['torch_threads']} / "
                       f"{r.get('onnx_threads', 'default')} | {r['pytorch_ms']:.1f} | {r['onnx_ms']:.1f} | "
                       f"{r['speedup']:.2f}x | {'yes' if r['meets_target'] else 'no'} |")
        out.append("")
    if res.get("target"):
        out += [f"Target: {res['target']}.", ""]
    return out


def section_mixed(res: dict) -> list[str]:
    """Mixed supervision: one row per metric, one column per method (bench_mixed.py's order)."""
    recs = latest(res["records"])
    methods = [c.label for c in MIXED_COLUMNS if any(r["method"] == c.label for r in recs)]
    all_seeds = sorted({r["seed"] for r in recs})
    out = [f"## {TITLES['mixed']}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    out += [f"Mean ± std over seeds {all_seeds}:", "", "| metric | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
    for metric in ("ap", "ap50"):
        out.append(f"| {metric.upper()} | " + " | ".join(seed_cell([r for r in recs if r["method"] == m], metric, all_seeds)
                                                   for m in methods) + " |")
    out.append("")
    for key, label in (("quality_precision", "pseudo-label precision"), ("quality_recall", "pseudo-label recall")):
        vals = [(r["method"], r[key]) for r in recs if r.get(key) is not None]
        if vals:
            out += [f"{label} over the last logged steps (against the erased boxes): " + ", ".join(
                f"{m} {statistics.mean(v for m2, v in vals if m2 == m):.2f}" for m in dict.fromkeys(m for m, _ in vals)), ""]
    out += reruns(res, lambda r: f"{r['method']} seed {r['seed']}")
    out += [f"- {line}" for line in res.get("derived", [])]
    return out + ([""] if res.get("derived") else [])


def section_review(res: dict) -> list[str]:
    """One review round (scripted reviewer) against co-mining alone at the same total steps."""
    recs = latest(res["records"])
    out = [f"## {TITLES['review']}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    out += ["| seed | steps | round 1 AP | after review + round 2 AP | mined boxes shown | accepted | deleted (reviewer clicks) |",
            "|---|---|---|---|---|---|---|"]
    for r in recs:
        if r["method"] == "review_round":
            out.append(f"| {r['seed']} | {r['round1_steps']} + {r['round2_steps']} | {pct(r['round1_ap'])} | {pct(r['ap'])} | "
                       f"{r['mined_shown']} | {r['mined_accepted']} | {r['reviewer_deletions']} |")
    out += ["", *reruns(res, lambda r: f"{r['method']} seed {r['seed']}")]
    out += [f"- {line}" for line in res.get("derived", [])]
    return out + ([""] if res.get("derived") else [])


def _rp(row: dict) -> str:
    """A review-cost cell: recall / precision (%), and where the list ended before the budget."""
    cut = f" (list ends at {row['shown']})" if row["shown"] < row["budget"] else ""
    return f"{pct(row['recall'])} / {pct(row['precision'])}{cut}"


_CLEANLAB_ORDER = ("only predictions scoring >= {:g} that overlap no labelled box are candidates, ranked by their "
                   "similarity to the nearest labelled box of their class, lowest first")


def _review_verdict(m: dict, c: dict) -> str:
    """One line from the records: does cleanlab's list ``c`` recover more erased boxes than minedet's ``m``?"""
    both = [(a, b) for a, b in zip(m["curve"], c["curve"]) if a["budget"] == b["budget"]]
    thr = c.get("high_probability_threshold")
    if not c["list_length"]:
        return (f"- `{c['method']}` shows no box: none of the model's predictions qualifies as an overlooked box at its "
                f"high-probability threshold {thr:g} (minedet's highest score marked above: "
                f"{max((t for a in m['curve'] for t in a.get('at_score') or []), default=0):g}).")
    wins = [b["budget"] for a, b in both if b["recall"] > a["recall"]]
    full = [(a, b) for a, b in both if b["shown"] == b["budget"] and a["shown"] == a["budget"]]
    a, b = (full or both[:1])[-1]
    at = (f"at {b['budget']} boxes shown{' (the most both lists fill)' if full else ''} it recovers {pct(b['recall'])} % "
          f"of the erased boxes at precision {pct(b['precision'])} %, minedet {pct(a['recall'])} % at "
          f"{pct(a['precision'])} %")
    if len(wins) > len(both) / 2:
        return (f"- **cleanlab ranks better** (`{c['method']}`): it recalls more at {len(wins)} of {len(both)} numbers of "
                f"boxes shown; {at}.")
    return (f"- `{c['method']}` does not rank better: it recalls more at {len(wins)} of {len(both)} numbers of boxes "
            f"shown; {at}; its list holds {c['list_length']} boxes ({c.get('ranked_by') or _CLEANLAB_ORDER.format(thr)}).")


def section_review_cost(res: dict) -> list[str]:
    """What a review costs: erased boxes recovered per box shown, minedet's list against cleanlab's."""
    recs = latest(res["records"])
    out = [f"## {TITLES['review_cost']}", "", *header(res)]
    if res.get("note"):
        out += [res["note"], ""]
    for seed in sorted({r["seed"] for r in recs}):
        m = next((r for r in recs if r["seed"] == seed and r["method"] == "minedet"), None)
        if m is None:
            continue
        others = [r for r in recs if r["seed"] == seed and r["method"] != "minedet"]
        out += [f"Seed {seed}, {m['steps']} steps, {m['threads']} torch thread(s): the model's val AP50 "
                f"{pct(m.get('model_ap50'))}; {m['n_hidden']} erased boxes on {m['images']} images. Recall / precision "
                f"(%) of the erased boxes after each number of boxes shown, most likely missing first; minedet's list "
                f"ranks by score (its score at that count named; `propose_score_for` proposes "
                f"{m.get('proposed_score') if m.get('proposed_score') is not None else 'no score'}):", "",
                "| boxes shown | minedet score | minedet | " + " | ".join(f"`{r['method']}`" for r in others) + " |",
                "|---|---|---|" + "---|" * len(others)]
        prop = m.get("proposed_score")
        for row in m["curve"]:
            scores = ", ".join(f"{t:g}" + (" (proposed)" if t == prop else "") for t in row.get("at_score") or [])
            cells = [next((c for c in r["curve"] if c["budget"] == row["budget"]), None) for r in others]
            out.append(f"| {row['budget']} | {scores} | {_rp(row)} | " + " | ".join(
                _rp(c) if c else "–" for c in cells) + " |")
        out += ["", *(_review_verdict(m, c) for c in others), ""]
    return out


RENDERERS = {"demo": section_demo, "splits": section_splits, "loader": section_loader, "cropbank": section_cropbank,
             "mixed": section_mixed, "review": section_review}
RENDERERS["real_nuclei"] = section_real
RENDERERS["export"] = section_export
RENDERERS["review_cost"] = section_review_cost
TITLES = {"co_mining": "Co-mining Table 1 in miniature (digits, RetinaNet)",
          "co_mining_aug": "Co-mining Table 4 in miniature: the second view on hard",
          "co_mining_fcos": "Co-mining Table 5 in miniature: FCOS",
          "co_mining_frcnn": "Co-mining on Faster R-CNN (the paper's future work)",
          "co_mining_frcnn_light": "Co-mining on a lighter Faster R-CNN (128 sampled RoIs, 600 steps)",
          "co_mining_baselines": "Co-mining vs BRL and pseudo-label retraining",
          "co_mining_tau": "Co-mining Table 3 in miniature: the score threshold tau on hard",
          "co_mining_gt_match": "Co-mining: drop mined boxes on labelled objects of any class (`method.gt_match=any`, beyond the paper)",
          "co_mining_4000img_1200steps": "Co-mining, first look at 4000 images (1200 steps, 1 seed)",
          "co_mining_1000img": "Co-mining on 1000 images (the earlier setting, 1200 steps)",
          "co_mining_baselines_1000img": ("Co-mining vs BRL on 1000 images: does twice the batch still win "
                                         "when each image is seen more often?"),
          "semi": "Semi-supervised (digits, long-tailed): supervised vs STAC vs Mean Teacher vs ACRST",
          "semi_ablation": "ACRST ablation (Table 4 in miniature)", "semi_bank": "ACRST CropBank type and crops per image (Table 5)",
          "semi_beta": "ACRST AFFR beta (Table 6)", "semi_detectors": "ACRST on FCOS and Faster R-CNN",
          "semi_stac": "STAC + ACRST (Table 7)",
          "semi_ignore": "Self-training with uncertain teacher boxes ignored (`method.ignore_below=0.3`, beyond the papers)",
          "semi_ema": "Self-training with a faster teacher (`method.ema_decay=0.99` instead of the presets' 0.995, with the ignored band)",
          "semi_adaptive": "Self-training with per-class thresholds (`method.adaptive=true`, with the ignored band and the faster teacher)",
          "real_nuclei": "Real images: nuclei (fluorescence microscopy), 50 % of the boxes erased, tiled",
          "semi_tau": "Self-training with a lower teacher threshold (`method.tau=0.5`, with the ignored band and the faster teacher)",
          "semi_occlusion": "ACRST with instances half hidden by a paste ignored (`method.occlusion_ignore=0.5`, with the ignored band and the faster teacher)",
          "demo": "Demo",
          "splits": "Splits",
          "loader": "Loader",
          "loader_faster_rcnn": "Loader and step cost: Faster R-CNN",
          "cropbank": "CropBank",
          "export": "ONNX export",
          "mixed": "Mixed supervision: complete, sparse and unlabelled images (digits, long-tailed)",
          "review": "One review round on digits `hard` (scripted reviewer)",
          "review_cost": "What a review costs: erased boxes recovered per box shown, minedet vs cleanlab (digits `hard`)"}


#: the results file a semi-supervised table is compared with, seed by seed (default: the headline, ``semi``)
SEMI_BASELINE = {"semi_ema": "semi_ignore", "semi_adaptive": "semi_ema", "semi_tau": "semi_ema", "semi_occlusion": "semi_ema"}


def against_headline(res: dict, head: dict) -> list[str]:
    """The same seed, fraction and detector in the baseline file (``head``): without the table's change, and supervised."""
    where = "in the headline run" if head["name"] == "semi" else f"in `{head['name']}`"
    out = []
    for r in res["records"]:
        key = (r.get("fraction"), r["seed"], r.get("detector", "retinanet"))
        same = {x["method"]: x["ap"] for x in head["records"] if (x.get("fraction"), x["seed"], x.get("detector", "retinanet")) == key}
        base = r["method"] if r["method"] in same else "acrst"  # a table's variant is compared with full ACRST
        if base in same:
            sup = f", supervised {pct(same['supervised'])}" if "supervised" in same else ""
            out.append(f"- {r['method']} {r['fraction']:g}% seed {r['seed']}: {pct(r['ap'])} here; {where} "
                       f"(same split and seed) {base} {pct(same[base])}{sup}")
    return out + [""] if out else []

# ---------------------------------------------------------------------------------------------------------------
# README results table: generated from the same records (README.md holds it between the two markers below)
README = Path(os.environ.get("MINEDET_BENCH_README") or ROOT / "README.md")
README_START, README_END = "<!-- results:start (generated by benchmarks/report.py) -->", "<!-- results:end -->"


def _ms(recs: list[dict], key: str = "ap") -> str:
    return by_threads(recs, lambda rs: mean_std([r.get(key) for r in rs]))


def _pick(res: dict | None, **where) -> list[dict]:
    if res is None:
        return []
    return [r for r in latest(res["records"]) if all(r.get(k) == v for k, v in where.items())]


def _seeds(recs: list[dict]) -> str:
    seeds = sorted({r["seed"] for r in recs})
    return f"{len(seeds)} seed{'s' * (len(seeds) != 1)}"


def heading_anchor(title: str) -> str:
    """The anchor GitHub gives a ``## title`` heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


def _link(text: str, name: str) -> str:
    """``([text](docs/benchmarks.md#anchor))``: a README link to the page section of results file ``name``."""
    return f"([{text}](docs/benchmarks.md#{heading_anchor(TITLES[name])}))"


def main_group(rs: list[dict]) -> list[dict]:
    """The records of one thread count that a README cell quotes: the count with the most seeds (a tie: the count of
    the newest record; none for none). The page shows every count (:func:`by_threads`)."""
    if not rs:
        return []
    groups: dict[int | None, list[dict]] = defaultdict(list)
    newest: dict[int | None, int] = {}
    for i, r in enumerate(rs):
        groups[threads_of(r)].append(r)
        newest[threads_of(r)] = i
    best = max(groups, key=lambda n: (len({r["seed"] for r in groups[n]}), newest[n]))
    return groups[best]


def _named(cells: list[tuple[str, list[dict]]], key: str = "ap") -> str:
    """"NAME mean ± std (n seeds[, t threads])" for each (name, records) cell that has records: one thread count's
    records (:func:`main_group`), named when the cell holds others (the page lists those) or when the cells compared
    in one row ran at different counts."""
    mains = [(name, main_group(rs), rs) for name, rs in cells if rs]
    row_mixed = len({threads_of(m[0]) for _, m, _ in mains}) > 1
    out = []
    for name, main, rs in mains:
        n = threads_of(main[0])
        named = n is not None and (row_mixed or len({threads_of(r) for r in rs}) > 1)
        count = f", {n} thread{'s' * (n != 1)}" if named else ""
        out.append(f"{name} {mean_std([r.get(key) for r in main])} ({_seeds(main)}{count})")
    return ", ".join(out)


#: a README part quotes test AP once every cell it names was scored on the test split on this many seeds
TEST_SEEDS = 3


def _val_or_test(cells: list[tuple[str, list[dict]]]) -> str:
    """"test AP: NAME ..." (:func:`_named` over the records scored on test) when every cell with records has test
    scores on :data:`TEST_SEEDS` seeds of one thread count, else "val AP: NAME ..." (choices are made on val; the
    README quotes test where the runs exist, and says val where they do not yet)."""
    tested = [(name, [r for r in rs if r.get("test_ap") is not None]) for name, rs in cells]
    if all(len({r["seed"] for r in main_group(t)}) >= TEST_SEEDS for (_, rs), (_, t) in zip(cells, tested) if rs):
        return "test AP: " + _named(tested, key="test_ap")
    return "val AP: " + _named(cells)


def _mined_cells(res: dict | None, names: dict[str, str]) -> str:
    """"NAME X % (seeds)" for each column of ``names`` whose `hard` runs were scored as miners: the mean share
    of erased boxes `minedet mine` recovers at precision >= 0.9 (a run that never reaches it counts 0)."""
    cells = []
    for m, name in names.items():
        rs = main_group([r for r in _pick(res, split="hard", method=m) if r.get("mine_pr")])
        if rs:
            recall = statistics.mean((r.get("mine_recall_at_p90") or {}).get("recall", 0.0) for r in rs)
            cells.append(f"{name} {100 * recall:.1f} % ({_seeds(rs)})")
    return ", ".join(cells)


#: the digits `hard` columns of the README's sparse-labels and mining rows (co_mining_baselines), by their short names
SPARSE_README = {m: CO_MINING_COLUMNS[m].short for m in ("original", "brl", "brl_2x", "co_mining_brl_noib", "joint_brl")}
#: the semi-supervised columns of the README's few-labels row: results file, method, name
FEW_LABELS_README = [("semi", "supervised", "supervised"),
                     ("semi_ignore", "mean_teacher", "Mean Teacher (its default, the ignored band)"),
                     ("semi_occlusion", "acrst", "ACRST (minedet's defaults)")]
#: the real tree-crown benchmark's report module (another script's): its section and README rows come first
TREES_REPORT = Path(__file__).with_name("report_trees.py")
#: the README carries at most this many result rows (one per setting a user acts on); the rest is on the page
README_MAX_ROWS = 8


def _row_nuclei(results: dict) -> list[tuple[str, str]]:
    """The nuclei columns with a README name (``short``), by that name."""
    cells = [(c.short, _pick(results.get("real_nuclei"), method=c.label)) for c in NUCLEI_COLUMNS if c.short]
    if not any(rs for _, rs in cells):
        return []
    return [("sparse real images: StarDist's nuclei image, 50 % of training boxes erased, RetinaNet, val AP (one image: "
             "a small sample; every column on the page)", f"{_named(cells)} {_link('nuclei', 'real_nuclei')}")]


def _row_sparse(results: dict) -> list[tuple[str, str]]:
    base = results.get("co_mining_baselines")
    cells = [(name, _pick(base, split="hard", method=m)) for m, name in SPARSE_README.items()]
    if not any(rs for _, rs in cells):
        return []
    full = [("full labels", _pick(base, split="full", method="original")),
            ("full labels on twice the batch", _pick(base, split="full", method="original_2x"))]
    parts = [_val_or_test(cells)] + ([_val_or_test(full)] if any(rs for _, rs in full) else [])
    return [("sparse labels: digits `hard` (half of each image's boxes erased), RetinaNet, 900 steps of batch 16",
             f"{'; '.join(parts)} {_link('baselines', 'co_mining_baselines')}")]


def _row_few_labels(results: dict) -> list[tuple[str, str]]:
    parts = []
    for f in (2.0, 5.0, 10.0):
        cells = [(name, _pick(results.get(file), fraction=f, method=m)) for file, m, name in FEW_LABELS_README]
        if any(rs for _, rs in cells):
            parts.append(f"{f:g} %, {_val_or_test(cells)}")
    if not parts:
        return []
    return [("few labelled images: long-tailed digits, 2 / 5 / 10 % of the images labelled",
             "; ".join(parts) + f" {_link('semi', 'semi')}")]


def _row_mixed(results: dict) -> list[tuple[str, str]]:
    cells = [(c.short, _pick(results.get("mixed"), method=c.label)) for c in MIXED_COLUMNS if c.short]
    if not any(rs for _, rs in cells):
        return []
    return [("mixed: long-tailed digits, 10 % complete, 30 % `hard`-sparse, 60 % unlabelled, val AP",
             f"{_named(cells)} {_link('mixed', 'mixed')}")]


def _row_mining(results: dict) -> list[tuple[str, str]]:
    parts = []
    digits = _mined_cells(results.get("co_mining_baselines"), SPARSE_README)
    if digits:
        parts.append(f"erased digits recovered at precision ≥ 0.9 (`hard`): {digits} {_link('baselines', 'co_mining_baselines')}")
    nuclei = [(c.short, [r for r in _pick(results.get("real_nuclei"), method=c.label) if r.get("mine_pr_part")])
              for c in NUCLEI_COLUMNS if c.short and c.labels != "full"]  # a full-label column has nothing to mine
    text = ", ".join(f"{name} {mean_std([recall_at_p80(r, 'mine_pr_part') for r in rs])} % ({_seeds(rs)})"
                     for name, rs in nuclei if rs)
    if text:
        n_val = (results["real_nuclei"].get("data") or {}).get("val_boxes", "?")
        parts.append("erased nuclei recovered at mined precision ≥ 80 % (part rule; the score threshold picked with the "
                     f"hidden truth; {n_val} val nuclei): {text} {_link('nuclei', 'real_nuclei')}")
    for r in _pick(results.get("review"), method="review_round"):
        alone = _pick(results.get("review"), method="co_mining_alone", seed=r["seed"], what=r.get("what"))
        versus = f" (the same steps on the unreviewed labels: {pct(alone[-1]['ap'])})" if alone else ""
        parts.append(f"one scripted review round on digits `hard` (seed {r['seed']}): {r['mined_shown']} mined boxes shown, "
                     f"{r['reviewer_deletions']} deleted; AP {pct(r['round1_ap'])} after {r['round1_steps']} steps, "
                     f"{pct(r['ap'])} after {r['round2_steps']} more on the reviewed labels{versus} {_link('review', 'review')}")
    return [("mining for review: `minedet mine` on the sparse training images", "; ".join(parts))] if parts else []


def _row_export(results: dict) -> list[tuple[str, str]]:
    exp = results.get("export")
    if not exp:
        return []
    recs = latest(exp["records"])
    parity = [r for r in recs if r["what"].startswith("parity")]
    steps = parity[0]["model_steps"] if parity else "?"
    # latency of the model whose parity is quoted (earlier latency records of other models stay on the page)
    lat = [r for r in recs if r["what"].startswith("latency") and r.get("onnx_threads") in (1, 2)
           and (not parity or r.get("model_steps") == steps)]
    text = "; ".join(f"{r['what'].split(', ', 1)[1]}: {r['matched']:,}/{r['compared']:,} detections matched, AP "
                     f"{pct(r['ap_pytorch'])} both" for r in parity)
    text += "".join(f"; ONNX Runtime {r['speedup']:.2f}× eager PyTorch at {r['image_size']} px ({r['onnx_ms']:.1f} vs "
                    f"{r['pytorch_ms']:.1f} ms, batch 1, {r['onnx_threads']} thread{'s' * (r['onnx_threads'] > 1)} each, "
                    "paired)" for r in lat)
    reps = sorted({r["reps"] for r in lat})
    how = f"; latency: medians of {'/'.join(map(str, reps))} paired batch-1 calls, quartiles on the page" if lat else ""
    return [(f"ONNX export: RetinaNet, a {steps}-step digits model{how}", f"{text} {_link('export', 'export')}")]


def _row_scale(results: dict) -> list[tuple[str, str]]:
    parts = []
    splits = results.get("splits")
    if splits:
        rs = latest(splits["records"])
        parts.append(f"annotation splits of {rs[0]['images']:,} images, {rs[0]['boxes']:,} boxes: every mode in "
                     f"≤ {max(r['wall_s'] for r in rs):.1f} s, ≤ {max(r['peak_rss_mb'] for r in rs) / 1024:.1f} GB "
                     f"{_link('splits', 'splits')}")
    bank = results.get("cropbank")
    if bank:
        r = next(r for r in latest(bank["records"]) if "records" in r)
        parts.append(f"ACRST CropBank of {r['records']:,} pseudo-labels: {r['heap_mb']} MB of memory, "
                     f"{r['snapshot_file_mb']} MB snapshot, {r['refresh_s']} s refresh {_link('CropBank', 'cropbank')}")
    return [("COCO scale", "; ".join(parts))] if parts else []


def _row_demo(results: dict) -> list[tuple[str, str]]:
    demo = results.get("demo")
    if not demo:
        return []
    walls = sorted(r["wall_s"] / 60 for r in demo["records"])
    r = max(zip(demo["records"], origins(demo)), key=lambda ro: ro[1]["date"])[0]
    return [(f"demo: supervised RetinaNet + EfficientNet-Lite0, digits, {r['steps']} steps, 2 CPU cores",
             f"AP {pct(r['ap'])}, AP50 {pct(r['ap50'])}; the {len(walls)} recorded runs of `minedet demo` took "
             f"{' and '.join(f'{w:.1f}' for w in walls)} min, dataset build included {_link('demo', 'demo')}")]


def readme_rows(results: dict) -> list[str]:
    """``| benchmark | result |`` rows for README.md: one per setting a user acts on, at most :data:`README_MAX_ROWS`.
    The real tree-crown benchmark's rows (``report_trees.readme_rows``) come first once it has rows to quote, in place
    of the nuclei row; every other table stays on docs/benchmarks.md."""
    trees = _trees(results)
    rows = (list(trees.readme_rows(results["real_trees"])) if trees else []) or _row_nuclei(results)
    for make in (_row_sparse, _row_few_labels, _row_mixed, _row_mining, _row_export, _row_scale, _row_demo):
        rows += make(results)
    if len(rows) > README_MAX_ROWS:
        raise SystemExit(f"report.py: the README results table would have {len(rows)} rows, at most {README_MAX_ROWS}: "
                         + "; ".join(name for name, _ in rows))
    return ["| benchmark | result |", "|---|---|", *(f"| {name} | {result} |" for name, result in rows)]


def _trees(results: dict):
    """The module ``benchmarks/report_trees.py`` (the real tree-crown benchmark's page section and README rows) when
    it and ``results/real_trees.json`` both exist, else None."""
    if "real_trees" not in results or not TREES_REPORT.exists():
        return None
    import report_trees

    return report_trees


#: the digits defaults minedet ships, each with the split it was chosen on and where its records are: (what the
#: default is, where it was chosen, results file, record filter). Baselines are listed for comparison.
DEFAULTS = [
    ("co-mining preset (`digits_co_mining`): co-mining on BRL's loss, no ignored band",
     "digits val, `hard` and `extreme`", "co_mining_baselines", {"split": "hard", "method": "co_mining_brl_noib"}),
    ("baseline: `joint` on BRL's loss (the preset's two views, no mining)", "–", "co_mining_baselines",
     {"split": "hard", "method": "joint_brl"}),
    ("baseline: BRL's loss on twice the batch (a two-view step's compute)", "–", "co_mining_baselines",
     {"split": "hard", "method": "brl_2x"}),
    ("baseline: BRL's loss alone", "–", "co_mining_baselines", {"split": "hard", "method": "brl"}),
    ("baseline: original", "–", "co_mining_baselines", {"split": "hard", "method": "original"}),
    ("Mean Teacher's ignored band (`ignore_below=0.3`)", "digits val, 2 / 5 / 10 % labelled", "semi_ignore",
     {"fraction": 10.0, "method": "mean_teacher"}),
    ("ACRST's defaults (the ignored band, `ema_decay=0.99`, `occlusion_ignore=0.5`)", "digits val, 10 % labelled",
     "semi_occlusion", {"fraction": 10.0, "method": "acrst"}),
    ("baseline: supervised", "–", "semi", {"fraction": 10.0, "method": "supervised"}),
]


def section_defaults(results: dict) -> list[str]:
    """Each digits default beside the split it was chosen on: its val AP (where it was chosen) and its test AP (the
    digits test split, scored once at the end of each run since it exists; runs from before it have none)."""
    out = ["## Defaults: chosen on val, scored on test", "",
           "Every digits default below was chosen on the val images; the test images (a scene stream no choice has "
           "read) score each run at its end since the test split exists, so only runs made since then have a test "
           "figure. Each cell: mean ± std over seeds, split by torch thread count as everywhere on this page.", "",
           "| default | chosen on | results | val AP | test AP |", "|---|---|---|---|---|"]
    for name, where, file, filt in DEFAULTS:
        rs = _pick(results.get(file), **filt)
        tested = [r for r in rs if r.get("test_ap") is not None]
        val = seed_cell(rs, "ap", []) if rs else "–"  # [] : every cell names its seeds
        test = seed_cell(tested, "test_ap", []) if tested else "–"
        out.append(f"| {name} | {where} | `{file}` | {val} | {test} |")
    return out + [""]


def readme_text(current: str, results: dict) -> str:
    """``current`` (README.md) with the block between the markers replaced by the generated table."""
    if README_START not in current or README_END not in current:
        raise SystemExit(f"report.py: {README} has no {README_START} ... {README_END} block")
    head, rest = current.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    return head + README_START + "\n" + "\n".join(readme_rows(results)) + "\n" + README_END + tail


def page(results: dict) -> str:
    """docs/benchmarks.md from the results (writes the plots under IMG as a side effect)."""
    lines = ["# Benchmarks", "",
             "Generated by `python benchmarks/report.py` from `benchmarks/results/*.json`; do not edit by hand.",
             "Each section names the command that produced its numbers and where every record came from. Ratios are "
             "measured within one run on one machine. Results files are append-only: a re-run is a new record, tables "
             "use the latest run of each setting and list the earlier ones. Records of different torch thread counts never "
             "share a figure (the thread count alone moves AP): such a cell shows one figure per count, each followed by "
             "its count and seeds, joined by \" / \"; \"threads not recorded\" marks records from before records carried "
             "their origin.", ""]
    order = ["demo", "co_mining", "co_mining_tau", "co_mining_gt_match", "co_mining_aug", "co_mining_fcos", "co_mining_frcnn",
             "co_mining_frcnn_light", "co_mining_baselines", "co_mining_baselines_1000img", "co_mining_4000img_1200steps", "co_mining_1000img",
             "semi", "semi_ablation", "semi_bank",
             "semi_beta", "semi_detectors", "semi_stac", "semi_ignore", "semi_ema", "semi_adaptive", "semi_tau", "semi_occlusion", "mixed", "review", "review_cost", "real_nuclei", "export", "cropbank",
             "loader", "loader_faster_rcnn", "splits"]
    trees = _trees(results)
    if trees:
        lines += trees.section(results["real_trees"], IMG)
    lines += section_defaults(results)
    for name in sorted((n for n in results if n != "real_trees"),  # report_trees renders it, or nothing does
                       key=lambda n: (order.index(n) if n in order else 99, n)):
        res = results[name]
        render = RENDERERS.get(name, section_loader if name.startswith("loader_") else None)  # bench_loader --detector
        if render:
            lines += render(res)
        elif name.startswith("semi"):
            lines += section_semi(res, TITLES.get(name, name))
            base = SEMI_BASELINE.get(name, "semi")
            if name != "semi" and base in results:
                lines += against_headline(res, results[base])
        else:
            lines += section_runs(res, TITLES.get(name, name))
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true",
                    help="write nothing; exit 1 when docs/benchmarks.md or README.md's results table differ from the records")
    args = ap.parse_args(argv)
    global IMG
    results = {}
    for f in sorted(RESULTS.glob("*.json")):
        res = json.loads(f.read_text())
        results[res["name"]] = res
    # the smoke tests redirect the page (MINEDET_BENCH_DOCS): README.md is then left alone unless redirected too
    readme = README if (os.environ.get("MINEDET_BENCH_README") or not os.environ.get("MINEDET_BENCH_DOCS")) else None
    if args.check:
        import tempfile

        with tempfile.TemporaryDirectory(prefix="minedet-report-img-") as tmp:  # the plots are drawn, then dropped
            IMG = Path(tmp)
            stale = [str(DOCS)] if not DOCS.exists() or DOCS.read_text() != page(results) else []
            if readme is not None and readme_text(readme.read_text(), results) != readme.read_text():
                stale.append(str(readme))
        for path in stale:
            print(f"report.py: {path} does not say what the records say; run python benchmarks/report.py", file=sys.stderr)
        return 1 if stale else 0
    from minedet.io import write_text_atomic

    DOCS.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(DOCS, page(results))
    print(f"wrote {DOCS}")
    if readme is not None:
        write_text_atomic(readme, readme_text(readme.read_text(), results))
        print(f"wrote the results table of {readme}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
