"""Reliability and security: bad images mid-training, models of another class count, checkpoints that
would run code, interrupted writes, missing files and mismatched hidden truth. Each failure is one
line (MinedetError / exit 2), never a traceback, never a silently wrong result, never a half file."""

from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

import minedet.io
from minedet.cli import main
from minedet.data.coco import load_coco, save_coco
from minedet.data.datasets import DetectionDataset, InfiniteSampler, load_image
from minedet.data.splits import sparsify, split_semi, synthetic_coco
from minedet.engine.checkpoint import export_model, load_checkpoint, load_model
from minedet.errors import MinedetError
from minedet.io import save_torch_atomic, write_json_atomic
from minedet.models.build import DetectorSpec, build_detector
from tests.conftest import tiny_config

REPO = Path(__file__).resolve().parents[1]


def _one_line(text: str) -> str:
    lines = [ln for ln in text.splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one line, got {len(lines)}: {text!r}"
    assert "Traceback" not in text
    return lines[0]


def _cli_error(stderr: str) -> str:
    """The one error line of a failed command; other stderr lines may only be minedet's own notices
    (e.g. "minedet: no CUDA GPU found; training on the CPU")."""
    assert "Traceback" not in stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("minedet: error: ")]
    assert len(errors) == 1, stderr
    assert all(ln.startswith("minedet: ") for ln in lines), stderr
    return errors[0]


def _write_cfg(cfg, path: Path) -> Path:
    path.write_text(yaml.safe_dump(cfg.as_dict()))
    return path


