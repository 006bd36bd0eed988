"""The tree-crown section of docs/benchmarks.md and its README rows, from ``benchmarks/results/real_trees.json``.

Column meanings come from the one place they are declared (``bench_trees.COLUMNS``); records are read as they are
(the latest record of each column, protocol, split and seed); nothing is typed by hand.
"""

from __future__ import annotations

import math
import statistics

from bench_trees import BY_LABEL, COLUMNS, PROTOCOLS, STEPS, THRESHOLDS
from common import latest

ANCHOR = "real-images-tree-crowns-neon-chosen-on-dev-reported-on-test"
MIN_PRECISION = 0.7

PROTOCOL_TEXT = [
    "Data: the NEON RGB scenes with human crown boxes that ship in the `deepforest` 2.1.0 wheel (MIT), fetched with "
    "`pip download` at benchmark time into the cache, converted by `minedet data convert --from voc` and cut by "
    "`minedet data tile`. The two YELL scenes are cut into train / dev / test bands (about 60 / 20 / 20 %; no pixel "
    "shared; a crown cut by a band edge is an ignored region on both sides); `OSBS_029` and `SOAP_061` (other sites) "
    "join test. Training tiles: 400 px, overlap 50; dev and test: the non-overlapping 400 px grid. One class (tree).",
    "",
    "Losing boxes: `random`: 50 % of the training crowns erased, seeded with the run's seed; `partial`: a seeded "
    "quarter of the training area's 400 px cells was labelled in a hurry, keeping only the largest third of their "
    "crowns; every other cell is complete. The erased crowns are the hidden truth.",
    "",
    f"Every column is what `minedet train METHOD --train tiles.json --val dev.json` does for a user who says nothing, "
    f"with one budget for all: {STEPS} steps, input 416 px, warm-up 50, one torch thread per run (two runs at a time). "
    "**Every choice is made on dev; test is scored once per final column.** `full` trains on every crown whatever the "
    "protocol, so both protocols share its records. Gap recovered: (column - original) / (full - original) on mean "
    "test AP50.",
]


def _vals(recs: list[dict], key: str) -> list[float]:
    return [100 * r[key] for r in recs if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]


def ms(recs: list[dict], key: str) -> str:
    """mean ± std over seeds of a fraction, in percent ("–" without records; one seed: the value and "(1 seed)")."""
    xs = _vals(recs, key)
    if not xs:
        return "–"
    if len(xs) == 1:
        return f"{xs[0]:.1f} (1 seed)"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def cells(res: dict, protocol: str, split: str) -> dict[str, list[dict]]:
    """column -> its latest records of one split (``full`` from either protocol), in declared order."""
    recs = [r for r in latest(res["records"]) if r.get("split") == split
            and (r.get("protocol") == protocol or r.get("column") == "full")]
    out = {c.label: [r for r in recs if r.get("column") == c.label] for c in COLUMNS}
    return {k: v for k, v in out.items() if v}


def gap_recovered(test: dict[str, list[dict]], label: str) -> str:
    try:
        full, orig, col = (statistics.mean(_vals(test[k], "ap50")) for k in ("full", "original", label))
    except (KeyError, statistics.StatisticsError):
        return "–"
    return "–" if full <= orig else f"{100 * (col - orig) / (full - orig):.0f} %"


def ap_table(res: dict, protocol: str) -> list[str]:
    dev, test = cells(res, protocol, "dev"), cells(res, protocol, "test")
    out = ["| column | what it is | dev AP50 | dev AP | test AP50 | test AP | gap recovered (test AP50) | seeds |",
           "|---|---|---|---|---|---|---|---|"]
    for label in dev:
        col = BY_LABEL[label]
        seeds = sorted({r["seed"] for r in dev[label]})
        name = f"**{label}** (default)" if col.default else label
        out.append(f"| {name} | {col.meaning} | {ms(dev[label], 'ap50')} | {ms(dev[label], 'ap')} | "
                   f"{ms(test.get(label, []), 'ap50')} | {ms(test.get(label, []), 'ap')} | "
                   f"{gap_recovered(test, label) if label not in ('full', 'original') else ''} | {seeds} |")
    return out


def at(rows: list[dict], t: float) -> dict | None:
    return next((r for r in rows if abs(r["threshold"] - t) < 1e-9), None)


def pr(row: dict | None) -> str:
    if not row or row.get("n_mined") is None:
        return "–"
    p = row["precision"]
    p = "–" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.2f}"
    return f"{100 * row['recall']:.1f} % at {p} ({row['n_mined']} shown)"


def mining_table(res: dict, protocol: str) -> list[str]:
    mined = cells(res, protocol, "train")
    if not mined:
        return []
    out = [f"Mining the sparse training tiles with each run's model (`minedet mine`'s filter), against the erased "
           f"crowns: recall at precision, per seed. 'Best at >= {MIN_PRECISION}' picks the threshold with the hidden "
           "truth (an upper bound no user has); 'proposed' is the score the library proposes from the model alone.", "",
           f"| column | seed | at 0.6 (`mine`'s old default) | best recall at precision >= {MIN_PRECISION} (hidden truth) "
           "| proposed score | at the proposed score |", "|---|---|---|---|---|---|"]
    for label, recs in mined.items():
        for r in sorted(recs, key=lambda r: r["seed"]):
            rows = r["mine_pr"]
            ok = [x for x in rows if isinstance(x["precision"], float) and not math.isnan(x["precision"])
                  and x["precision"] >= MIN_PRECISION]
            best = max(ok, key=lambda x: x["recall"]) if ok else None
            best_s = f"{pr(best)}, t {best['threshold']:g}" if best else "never"
            out.append(f"| {label} | {r['seed']} | {pr(at(rows, 0.6))} | {best_s} | "
                       f"{r.get('proposed_score', '–')} | {pr(r.get('mine_at_proposed'))} |")
    return out


def section(res: dict) -> list[str]:
    out = ["## Real images: tree crowns (NEON), chosen on dev, reported on test", "", *PROTOCOL_TEXT, ""]
    for protocol in PROTOCOLS:
        if not cells(res, protocol, "dev"):
            continue
        out += [f"### Protocol `{protocol}`", "", *ap_table(res, protocol), "", *mining_table(res, protocol), ""]
    out += [f"Thresholds measured for mining: {', '.join(f'{t:g}' for t in THRESHOLDS)}. Records: "
            "`benchmarks/results/real_trees.json` (command, commit, machine and the number of other benchmark "
            "processes running beside each run).", ""]
    return out


def readme_rows(res: dict) -> list[tuple[str, str]]:
    """The README's first rows: test AP50 of the columns a user chooses between, per protocol."""
    rows = []
    for protocol in PROTOCOLS:
        test = cells(res, protocol, "test")
        if "original" not in test:
            continue
        parts = [f"{label} {ms(recs, 'ap50')}" for label, recs in test.items()]
        what = "50 % of the training crowns erased" if protocol == "random" else "hurried cells keep a third of their crowns"
        rows.append((f"sparse real images: NEON tree crowns, {what}, RetinaNet, test AP50",
                     "; ".join(parts) + f" ([trees](docs/benchmarks.md#{ANCHOR}))"))
    return rows
