"""ONNX export: the exported graph gives PyTorch's detections (all three detectors, images with and without
detections, other image shapes), the metadata round-trips, predict / eval take the .onnx file, and bad
input is one line with exit status 2 and no output file."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from minedet import __version__  # noqa: E402
from minedet.cli import main  # noqa: E402
from minedet.engine.checkpoint import export_model  # noqa: E402
from minedet.errors import MinedetError  # noqa: E402
from minedet.export import OnnxDetector, cut_score, export_onnx, match_detections  # noqa: E402
from minedet.models.build import DetectorSpec, build_detector  # noqa: E402
from tests.helpers import TinyFPN, tiny_detector  # noqa: E402



def _tiny(name: str, size: int = 64, **spec_kw):
    """tests.helpers' tiny detector; FCOS on a 64-channel FPN, as its GroupNorm(32) needs two channels per
    group to normalise the 1x1 maps of a 64-px image at batch 1."""
    if name != "fcos":
        return tiny_detector(name, image_size=size, **spec_kw).eval()
    torch.manual_seed(0)
    spec = DetectorSpec(name="fcos", num_classes=3, image_size=size, max_size=size, fpn_channels=64, anchor_scale=2.0,
                        **spec_kw)
    return build_detector(spec, backbone=TinyFPN(64)).eval()


def _sharpen(det, bias: float):
    """Spread the random classifier's scores (no ties at the 100-detection cut): a He-initialised
    classification tower (one-stage) or a 40x classifier (Faster R-CNN), then ``bias`` on its logits
    (a large negative bias: a detector that finds nothing)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if det.kind == "faster_rcnn":
            det.model.roi_heads.box_predictor.cls_score.weight.mul_(40.0)
            det.model.roi_heads.box_predictor.cls_score.bias[1:].add_(bias)  # foreground vs background (0)
            return det
        for name, p in det.model.head.classification_head.named_parameters():
            if name.endswith("weight") and p.ndim == 4:
                p.copy_(torch.randn(p.shape, generator=g) * (2.0 / p[0].numel()) ** 0.5)
            if name == "cls_logits.bias":
                p.add_(bias)
    return det


def _assert_same(ref, got, max_det: int = 100):
    """Same detections: the same count, every one matched (IoU >= 0.99, same label), scores within 1e-4."""
    assert len(got) == len(ref)
    above = cut_score(ref, max_det)
    m = match_detections(ref, got, iou=0.99, above=above)
    n = len(ref) if above is None else int((ref.scores > above).sum())
    assert m["matched"] == n, m
    assert m["max_score_diff"] <= 1e-4, m
    if len(ref):
        assert got.labels.dtype == torch.int64 and got.boxes.shape == (len(ref), 4)


def _images(size: int, seed: int = 1):
    """The export size, a wider and a taller image (resize + padding change), a larger one."""
    g = torch.Generator().manual_seed(seed)
    shapes = [(3, size, size), (3, size + 9, 2 * size - 3), (3, 2 * size + 5, size + 1), (3, size + 200, size + 143)]
    return [torch.rand(*s, generator=g) for s in shapes]


@pytest.mark.parametrize("name", ["retinanet", "fcos", "faster_rcnn"])
def test_onnx_gives_pytorch_detections(name, tmp_path):
    size = 64
    det = _sharpen(_tiny(name, size), bias=1.0 if name == "faster_rcnn" else 2.0)
    rep = export_onnx(det, tmp_path / "m.onnx", dynamic=True)
    assert rep.input_shape == [3, "height", "width"] and rep.check_detections > 0
    onnx_det = OnnxDetector(tmp_path / "m.onnx")
    total = 0
    for img in _images(size):
        ref = det.predict([img])[0]
        _assert_same(ref, onnx_det.predict([img])[0])
        total += len(ref)
    assert total > 0, "the comparison must see detections"
    # a detector that finds nothing: the graph returns empty [0, 4] / [0] outputs, not an error
    quiet = _sharpen(_tiny(name, size), bias=-50.0)
    export_onnx(quiet, tmp_path / "empty.onnx")
    img = _images(size)[0]
    assert len(quiet.predict([img])[0]) == 0
    got = OnnxDetector(tmp_path / "empty.onnx").predict([img])[0]
    assert got.boxes.shape == (0, 4) and got.scores.shape == (0,) and got.labels.shape == (0,)