# ------------------------------------------------------------------------------ (a) bad images
@pytest.fixture()
def corrupt_digits(tiny_digits, tmp_path):
    """A copy of tiny_digits whose first-sampled train image (index of the first batch of the
    training loader, seed 0) is truncated to half its bytes. Returns (paths, image id, file)."""
    root = tmp_path / "digits"
    shutil.copytree(tiny_digits.root, root)
    paths = replace(tiny_digits, root=root, train_json=root / tiny_digits.train_json.relative_to(tiny_digits.root),
                    val_json=root / tiny_digits.val_json.relative_to(tiny_digits.root),
                    image_root=root / tiny_digits.image_root.relative_to(tiny_digits.root))
    data = load_coco(paths.train_json)
    first = next(iter(InfiniteSampler(len(data.images), seed=0)))  # what run_training's loader draws first
    info = data.images[first]
    f = paths.image_root / info["file_name"]
    raw = f.read_bytes()
    f.write_bytes(raw[: len(raw) // 2])
    return paths, int(info["id"]), f


def test_undecodable_image_is_skipped_counted_and_warned(corrupt_digits, capsys):
    paths, bad_id, bad_file = corrupt_digits
    ds = DetectionDataset(load_coco(paths.train_json), paths.image_root)
    ids = [ds[i]["image_id"] for i in range(len(ds))]
    assert bad_id not in ids and len(ids) == len(ds)
    assert ds.bad_images == 1
    for i in range(len(ds)):  # asked again: counted again, warned once
        ds[i]
    assert ds.bad_images == 2
    warn = _one_line(capsys.readouterr().err)
    assert bad_file.name in warn and f"image id={bad_id}" in warn and "skipped" in warn


def test_strict_dataset_names_file_and_image_id(corrupt_digits):
    paths, bad_id, bad_file = corrupt_digits
    ds = DetectionDataset(load_coco(paths.train_json), paths.image_root, skip_bad_images=False)
    index = ds.ids.index(bad_id)
    with pytest.raises(MinedetError) as e:
        ds[index]
    msg = _one_line(str(e.value))
    assert str(paths.train_json) in msg and f"image id={bad_id}" in msg and bad_file.name in msg


def _png_bytes(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    Image.fromarray((np.random.default_rng(seed).random((64, 64, 3)) * 255).astype(np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_every_kind_of_broken_image_is_one_minedet_error(tmp_path):
    """Pillow raises OSError, UnidentifiedImageError, SyntaxError (a wrong IDAT length makes it read
    garbage as the next chunk type) or DecompressionBombError (a header declaring 30000x30000 px):
    all must be one MinedetError, so the skip / strict logic sees them."""
    good = _png_bytes()
    wrong_len = bytearray(good)
    wrong_len[36] ^= 0x5A  # low byte of the IDAT chunk length
    bomb = (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", struct.pack(">IIBBBBB", 30000, 30000, 8, 0, 0, 0, 0))
            + _chunk(b"IDAT", zlib.compress(b"\0" * 64)) + _chunk(b"IEND", b""))
    cases = {"truncated": good[: len(good) // 2], "garbage": b"not an image", "empty": b"",
             "wrong_chunk_length": bytes(wrong_len), "bomb": bomb}
    raised = {}
    for name, data in cases.items():
        f = tmp_path / f"{name}.png"
        f.write_bytes(data)
        try:
            with Image.open(f) as im:
                im.convert("RGB")
        except Exception as e:  # noqa: BLE001 - recording what Pillow raises
            raised[name] = type(e).__name__
        with pytest.raises(MinedetError, match=f"image file .*{name}.png.* cannot be decoded") as e:
            load_image(f, file="x.json", record="image id=1")
        _one_line(str(e.value))
    assert set(raised) == set(cases)  # every case is really broken for Pillow
    with pytest.raises(MinedetError, match="missing.png"):
        load_image(tmp_path / "missing.png")


def test_training_skips_the_bad_image_and_counts_it(corrupt_digits, tmp_path, monkeypatch, capsys):
    import minedet.run as train_mod
    from minedet.run import run_training

    paths, bad_id, _ = corrupt_digits
    made: list[DetectionDataset] = []

    class Recording(DetectionDataset):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            made.append(self)

    monkeypatch.setattr(train_mod, "DetectionDataset", Recording)
    res = run_training(tiny_config(paths, tmp_path / "run", data__val=None, train__max_steps=1, train__ckpt_every=0), quiet=True)
    assert res["steps"] == 1
    assert made[0].bad_images == 1
    assert f"image id={bad_id}" in capsys.readouterr().err


@pytest.mark.parametrize("workers", [0, 1])
def test_strict_training_stops_with_one_line(corrupt_digits, tmp_path, capsys, workers):
    """Under data.strict the first bad image stops ``minedet train`` (exit 2) with one line naming
    the JSON file, the image id and the image file, also when a DataLoader worker raised it."""
    paths, bad_id, bad_file = corrupt_digits
    cfg = tiny_config(paths, tmp_path / "run", data__val=None, data__strict=True, data__workers=workers,
                      train__max_steps=2, train__ckpt_every=0, train__progress=False)
    rc = main(["train", str(_write_cfg(cfg, tmp_path / "cfg.yaml"))])
    assert rc == 2
    line = _cli_error(capsys.readouterr().err)
    assert str(paths.train_json) in line and f"image id={bad_id}" in line and bad_file.name in line
    assert "DataLoader worker" not in line


# ------------------------------------------------------------------------------ (b) class counts
@pytest.fixture(scope="module")
def model10(tmp_path_factory):
    """An exported 10-class RetinaNet (the digits' classes)."""
    spec = DetectorSpec(name="retinanet", num_classes=10, class_names=[str(i) for i in range(10)],
                        backbone="effnet_lite0", image_size=64, levels="p3p5", fpn_channels=16, anchor_scale=2.0)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model10") / "model.pt"
    export_model(path, build_detector(spec, pretrained=False), {"method": "supervised", "role": "student"})
    return path


def test_eval_of_a_model_for_other_classes_exits_2_with_one_line(model10, tmp_path, capsys):
    data = tmp_path / "three.json"
    save_coco(data, synthetic_coco(4, 6, 3, seed=0))
    rc = main(["eval", str(model10), str(data), "--device", "cpu"])
    assert rc == 2
    line = _cli_error(capsys.readouterr().err)
    assert str(data) in line and "classes" in line


@pytest.mark.parametrize("edit, match", [
    (lambda o: o["spec"].update(num_classes=3, class_names=["a", "b", "c"]), "weights do not fit"),
    (lambda o: o["spec"].update(num_classes=3), "num_classes=3 but 10 class names"),
    (lambda o: o.pop("spec"), "lacks its spec"),
    (lambda o: o.__setitem__("model", 3), "lacks its spec or its weights"),
    (lambda o: o["spec"].update(fpn_channels="wide"), "spec is not understood"),
    (lambda o: o["spec"].update(name="yolo"), "spec is not understood.*yolo"),
    (lambda o: o["spec"].update(colour="red"), "spec is not understood"),
])
def test_load_model_with_an_edited_spec_is_one_line(model10, tmp_path, edit, match):
    obj = torch.load(model10, weights_only=True)
    edit(obj)
    path = tmp_path / "edited.pt"
    torch.save(obj, path)
    with pytest.raises(MinedetError, match=match) as e:
        load_model(path)
    line = _one_line(str(e.value))
    assert line.startswith(str(path))


# ------------------------------------------------------------------------------ (c) no code from checkpoints
class _Payload:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_the_payload_really_runs_when_loaded_unsafely(tmp_path):
    """The control: without weights_only the file does execute code (so the tests below mean something)."""
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
    torch.load(tmp_path / "evil.pt", weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("fmt", ["zip", "legacy", "pickle"])
def test_checkpoint_that_would_run_code_is_refused(tmp_path, fmt):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    obj = {"format": "minedet-model", "spec": {"name": "retinanet", "num_classes": 1}, "model": {"w": _Payload(marker)}}
    if fmt == "zip":
        torch.save(obj, path)
    elif fmt == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        import pickle

        path.write_bytes(pickle.dumps(obj, protocol=2))
    for load in (load_checkpoint, load_model):
        with pytest.raises(MinedetError, match="not a readable minedet checkpoint") as e:
            load(path)
        _one_line(str(e.value))
    assert not marker.exists()


def test_cli_eval_and_resume_refuse_a_code_running_checkpoint(tiny_digits, tmp_path, capsys):
    from minedet.run import run_training

    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save(_Payload(marker), evil)
    assert main(["eval", str(evil), str(tiny_digits.val_json), "--device", "cpu"]) == 2
    _cli_error(capsys.readouterr().err)
    with pytest.raises(MinedetError, match="not a readable minedet checkpoint"):
        run_training(tiny_config(tiny_digits, tmp_path / "run", data__val=None, train__max_steps=1), quiet=True,
                     resume=str(evil))
    assert not marker.exists()


def test_flipped_bits_in_a_checkpoint_are_detected_not_loaded(tmp_path):
    """torch.load does not check the zip's CRC-32s: without load_checkpoint's check a flipped bit in
    tensor data loads silently different weights."""
    path = tmp_path / "ck.pt"
    save_torch_atomic(path, {"step": 3, "method": {"w": torch.arange(2000, dtype=torch.float32)}})
    data = bytearray(path.read_bytes())
    w_bytes = torch.arange(2000, dtype=torch.float32).numpy().tobytes()
    at = bytes(data).index(w_bytes[4000:4016]) + 8  # inside the tensor's storage
    data[at] ^= 0x01
    bad = tmp_path / "bad.pt"
    bad.write_bytes(bytes(data))
    silent = torch.load(bad, weights_only=True)["method"]["w"]
    assert not torch.equal(silent, torch.arange(2000, dtype=torch.float32))  # the failure mode exists
    with pytest.raises(MinedetError, match="corrupt"):
        load_checkpoint(bad)
    for n in (0, 10, len(data) // 2, len(data) - 5):  # truncated files
        bad.write_bytes(bytes(data[:n]))
        with pytest.raises(MinedetError):
            load_checkpoint(bad)
    assert load_checkpoint(path)["step"] == 3


# ------------------------------------------------------------------------------ (d) atomic outputs
def _no_temp_files(folder: Path) -> None:
    assert not [p.name for p in folder.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("exc", [OSError("No space left on device"), KeyboardInterrupt()])
def test_json_write_failing_midway_leaves_old_file_and_no_temp(tmp_path, monkeypatch, exc):
    def half_dump(obj, f, **kw):
        f.write('{"images": [1, 2')
        raise exc

    target = tmp_path / "out.json"
    monkeypatch.setattr(minedet.io.json, "dump", half_dump)
    with pytest.raises(type(exc)):
        write_json_atomic(target, {"a": 1})
    assert not target.exists()
    _no_temp_files(tmp_path)

    monkeypatch.undo()
    write_json_atomic(target, {"old": True})
    monkeypatch.setattr(minedet.io.json, "dump", half_dump)
    with pytest.raises(type(exc)):
        write_json_atomic(target, {"new": True})
    assert json.loads(target.read_text()) == {"old": True}
    _no_temp_files(tmp_path)


def test_checkpoint_and_model_writes_failing_midway_keep_the_old_file(model10, tmp_path, monkeypatch):
    ck = tmp_path / "checkpoints" / "last.pt"
    save_torch_atomic(ck, {"step": 2, "w": torch.ones(3)})
    model = tmp_path / "model.pt"
    shutil.copy(model10, model)
    real_save = torch.save

    def half_save(obj, f, *a, **k):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(OSError):
        save_torch_atomic(ck, {"step": 4, "w": torch.zeros(3)})
    det, _ = load_model(model10)
    with pytest.raises(OSError):
        export_model(model, det, {"method": "new"})
    monkeypatch.undo()
    assert load_checkpoint(ck)["step"] == 2
    assert load_model(model)[1]["method"] == "supervised"
    _no_temp_files(ck.parent)
    _no_temp_files(tmp_path)


# ------------------------------------------------------------------------------ (e) missing files
def test_train_with_a_missing_train_file_exits_2_with_one_line(tiny_digits, tmp_path):
    """A real process: exit status 2, one stderr line naming the file, no traceback."""
    missing = tmp_path / "nowhere" / "train.json"
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(missing))
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-m", "minedet", "train", str(_write_cfg(cfg, tmp_path / "cfg.yaml"))],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2
    line = _cli_error(p.stderr)
    assert str(missing) in line and "not found" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_with_a_missing_val_file_fails_before_training(tiny_digits, tmp_path, capsys):
    missing = tmp_path / "val.json"
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__val=str(missing))
    assert main(["train", str(_write_cfg(cfg, tmp_path / "cfg.yaml"))]) == 2
    assert str(missing) in _cli_error(capsys.readouterr().err)
    assert not (tmp_path / "run" / "checkpoints").exists()


# ------------------------------------------------------------------------------ (f) hidden truth of another split
@pytest.fixture()
def sparse_files(tiny_digits, tmp_path):
    train = load_coco(tiny_digits.train_json).raw
    val = load_coco(tiny_digits.val_json).raw
    ours = sparsify(train, "hard", seed=0)
    theirs = sparsify(val, "hard", seed=0)
    files = {"kept": tmp_path / "kept.json", "hidden": tmp_path / "kept.hidden.json",
             "other_hidden": tmp_path / "val.hidden.json"}
    save_coco(files["kept"], ours.kept)
    save_coco(files["hidden"], ours.hidden)
    save_coco(files["other_hidden"], theirs.hidden)
    return files


def test_hidden_truth_of_another_dataset_is_refused_before_training(tiny_digits, sparse_files, tmp_path, capsys):
    from minedet.run import make_dataset

    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(sparse_files["kept"]))
    ds = make_dataset(str(sparse_files["kept"]), str(tiny_digits.image_root), cfg, train=True,
                      hidden=str(sparse_files["hidden"]))  # the matching one is accepted
    assert ds.hidden is not None
    for wrong, match in ((sparse_files["other_hidden"], "image ids differ"), (sparse_files["kept"], "in both")):
        with pytest.raises(MinedetError, match=match) as e:
            make_dataset(str(sparse_files["kept"]), str(tiny_digits.image_root), cfg, train=True, hidden=str(wrong))
        assert str(wrong) in _one_line(str(e.value))

    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(sparse_files["kept"]), data__val=None,
                      data__hidden=str(sparse_files["other_hidden"]), method__name="co_mining")
    assert main(["train", str(_write_cfg(cfg, tmp_path / "cfg.yaml"))]) == 2
    line = _cli_error(capsys.readouterr().err)
    assert str(sparse_files["other_hidden"]) in line and "image ids differ" in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_semi_hidden_truth_of_another_split_seed_is_refused(tiny_digits, tmp_path):
    from minedet.run import make_dataset

    train = load_coco(tiny_digits.train_json).raw
    a, b = split_semi(train, 50, 0), split_semi(train, 50, 1)
    files = {}
    for name, obj in (("unl", a.unlabelled), ("hidden", a.hidden), ("hidden_b", b.hidden)):
        files[name] = tmp_path / f"{name}.json"
        save_coco(files[name], obj)
    assert sorted(im["id"] for im in a.unlabelled["images"]) != sorted(im["id"] for im in b.unlabelled["images"])
    cfg = tiny_config(tiny_digits, tmp_path / "run")
    make_dataset(str(files["unl"]), str(tiny_digits.image_root), cfg, train=True, with_targets=False, hidden=str(files["hidden"]))
    with pytest.raises(MinedetError, match="image ids differ"):
        make_dataset(str(files["unl"]), str(tiny_digits.image_root), cfg, train=True, with_targets=False,
                     hidden=str(files["hidden_b"]))


# ------------------------------------------------------------------------------ resuming from the wrong file
@pytest.fixture(scope="module")
def one_step_run(tiny_digits, tmp_path_factory):
    from minedet.run import run_training

    out = tmp_path_factory.mktemp("one_step")
    run_training(tiny_config(tiny_digits, out, data__val=None, train__max_steps=1), quiet=True)
    return out


def test_load_training_checkpoint_refuses_a_model_file_and_other_torch_files(one_step_run, tmp_path):
    from minedet.engine.checkpoint import load_training_checkpoint

    assert load_training_checkpoint(one_step_run / "checkpoints" / "last.pt")["step"] == 1
    with pytest.raises(MinedetError, match="exported model.*resume from OUT/checkpoints/last.pt"):
        load_training_checkpoint(one_step_run / "model.pt")
    other = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}}, other)
    with pytest.raises(MinedetError, match="not a minedet training checkpoint .no step, method, optimizer, scheduler."):
        load_training_checkpoint(other)


def test_resume_from_model_pt_is_one_line(tiny_digits, one_step_run, tmp_path):
    from minedet.run import run_training

    with pytest.raises(MinedetError, match="exported model"):
        run_training(tiny_config(tiny_digits, tmp_path / "r", data__val=None, train__max_steps=2), quiet=True,
                     resume=str(one_step_run / "model.pt"))


def test_resume_with_another_optimizer_is_one_line(tiny_digits, one_step_run, tmp_path):
    from minedet.run import run_training

    with pytest.raises(MinedetError, match="optimizer"):
        run_training(tiny_config(tiny_digits, tmp_path / "r", data__val=None, train__max_steps=2, train__optimizer="adamw"),
                     quiet=True, resume=str(one_step_run / "checkpoints" / "last.pt"))


def test_written_files_get_the_usual_permissions(tmp_path):
    import os
    import stat

    from minedet.io import write_json_atomic

    old = os.umask(0o022)
    try:
        write_json_atomic(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o644
