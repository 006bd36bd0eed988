"""Mixed supervision: complete, sparse and unlabelled images in one run (method ``mixed``), the
``"labels"`` image flag, the mixed split, the streams cut from one file, batch ratios, end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from minedet.registry import build_method
from minedet.data.coco import load_coco, save_coco, validate_coco
from minedet.data.datasets import StreamBatch, View
from minedet.data.mixed import image_kinds, kind_counts, split_mixed
from minedet.data.transforms import BoxMap
from minedet.errors import MinedetError
from minedet.methods.mixed import Mixed, MixedOptions
from minedet.structures import Target
from tests.helpers import tiny_detector

SIZE = 64
LABELLED = Target(torch.tensor([[4.0, 4.0, 24.0, 30.0]]), torch.tensor([1]))  # the sparse image's one labelled box


def _views(targets, seed):
    g = torch.Generator().manual_seed(seed)
    m = BoxMap(size=(SIZE, SIZE))
    weak = [View(torch.rand(3, SIZE, SIZE, generator=g), t, m) for t in targets]
    return weak, [View((v.image * 0.8).clamp(0, 1), v.target, m) for v in weak]


def _batch(streams=("labelled", "sparse", "unlabelled")):
    out = {}
    if "labelled" in streams:
        w, s = _views([Target(torch.tensor([[30.0, 30.0, 50.0, 60.0]]), torch.tensor([0]), image_id=1)], 0)
        out["labelled"] = StreamBatch([1], [(SIZE, SIZE)], {"weak": w, "strong": s})
    if "sparse" in streams:
        w, s = _views([Target(LABELLED.boxes, LABELLED.labels, image_id=2)], 1)
        out["sparse"] = StreamBatch([2], [(SIZE, SIZE)], {"weak": w, "strong": s})
    if "unlabelled" in streams:
        w, s = _views([Target.empty(3)], 2)
        out["unlabelled"] = StreamBatch([3], [(SIZE, SIZE)], {"weak": w, "strong": s})
    return out


def _fake_teacher(m, dets: Target) -> list[int]:
    """Every image the teacher is asked about gets ``dets``; returns the batch sizes it saw."""
    seen = []

    def predict(images, **kw):
        seen.append(len(images))
        return [dets for _ in images]

    m.teacher.predict = predict
    return seen


def _mixed(**kw) -> Mixed:
    return Mixed(tiny_detector("retinanet", seed=0).train(), MixedOptions(burn_in=0, tau=0.7, **kw))


# the teacher's detections on every image: a copy of the labelled box (other class), a box holding it
# whole (IoU < 0.4), a confident new object, an uncertain one and a low one
DETS = Target(torch.tensor([[5.0, 4.0, 25.0, 31.0], [0.0, 0.0, 40.0, 46.0], [40.0, 8.0, 60.0, 30.0],
                            [30.0, 40.0, 50.0, 62.0], [44.0, 44.0, 60.0, 60.0]]),
              torch.tensor([2, 0, 1, 2, 0]), torch.tensor([0.95, 0.9, 0.85, 0.5, 0.1]))


def test_sparse_images_keep_their_labels_and_gain_only_what_no_label_explains():
    m = _mixed()
    seen = _fake_teacher(m, DETS)
    losses = m(_batch())
    assert seen == [2], "the teacher labels the sparse and the unlabelled image, never the complete one"
    (sparse_t,), (unl_t,) = m.last_step.taught["sparse"], m.last_step.taught["unsup"]
    assert torch.equal(sparse_t.boxes[:1], LABELLED.boxes) and sparse_t.labels[0] == 1
    assert not sparse_t.flag("pseudo")[0] and sparse_t.flag("weight")[0] == 1.0, "the labelled box stays a true target"
    # the copy (IoU > 0.4, another class) and the enclosing box are dropped; the new object is a
    # pseudo-label, the 0.5 one ignored, the 0.1 one background
    assert sparse_t.boxes[1:].tolist() == DETS.boxes[2:4].tolist()
    assert sparse_t.flag("pseudo")[1:].tolist() == [True, True] and sparse_t.flag("weight")[1:].tolist() == [1.0, 0.0]
    # on the unlabelled image nothing is labelled, so every confident box is a pseudo-label
    assert len(m.last_step.labels().confident[1]) == 3 and len(unl_t) == 4
    assert {k.split("/")[0] for k in losses} == {"sup", "sparse", "unsup"}


def test_a_box_a_reviewer_rejected_is_never_a_pseudo_label():
    m = _mixed()
    rejected = Target(DETS.boxes[2:3], torch.tensor([1]), image_id=2)
    ds = SimpleNamespace(data=SimpleNamespace(rejected_by_image={2: [object()]}), hidden=None,
                         rejected_target=lambda i: rejected if i == 2 else Target.empty(i))
    m.bind({"sparse": ds})
    _fake_teacher(m, DETS)
    m(_batch(("sparse", "unlabelled")))
    (sparse_t,), (unl_t,) = m.last_step.taught["sparse"], m.last_step.taught["unsup"]
    assert DETS.boxes[2].tolist() not in sparse_t.boxes.tolist(), "rejected on the sparse image: background"
    assert DETS.boxes[2].tolist() in unl_t.boxes.tolist(), "the unlabelled image has no rejected box"


@pytest.mark.parametrize("name", ["fcos", "faster_rcnn"])
def test_the_other_detectors_train_on_all_three_streams(name):
    m = Mixed(tiny_detector(name, seed=0).train(), MixedOptions(burn_in=0, tau=0.7))
    _fake_teacher(m, DETS)
    losses = m(_batch())
    assert {k.split("/")[0] for k in losses} == {"sup", "sparse", "unsup"}
    sum(losses.values()).backward()
    assert len(m.last_step.taught["sparse"][0]) == 3, "labelled box + pseudo-label + ignored box"


def test_options_turn_the_overlap_rules_and_the_band_off():
    m = _mixed(contain=None, ignore_below=None)
    _fake_teacher(m, DETS)
    m(_batch(("sparse",)))
    sparse_t, = m.last_step.taught["sparse"]
    assert sparse_t.boxes[1:].tolist() == DETS.boxes[1:3].tolist(), "without contain the enclosing box is mined"
    with pytest.raises(MinedetError, match="iou_gt"):
        build_method({"name": "mixed", "iou_gt": 2.0}, tiny_detector("retinanet"))
    with pytest.raises(MinedetError, match="contain"):
        build_method({"name": "mixed", "contain": 0.0}, tiny_detector("retinanet"))


def test_burn_in_trains_on_labelled_and_sparse_boxes_and_streams_are_optional():
    m = Mixed(tiny_detector("retinanet", seed=0).train(), MixedOptions(burn_in=5, sparse_burn_in=True))
    seen = _fake_teacher(m, DETS)
    losses = m(_batch())
    assert seen == [] and {k.split("/")[0] for k in losses} == {"sup", "sparse"}
    only_sparse = _mixed()
    _fake_teacher(only_sparse, DETS)
    assert {k.split("/")[0] for k in only_sparse(_batch(("sparse",)))} == {"sparse"}
    with pytest.raises(MinedetError, match="needs labelled images"):
        _mixed().bind({"unlabelled": object()})
    complete_only = Mixed(tiny_detector("retinanet", seed=0).train(), MixedOptions(burn_in=5, sparse_burn_in=False))
    _fake_teacher(complete_only, DETS)
    assert {k.split("/")[0] for k in complete_only(_batch())} == {"sup"}, "sparse images wait for the teacher"
    sparse_only = Mixed(tiny_detector("retinanet", seed=0).train(), MixedOptions(burn_in=5, sparse_burn_in=False))
    _fake_teacher(sparse_only, DETS)
    assert {k.split("/")[0] for k in sparse_only(_batch(("sparse",)))} == {"sparse"}, \
        "without complete images burn-in has only the sparse ones"


def test_lambda_sparse_weights_the_sparse_loss():
    a, b = _mixed(), _mixed(lambda_sparse=0.5)
    for m in (a, b):
        _fake_teacher(m, DETS)
    la, lb = a(_batch()), b(_batch())
    assert torch.allclose(lb["sparse/classification"], 0.5 * la["sparse/classification"])
    assert torch.allclose(lb["unsup/classification"], la["unsup/classification"])


def test_quality_is_measured_per_stream_against_its_hidden_truth():
    m = _mixed()
    hidden = {"sparse": Target(DETS.boxes[2:3], torch.tensor([1])), "unlabelled": Target(DETS.boxes[:1], torch.tensor([2]))}
    m.bind({s: SimpleNamespace(hidden=object(), hidden_target=lambda i, t=t: t) for s, t in hidden.items()})
    _fake_teacher(m, DETS)
    m(_batch(("sparse", "unlabelled")))
    m.after_step(1)
    met = m.log_metrics()
    # sparse: 1 pseudo-label, right; unlabelled: 3 pseudo-labels, 1 right
    assert met["quality/precision"] == 0.5 and met["quality/recall"] == 1.0


# --------------------------------------------------------------------------------------------- data
def _coco(n_images=20, boxes=3):
    images = [{"id": i, "file_name": f"{i}.png", "width": 64, "height": 64} for i in range(1, n_images + 1)]
    anns = [{"id": 100 * i + k, "image_id": i, "category_id": 1 + k % 2, "bbox": [4.0 + 15 * k, 4.0, 10.0, 10.0]}
            for i in range(1, n_images + 1) for k in range(boxes)]
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}


def test_split_mixed_flags_every_image_and_hides_exactly_the_erased_boxes():
    d = _coco()
    res = split_mixed(d, 10, 30, "hard", seed=3)
    data = validate_coco(res.mixed, file="mixed.json")
    kinds = image_kinds(data)
    assert sorted(kinds.values()).count("complete") == 2 and list(kinds.values()).count("sparse") == 6
    counts = kind_counts(data)
    assert counts["complete"]["boxes"] == 6 and counts["sparse"]["boxes"] == 6 * 2 and counts["none"]["boxes"] == 0
    hidden_ids = {a["id"] for a in res.hidden["annotations"]}
    kept_ids = {a["id"] for a in res.mixed["annotations"]}
    assert not hidden_ids & kept_ids and hidden_ids | kept_ids == {a["id"] for a in d["annotations"]}
    assert split_mixed(d, 10, 30, "hard", seed=3).mixed == res.mixed, "seeded"
    assert split_mixed(d, 10, 30, "hard", seed=4).mixed != res.mixed
    with pytest.raises(MinedetError, match="more than 100"):
        split_mixed(d, 80, 30, "hard", seed=0)


def test_the_labels_flag_is_validated_in_one_line():
    d = _coco(2)
    d["images"][0]["labels"] = "partial"
    with pytest.raises(MinedetError, match=r'image id=1.*"labels" must be one of complete, sparse, none'):
        validate_coco(d, file="x.json")
    d["images"][0]["labels"] = "none"
    with pytest.raises(MinedetError, match=r'image id=1.*flagged "labels": "none" but annotation id=100'):
        validate_coco(d, file="x.json")


def test_streams_are_cut_from_one_flagged_file_by_kind(tiny_digits, tmp_path):
    from minedet.run import stream_data
    from tests.conftest import tiny_config

    res = split_mixed(load_coco(tiny_digits.train_json).raw, 25, 50, "hard", seed=0)
    save_coco(tmp_path / "mixed.json", res.mixed)
    kinds = {im["id"]: im["labels"] for im in res.mixed["images"]}
    cfg = tiny_config(tiny_digits, tmp_path / "run", data__train=str(tmp_path / "mixed.json"))
    parts = stream_data(cfg, ["labelled", "sparse", "unlabelled"])
    for stream, kind in (("labelled", "complete"), ("sparse", "sparse"), ("unlabelled", "none")):
        assert {im["id"] for im in parts[stream][0].images} == {i for i, k in kinds.items() if k == kind}
    # a method that reads one labelled stream trains on every labelled image, complete and sparse
    one = stream_data(cfg, ["labelled"])
    assert {im["id"] for im in one["labelled"][0].images} == {i for i, k in kinds.items() if k != "none"}


def test_mixed_end_to_end_with_ratio_hidden_truth_and_stats(tiny_digits, tmp_path):
    from minedet.run import batch_stream, build_run, run_training
    from tests.conftest import tiny_config

    over = dict(data__mixed={"percent": 25, "sparse": 50, "mode": "hard", "seed": 0}, data__cache_dir=str(tmp_path / "cache"),
                data__batch_size=1, data__sparse_batch_size=2, data__unlabelled_batch_size=3,
                method__name="mixed", method__burn_in=2, method__tau=0.05, method__ignore_below=0.01)
    run = build_run(tiny_config(tiny_digits, tmp_path / "r", **over), quiet=True)
    batch = next(batch_stream(run)(0))
    assert {s: len(b) for s, b in batch.items()} == {"labelled": 1, "sparse": 2, "unlabelled": 3}
    assert run.datasets["sparse"].hidden is not None and run.datasets["labelled"].hidden is None
    result = run_training(tiny_config(tiny_digits, tmp_path / "m", train__max_steps=4, train__ckpt_every=0, **over), quiet=True)
    assert list(result["reports"]) == ["teacher", "student"]
    rows = [json.loads(x) for x in (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()]
    train = {r["step"]: r for r in rows if r["kind"] == "train"}
    assert {"sparse/classification", "unsup/classification"}.isdisjoint(train[1]), "burn-in: the complete images only"
    assert {"sparse/classification", "unsup/classification"} <= set(train[4]) and train[4]["quality/n_hidden"] > 0
    mixed_json = next((tmp_path / "cache" / "mixed").glob("*/mixed.json"))
    out = subprocess.run([sys.executable, "-m", "minedet", "data", "stats", str(mixed_json)], capture_output=True, text=True)
    assert out.returncode == 0 and "labels:" in out.stdout and "3 complete" in out.stdout


def test_split_semi_cli_writes_a_mixed_file(tiny_digits, tmp_path):
    src = tmp_path / "train.json"
    src.write_text(tiny_digits.train_json.read_text())
    out = subprocess.run([sys.executable, "-m", "minedet", "data", "split-semi", str(src), "--percent", "25",
                          "--sparse", "50", "--mode", "hard", "--seed", "0"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    mixed = load_coco(tmp_path / "train.mixed25c50s-hard.seed0.json")
    hidden = load_coco(tmp_path / "train.mixed25c50s-hard.seed0.hidden.json")
    assert kind_counts(mixed)["sparse"]["images"] == 6 and len(hidden.images) == len(mixed.images)
    bad = subprocess.run([sys.executable, "-m", "minedet", "data", "split-semi", str(src), "--percent", "25",
                          "--sparse", "50", "--seed", "0"], capture_output=True, text=True)
    assert bad.returncode == 2 and "--mode" in bad.stderr and "Traceback" not in bad.stderr


def test_the_digits_mixed_preset_names_valid_options():
    from minedet.registry import METHODS
    from minedet.config import load_config, preset_path
    from minedet.options import from_dict

    cfg = load_config(preset_path("digits_mixed"), [])
    cls, opts_cls = METHODS[cfg.method["name"]]
    opts = from_dict(opts_cls, {k: v for k, v in cfg.method.items() if k != "name"}, where="method")
    assert cls is Mixed and opts.ignore_below == 0.3 and cfg.data.mixed["sparse"] == 30


def test_sparsify_images_writes_a_mixed_file_of_complete_and_sparse_images(tiny_digits, tmp_path):
    out = tmp_path / "mixed.json"
    proc = subprocess.run([sys.executable, "-m", "minedet", "data", "sparsify", str(tiny_digits.train_json), str(out),
                           "--mode", "extreme", "--seed", "1", "--images", "50"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    mixed, hidden = load_coco(out), load_coco(tmp_path / "mixed.hidden.json")
    counts = kind_counts(mixed)
    assert counts["sparse"]["images"] == 6 and counts["complete"]["images"] == 6 and counts["none"]["images"] == 0
    sparse_ids = {i for i, k in image_kinds(mixed).items() if k == "sparse"}
    assert all(len(mixed.anns_by_image.get(i, [])) <= 1 for i in sparse_ids), "extreme keeps one box per image"
    assert {a["image_id"] for a in hidden.annotations} <= sparse_ids
    assert json.loads((tmp_path / "mixed.manifest.json").read_text())["command"].endswith("--images 50")


def test_an_unflagged_file_is_complete_unless_data_unflagged_says_sparse(tiny_digits, tmp_path):
    from minedet.run import build_run, stream_data
    from tests.conftest import tiny_config

    every = {im["id"] for im in load_coco(tiny_digits.train_json).images}
    cfg = tiny_config(tiny_digits, tmp_path / "run")
    assert {s: {im["id"] for im in d.images} for s, (d, _) in stream_data(cfg, ["labelled", "sparse"]).items()} \
        == {"labelled": every}
    cfg.data.unflagged = "sparse"
    assert {s: {im["id"] for im in d.images} for s, (d, _) in stream_data(cfg, ["labelled", "sparse"]).items()} \
        == {"sparse": every}
    # a method with one labelled stream trains on sparse images as labelled ones
    assert {im["id"] for im in stream_data(cfg, ["labelled"])["labelled"][0].images} == every
    # a flagged file follows its flags: an unflagged image there is complete, whatever data.unflagged says
    res = split_mixed(load_coco(tiny_digits.train_json).raw, 25, 50, "hard", seed=0)
    for im in res.mixed["images"]:
        if im["labels"] == "complete":
            del im["labels"]
    save_coco(tmp_path / "mixed.json", res.mixed)
    cfg.data.train = str(tmp_path / "mixed.json")
    parts = stream_data(cfg, ["labelled", "sparse", "unlabelled"])
    assert {im["id"] for im in parts["labelled"][0].images} == {im["id"] for im in res.mixed["images"] if "labels" not in im}
    cfg.data.unflagged = "maybe"
    with pytest.raises(MinedetError, match="data.unflagged must be 'complete' or 'sparse', not 'maybe'"):
        stream_data(cfg, ["labelled"])
    # the mixed method on complete images alone is refused in one line that names the switch
    with pytest.raises(MinedetError, match="data.unflagged=sparse"):
        build_run(tiny_config(tiny_digits, tmp_path / "m", method__name="mixed"), quiet=True)