def test_static_export_takes_its_size_only_and_image_size_changes_the_resize(tmp_path):
    det = _sharpen(tiny_detector("retinanet", image_size=64).eval(), bias=2.0)
    rep = export_onnx(det, tmp_path / "s.onnx", image_size=96, dynamic=False)
    assert rep.input_shape == [3, 96, 96] and rep.image_size == 96
    o = OnnxDetector(tmp_path / "s.onnx")
    img = torch.rand(3, 96, 96, generator=torch.Generator().manual_seed(0))
    ref = det.model.transform.min_size
    det.model.transform.min_size, det.model.transform.max_size = (96,), 96  # PyTorch at 96 px
    _assert_same(det.predict([img])[0], o.predict([img])[0])
    det.model.transform.min_size, det.model.transform.max_size = ref, 64
    with pytest.raises(MinedetError, match=r"s\.onnx.*\[3, 96, 96\] only.*--no-dynamic.*\[3, 64, 64\]"):
        o.predict([torch.rand(3, 64, 64)])


def test_metadata_round_trips(tmp_path):
    det = tiny_detector("faster_rcnn", class_names=["cat", "dog", "émeu"])
    export_onnx(det, tmp_path / "m.onnx", dynamic=True)
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["class_names"]) == ["cat", "dog", "émeu"]
    assert props["minedet_version"] == __version__ and props["minedet_format"] == "minedet-onnx"
    o = OnnxDetector(tmp_path / "m.onnx")
    assert o.spec == det.spec and o.class_names == ["cat", "dog", "émeu"] and o.kind == "faster_rcnn"
    assert o.input_shape == [3, "height", "width"] and o.score_thresh == det.spec.score_thresh


def _model_pt(tmp_path, class_names, **spec_kw):
    spec = DetectorSpec(name="retinanet", num_classes=len(class_names), class_names=class_names, image_size=64,
                        levels="p3p5", fpn_channels=32, anchor_scale=2.0, **spec_kw)
    det = _sharpen(build_detector(spec, pretrained=False).eval(), bias=2.0)
    export_model(tmp_path / "model.pt", det)
    return tmp_path / "model.pt"


def _as_target(results: list[dict]):
    """COCO results of one image -> Target (boxes xyxy, labels = category id - 1, scores)."""
    from minedet.structures import Target

    xywh = torch.tensor([r["bbox"] for r in results], dtype=torch.float32).reshape(-1, 4)
    return Target(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1),
                  torch.tensor([r["category_id"] - 1 for r in results], dtype=torch.int64),
                  torch.tensor([r["score"] for r in results], dtype=torch.float32))


def _results(path):
    res = json.loads(path.read_text())
    return res, {im["id"]: [r for r in res["results"] if r["image_id"] == im["id"]] for im in res["images"]}


def test_cli_export_then_predict_and_eval_match_the_pt_model(tiny_digits, tmp_path, capsys):
    from minedet.data.coco import load_coco

    names = load_coco(tiny_digits.val_json).class_names
    model = _model_pt(tmp_path, names)
    assert main(["export", str(model), "--format", "onnx", "--out", str(tmp_path / "m.onnx")]) == 0  # 64 x 64 images
    assert "ONNX Runtime = PyTorch" in capsys.readouterr().out
    val = str(tiny_digits.image_root / "val")
    for m, out in ((model, "pt"), (tmp_path / "m.onnx", "onnx")):
        assert main(["predict", str(m), val, "--out", str(tmp_path / out), "--no-render", "--score", "0.1"]) == 0
    pt, pt_by = _results(tmp_path / "pt" / "detections.json")
    ox, ox_by = _results(tmp_path / "onnx" / "detections.json")
    assert pt["images"] == ox["images"] and pt["categories"] == ox["categories"] and len(pt["images"]) == 6
    assert len(pt["results"]) > 0
    for i, rs in pt_by.items():
        ref, got = (_as_target(r) for r in (rs, ox_by[i]))
        _assert_same(ref, got)
    reps = []
    for m in (model, tmp_path / "m.onnx"):
        assert main(["eval", str(m), str(tiny_digits.val_json), "--images", str(tiny_digits.image_root),
                     "--out", str(tmp_path / "ev.json")]) == 0
        reps.append(json.loads((tmp_path / "ev.json").read_text()))
    assert reps[0]["ap"] == pytest.approx(reps[1]["ap"], abs=1e-3)


