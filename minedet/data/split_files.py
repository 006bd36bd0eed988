"""Splits written to files: the kept set, the hidden truth and the manifest that ``minedet data sparsify`` writes
(:func:`write_sparsified`), and the sparse copies of the digits train split that ``minedet demo --sparse`` and the
benchmarks train on (:func:`sparse_copy`). The splits themselves are computed in :mod:`minedet.data.splits` (pure).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from minedet.errors import MinedetError


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_sparsified(src: str | Path, out: str | Path, mode: str, seed: int, rate: float | None = None) -> dict:
    """Sparsify ``src`` into ``out`` + ``out.hidden.json`` + ``out.manifest.json`` (the manifest is
    written last, so its presence marks a complete split). Returns the manifest."""
    from minedet.data.coco import load_coco, save_coco
    from minedet.data.splits import sparsify
    from minedet.io import check_outputs, write_json_atomic

    src, out = Path(src), Path(out)
    if out.suffix != ".json":
        raise MinedetError("output name must end in .json", file=str(out))
    hidden_path = out.with_suffix(".hidden.json")
    manifest_path = out.with_suffix(".manifest.json")
    check_outputs([src], files=[out, hidden_path, manifest_path])
    data = load_coco(src)
    res = sparsify(data.raw, mode, seed, rate)
    manifest = dict(res.manifest)
    manifest["source_file"] = str(src)
    manifest["source_file_sha256"] = file_sha256(src)
    manifest["load"] = {"n_clipped": data.n_clipped, "n_dropped": data.n_dropped}
    manifest["outputs"] = {"kept": str(out), "hidden": str(hidden_path)}
    manifest["command"] = "minedet data sparsify " + " ".join(
        [str(src), str(out), "--mode", mode, "--seed", str(seed)] + (["--rate", repr(rate)] if rate is not None else [])
    )
    save_coco(hidden_path, res.hidden, validate=False)
    save_coco(out, res.kept, validate=False)
    write_json_atomic(manifest_path, manifest, indent=1)
    return manifest


def sparse_copy(cfg, mode: str, seed: int = 0) -> tuple[str, str]:
    """Write (once) a sparsified copy of the digits train split beside it, as ``minedet data
    sparsify`` does; return (train json, hidden-truth json). ``cfg``: a Config whose ``data.train`` is set."""
    src = Path(cfg.data.train)
    out = src.parent / f"train_{mode}_seed{seed}.json"
    if not out.with_suffix(".manifest.json").exists():
        for p in (out, out.with_suffix(".hidden.json")):  # an interrupted earlier write
            p.unlink(missing_ok=True)
        write_sparsified(src, out, mode, seed)
    return str(out), str(out.with_suffix(".hidden.json"))
