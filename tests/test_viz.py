"""Box renders, grids, plots and atomic PNG writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from minedet.viz import BoxGroup, draw_boxes, grid, plot_bars, plot_confusion, plot_curves, plot_pr, save_png, to_pil

GREEN = (0, 255, 0)
RED = (255, 0, 0)


def test_draw_boxes_upscales_and_draws_on_box_edges() -> None:
    img = np.zeros((32, 48, 3), dtype=np.uint8)  # short side 32 -> factor 8 -> 384 x 256
    box = [4.0, 6.0, 20.0, 26.0]
    out = draw_boxes(img, [BoxGroup(np.array([box]), ["3"], [0.92], GREEN, width=1)])
    assert out.size == (48 * 8, 32 * 8)
    a = np.asarray(out)
    x1, y1, x2, y2 = (int(v * 8) for v in box)
    # Left, right and bottom edges fully in the box colour; corners too.
    assert (a[y1 + 1 : y2 - 1, x1] == GREEN).all()
    assert (a[y1 + 1 : y2 - 1, x2 - 1] == GREEN).all()
    assert (a[y2 - 1, x1:x2] == GREEN).all()
    assert (a[y1, x1] == GREEN).all()
    # The inside and the far background stay black.
    assert (a[y1 + 20 : y2 - 20, x1 + 20 : x2 - 20] == 0).all()
    assert (a[:, x2 + 10 :] == 0).all()
    # The label strip above the box holds (anti-aliased) text pixels in the box colour.
    strip = a[max(0, y1 - 16) : y1, x1 : x1 + 60].astype(int)
    assert ((strip[..., 1] > 128) & (strip[..., 0] == 0) & (strip[..., 2] == 0)).any()
    # The input is untouched.
    assert (img == 0).all()


def test_draw_boxes_zero_boxes_and_large_image_not_upscaled() -> None:
    t = torch.full((3, 300, 400), 0.5)
    out = draw_boxes(t, [BoxGroup(np.zeros((0, 4)), [], [], RED), BoxGroup(torch.zeros((0, 4)), color=GREEN)])
    assert out.size == (400, 300)
    a = np.asarray(out)
    assert (a == 128).all()  # no drawing at all


def test_draw_boxes_two_groups_torch_input_and_pil_input() -> None:
    t = torch.zeros((3, 64, 64))
    gt = BoxGroup(torch.tensor([[2.0, 2.0, 30.0, 30.0]]), color=GREEN, width=2)
    pred = BoxGroup(torch.tensor([[34.0, 34.0, 60.0, 60.0]]), labels=None, scores=torch.tensor([0.5]), color=RED)
    out = draw_boxes(t, [gt, pred])
    assert out.size == (256, 256)  # factor 4
    a = np.asarray(out)
    assert (a[100, 8] == GREEN).all() and (a[100, 9] == GREEN).all()  # width 2
    assert (a[200, 34 * 4] == RED).all()
    pil = Image.new("L", (300, 260), color=10)
    out2 = draw_boxes(pil, [gt])
    assert out2.mode == "RGB" and out2.size == (300, 260)
    assert pil.getpixel((2, 10)) == 10  # input PIL image not drawn on


def test_draw_boxes_rejects_mismatched_labels() -> None:
    with pytest.raises(ValueError):
        draw_boxes(np.zeros((8, 8, 3), np.uint8), [BoxGroup(np.array([[0, 0, 4, 4]]), ["a", "b"])])


def test_to_pil_formats() -> None:
    assert to_pil(np.zeros((5, 7), np.uint8)).size == (7, 5)
    assert np.asarray(to_pil(torch.ones((1, 4, 6)))).max() == 255
    assert np.asarray(to_pil(np.full((3, 3, 3), 0.5))).max() == 128


def test_save_png_atomic(tmp_path: Path) -> None:
    img = Image.new("RGB", (10, 12), (1, 2, 3))
    path = tmp_path / "sub" / "x.png"
    save_png(img, path)
    assert os.listdir(path.parent) == ["x.png"]  # no temp files left behind
    with Image.open(path) as back:
        assert back.size == (10, 12) and back.getpixel((0, 0)) == (1, 2, 3)


def test_grid_tiles_images() -> None:
    ims = [Image.new("RGB", (10, 20), c) for c in (RED, GREEN, (0, 0, 255))]
    g = grid(ims, ncols=2, pad=1)
    assert g.size == (2 * 10 + 3, 2 * 20 + 3)
    assert g.getpixel((1, 1)) == RED
    assert g.getpixel((12, 1)) == GREEN
    assert g.getpixel((1, 22)) == (0, 0, 255)
    assert g.getpixel((12, 22)) == (255, 255, 255)  # empty cell
    with pytest.raises(ValueError):
        grid([], ncols=2)


def test_plots_write_png(tmp_path: Path) -> None:
    curves = tmp_path / "pr.png"
    plot_curves(
        {"co-mining": ([0.0, 0.5, 1.0], [1.0, 0.8, 0.3]), "baseline": ([0.0, 1.0], [0.9, 0.1])},
        curves,
        xlabel="recall",
        ylabel="precision",
        title="PR",
    )
    bars = tmp_path / "ap.png"
    plot_bars({"cat": 0.5, "dog": float("nan"), "bird": 0.25}, bars, ylabel="AP", title="per class")
    for p in (curves, bars):
        assert p.stat().st_size > 1000
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 100
    assert sorted(os.listdir(tmp_path)) == ["ap.png", "pr.png"]
    with pytest.raises(ValueError):
        plot_curves({"bad": ([0, 1], [1])}, tmp_path / "bad.png", xlabel="x", ylabel="y", title="t")
    assert not (tmp_path / "bad.png").exists()


def test_plot_pr_draws_few_classes_in_colour_and_many_in_grey(tmp_path: Path) -> None:
    few, many = tmp_path / "few.png", tmp_path / "many.png"
    plot_pr({"cat": [1.0] * 51 + [0.0] * 50, "dog": [0.5] * 101}, few, title="PR")
    plot_pr({f"c{k}": [1.0 - k / 40] * 101 for k in range(30)}, many, title="PR")
    plot_pr({}, tmp_path / "none.png", title="no ground truth")  # an empty val split still gets its figure

    def colours(path: Path) -> int:
        with Image.open(path) as im:
            assert im.format == "PNG"
            rgb = im.convert("RGB")
        return sum(1 for _, (r, g, b) in rgb.getcolors(1 << 20) if max(r, g, b) - min(r, g, b) > 60)

    assert colours(few) > 0 and colours(many) == 0  # thirty classes: grey lines and a black mean, no legend colours


def test_plot_confusion_writes_png_for_few_and_many_classes(tmp_path: Path) -> None:
    plot_confusion([[3, 1, 0], [0, 0, 2], [1, 0, 0]], ["cat", "dog"], tmp_path / "few.png", title="c")
    many = np.eye(41, dtype=int).tolist()
    plot_confusion(many, [f"c{k}" for k in range(40)], tmp_path / "many.png", title="c")
    for name in ("few.png", "many.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and im.width > 300
    with pytest.raises(ValueError):
        plot_confusion([[1, 0], [0, 1]], ["cat", "dog"], tmp_path / "bad.png", title="c")  # 2 x 2 for 2 classes
    assert not (tmp_path / "bad.png").exists()