def _one_line_exit_2(capsys, argv, *needles):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    for n in needles:
        assert n in err, err
    return err


def test_bad_inputs_are_one_line_exit_2_and_write_nothing(tmp_path, capsys):
    model = _model_pt(tmp_path, [str(i) for i in range(3)])
    out = tmp_path / "out" / "m.onnx"
    _one_line_exit_2(capsys, ["export", str(model), "--format", "tflite", "--out", str(out)], "model.pt",
                     "unknown export format 'tflite'", "onnx")
    _one_line_exit_2(capsys, ["export", str(tmp_path / "nope.pt"), "--out", str(out)], "nope.pt", "not found")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    _one_line_exit_2(capsys, ["export", str(junk), "--out", str(out)], "junk.pt", "not a readable minedet checkpoint")
    other = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, other)
    _one_line_exit_2(capsys, ["export", str(other), "--out", str(out)], "other.pt", "not an exported minedet model")
    for size in ("8", "0", "100000", "big"):
        _one_line_exit_2(capsys, ["export", str(model), "--out", str(out), "--image-size", size], "--image-size")
    assert not out.exists() and not list((tmp_path / "out").glob("*")) if (tmp_path / "out").exists() else True
    # an existing file is left as it was when an export fails
    out.parent.mkdir(exist_ok=True)
    out.write_bytes(b"old")
    _one_line_exit_2(capsys, ["export", str(junk), "--out", str(out)], "junk.pt")
    assert out.read_bytes() == b"old" and sorted(p.name for p in out.parent.iterdir()) == ["m.onnx"]
    # predict: an .onnx file that is not one of ours, and an image a static model cannot take
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"\x08\x07garbage")
    _one_line_exit_2(capsys, ["predict", str(fake), str(tmp_path), "--out", str(tmp_path / "p")], "fake.onnx", "ONNX")
    assert main(["export", str(model), "--out", str(tmp_path / "s.onnx"), "--no-dynamic"]) == 0  # [3, 64, 64] only
    capsys.readouterr()
    from PIL import Image

    Image.new("RGB", (80, 48)).save(tmp_path / "wide.png")
    _one_line_exit_2(capsys, ["predict", str(tmp_path / "s.onnx"), str(tmp_path / "wide.png"), "--out",
                              str(tmp_path / "p")], "s.onnx", "[3, 64, 64] only", "[3, 48, 80]")
    assert not (tmp_path / "p" / "detections.json").exists()


def _predict_in_subprocess(argv: list[str]):
    """``minedet predict`` in a fresh interpreter; returns (exit status, stderr, whether torch was imported)."""
    import subprocess
    import sys

    code = ("import sys; from minedet.cli import main; rc = main(sys.argv[1:]); "
            "print('TORCH', 'torch' in sys.modules); sys.exit(rc)")
    r = subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=300)
    return r.returncode, r.stderr, "TORCH True" in r.stdout


