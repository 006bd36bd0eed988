"""Move records between results files without editing them by hand.

Results files are append-only (``common.append_results``). When a record must appear in another
file, or a record that an earlier version of a file held was lost, this script appends it with its
provenance; it never changes or drops a record.

Usage:
  python benchmarks/results_tool.py restore demo --from-commit 32dc55e
      # append the records that demo.json held at that commit and holds no more
  python benchmarks/results_tool.py copy co_mining co_mining_tau --where split=hard method=original seed=0
      # append matching records of co_mining.json to co_mining_tau.json, marked as copies
  python benchmarks/results_tool.py stamp-legacy aa78e6d
      # note in each file (top level, records untouched) the commits up to the given one that wrote it:
      # where its records without an origin of their own came from
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from common import ROOT, RESULTS, append_records, command_line, load_results, write_json


def _bare(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "origin"}


def legacy_origin(res: dict) -> dict:
    """The provenance of a record that carries none: the header of the file that held it."""
    return {"command": "; ".join(dict.fromkeys(res.get("commands") or [res["command"]])), "date": res["date"],
            "git_commit": res.get("git_commit"), "machine": res.get("machine", {})}


def lost_records(old: dict, now: dict | None) -> list[dict]:
    """Records of ``old`` (a results file as it was) that ``now`` does not hold, each with its
    origin (its own, or the old file's header) and ``restored`` marking where it came back from."""
    present = [_bare(r) for r in (now or {}).get("records", [])]
    out = []
    for r in old["records"]:
        if _bare(r) not in present:
            out.append({**_bare(r), "origin": {**(r.get("origin") or legacy_origin(old)), "restored_by": command_line()}})
    return out


def matching(res: dict, where: dict[str, str]) -> list[dict]:
    """Records of ``res`` whose fields equal ``where`` (values compared as strings), each with its
    origin and ``copied_from`` naming the source file."""
    out = []
    for r in res["records"]:
        if all(str(r.get(k)) == v for k, v in where.items()):
            out.append({**_bare(r), "origin": {**(r.get("origin") or legacy_origin(res)), "copied_from": res["name"],
                                               "copied_by": command_line()}})
    return out


def file_at(name: str, commit: str) -> dict:
    rel = (RESULTS / f"{name}.json").relative_to(ROOT)
    proc = subprocess.run(["git", "show", f"{commit}:{rel.as_posix()}"], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"results_tool: {rel} at {commit}: {proc.stderr.strip().splitlines()[0]}")
    return json.loads(proc.stdout)


def commits_until(name: str, commit: str) -> list[str]:
    """The commits up to ``commit`` that changed ``benchmarks/results/<name>.json``, oldest first."""
    rel = (RESULTS / f"{name}.json").relative_to(ROOT).as_posix()
    proc = subprocess.run(["git", "log", "--format=%h", "--abbrev=7", commit, "--", rel], cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"results_tool: git log {commit} -- {rel}: {proc.stderr.strip()}")
    return list(reversed(proc.stdout.split()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("restore", help="append the records a file held at an earlier commit and lost since")
    r.add_argument("name")
    r.add_argument("--from-commit", required=True)
    c = sub.add_parser("copy", help="append matching records of one results file to another, marked as copies")
    c.add_argument("source")
    c.add_argument("dest")
    c.add_argument("--where", nargs="+", default=[], metavar="FIELD=VALUE")
    st = sub.add_parser("stamp-legacy", help="record in each file the commits that wrote its origin-less records")
    st.add_argument("until", help="the last commit before records carried their own origin")
    args = ap.parse_args(argv)
    if args.cmd == "stamp-legacy":
        for path in sorted(RESULTS.glob("*.json")):
            res = load_results(path.stem)
            if any(not r.get("origin") for r in res["records"]):
                write_json(path.stem, {**res, "legacy_commits": commits_until(path.stem, args.until)})
                print(f"{path.stem}: {', '.join(res.get('legacy_commits') or commits_until(path.stem, args.until))}")
        return 0
    if args.cmd == "restore":
        name, recs = args.name, lost_records(file_at(args.name, args.from_commit), load_results(args.name))
        for rec in recs:
            rec["origin"]["restored_from"] = args.from_commit
    else:
        src = load_results(args.source)
        if src is None:
            raise SystemExit(f"results_tool: no results file {args.source}.json")
        name, recs = args.dest, matching(src, dict(w.split("=", 1) for w in args.where))
    if recs:
        append_records(name, recs)
    print(f"{len(recs)} record(s) appended to {name}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