def test_default_export_is_dynamic_and_predict_onnx_never_imports_torch(tmp_path, capsys):
    from PIL import Image

    model = _model_pt(tmp_path, ["a", "b", "c"])
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0  # no flag: dynamic
    assert "float32[3xheightxwidth]" in capsys.readouterr().out
    g = torch.Generator().manual_seed(0)
    for name, (h, w) in {"wide.png": (48, 80), "tall.png": (131, 64), "small.png": (40, 33)}.items():
        arr = (torch.rand(h, w, 3, generator=g) * 255).to(torch.uint8).numpy()
        Image.fromarray(arr).save(tmp_path / name)
    rc, err, torch_imported = _predict_in_subprocess(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "wide.png"),
                                                      str(tmp_path / "tall.png"), str(tmp_path / "small.png"),
                                                      "--out", str(tmp_path / "p"), "--device", "cpu"])
    assert rc == 0, err
    assert not torch_imported, "predict on an .onnx must run on ONNX Runtime and numpy alone"
    res = json.loads((tmp_path / "p" / "detections.json").read_text())
    assert [(im["height"], im["width"]) for im in res["images"]] == [(48, 80), (131, 64), (40, 33)]
    assert len(res["results"]) > 0 and sorted(p.name for p in (tmp_path / "p").iterdir()) == [
        "detections.json", "small.png", "tall.png", "wide.png"]
    # the same detections as the model.pt on one of them (score 0.05 both)
    assert main(["predict", str(model), str(tmp_path / "wide.png"), "--out", str(tmp_path / "pt"), "--no-render"]) == 0
    ref = _as_target(_results(tmp_path / "pt" / "detections.json")[1][1])
    got = _as_target(_results(tmp_path / "p" / "detections.json")[1][1])
    _assert_same(ref, got)


def test_graph_score_threshold_is_the_default_of_predict(tmp_path, capsys):
    from PIL import Image

    model = _model_pt(tmp_path, ["a", "b", "c"], score_thresh=0.3)
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    Image.new("RGB", (70, 50), (120, 30, 200)).save(tmp_path / "x.png")
    capsys.readouterr()
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "--out", str(tmp_path / "p"), "--no-render"]) == 0
    scores = [r["score"] for r in json.loads((tmp_path / "p" / "detections.json").read_text())["results"]]
    assert scores and min(scores) > 0.3
    assert main(["predict", str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "--out", str(tmp_path / "q"), "--score", "0.5",
                 "--no-render"]) == 0
    assert all(r["score"] > 0.5 for r in json.loads((tmp_path / "q" / "detections.json").read_text())["results"])
    _one_line_exit_2(capsys, ["predict", str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "--out", str(tmp_path / "r"),
                              "--score", "0.1"], "m.onnx", "drops detections scoring <= 0.3", "leave --score out")
    assert not (tmp_path / "r").exists()


def test_device_cuda_asks_onnx_runtime_for_cuda_or_says_why_not(tmp_path, capsys, monkeypatch):
    import onnxruntime as ort
    from PIL import Image

    model = _model_pt(tmp_path, ["a", "b", "c"])
    assert main(["export", str(model), "--out", str(tmp_path / "m.onnx")]) == 0
    Image.new("RGB", (64, 64)).save(tmp_path / "x.png")
    capsys.readouterr()
    argv = ["predict", str(tmp_path / "m.onnx"), str(tmp_path / "x.png"), "--out", str(tmp_path / "p"), "--device", "cuda"]
    if "CUDAExecutionProvider" in ort.get_available_providers():  # a GPU build: it runs there
        assert main(argv) == 0
        return
    _one_line_exit_2(capsys, argv, "m.onnx", "--device cuda", "no CUDAExecutionProvider", "onnxruntime-gpu")
    asked = []
    real = ort.InferenceSession

    def session(*a, providers=None, **kw):
        asked.append(list(providers))
        return real(*a, providers=[p for p in providers if p in ort.get_available_providers()] or None, **kw)

    # a build that lists CUDA but cannot start it (no GPU here): CUDA is requested first, then refused in one line
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    monkeypatch.setattr(ort, "InferenceSession", session)
    _one_line_exit_2(capsys, argv, "could not start its CUDAExecutionProvider", "--device cpu")
    assert asked == [["CUDAExecutionProvider", "CPUExecutionProvider"]]
    assert not (tmp_path / "p").exists()


def test_a_batch_is_refused_in_one_line(tmp_path):
    from minedet.onnx_runtime import OnnxModel

    export_onnx(tiny_detector("retinanet", image_size=64).eval(), tmp_path / "m.onnx")
    m = OnnxModel(tmp_path / "m.onnx")
    with pytest.raises(MinedetError, match=r"m\.onnx: the model takes one image \[3, H, W\] per run.*\[2, 3, 64, 64\]"):
        m.run(torch.rand(2, 3, 64, 64).numpy())
    assert OnnxModel(tmp_path / "m.onnx").run(torch.rand(3, 64, 64).numpy())[0].shape[1] == 4
