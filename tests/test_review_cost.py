"""bench_review_cost.py's pieces on hand-built inputs (no training): the conversion to cleanlab's object-detection
format, the ranked recall of a review list, and the page's table of the records."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from minedet.structures import Target

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from bench_review_cost import cleanlab_flat, curve, ranked_recall, to_cleanlab  # noqa: E402


def _preds():
    return [{"boxes": [[0, 0, 10, 10], [20, 20, 30, 30], [5, 5, 8, 8]], "scores": [0.9, 0.8, 0.4], "labels": [1, 0, 1]},
            {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}]


def _targets():
    return [{"boxes": [[40, 40, 50, 50]], "labels": [2], "image_name": "a.png"},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]


def test_to_cleanlab_splits_predictions_by_class_with_the_score_last():
    labels, preds = to_cleanlab(_preds(), _targets(), num_classes=3)
    assert labels[0]["bboxes"].dtype == np.float32 and labels[0]["bboxes"].tolist() == [[40, 40, 50, 50]]
    assert labels[0]["labels"].tolist() == [2] and labels[0]["image_name"] == "a.png"
    assert labels[1]["bboxes"].shape == (0, 4) and labels[1]["labels"].shape == (0,) and labels[1]["image_name"] == "1"
    assert [p.shape for p in preds[0]] == [(1, 5), (2, 5), (0, 5)]  # every class, empty ones too
    np.testing.assert_allclose(preds[0][1], [[0, 0, 10, 10, 0.9], [5, 5, 8, 8, 0.4]], rtol=1e-6)
    np.testing.assert_allclose(preds[0][0], [[20, 20, 30, 30, 0.8]], rtol=1e-6)
    assert [p.shape for p in preds[1]] == [(0, 5)] * 3
    boxes, ks, scores = cleanlab_flat(preds[0])  # cleanlab's own per-box order: class by class
    assert ks == [0, 1, 1] and boxes[0] == [20, 20, 30, 30] and scores == pytest.approx([0.8, 0.9, 0.4])


def test_cleanlab_accepts_the_format():
    rank = pytest.importorskip("cleanlab.object_detection.rank")
    labels, preds = to_cleanlab(_preds(), _targets(), num_classes=3)
    scores = rank.compute_overlooked_box_scores(labels=labels, predictions=preds, high_probability_threshold=0.5)
    assert [len(s) for s in scores] == [3, 0]
    # the two confident boxes off every label are overlooked candidates; the 0.4 one is under the threshold
    assert not np.isnan(scores[0][:2]).any() and np.isnan(scores[0][2])


def test_ranked_recall_counts_each_erased_box_once_in_review_order():
    truth = {1: Target(torch.tensor([[0., 0., 10., 10.], [20., 20., 30., 30.]]), torch.tensor([3, 4])),
             2: Target(torch.tensor([[0., 0., 10., 10.]]), torch.tensor([5]))}
    shown = [
        (1, [0, 0, 10, 10], 3),     # recovers 1's first box
        (1, [0, 0, 9, 10], 3),      # the same box again: a duplicate, nothing recovered
        (2, [0, 0, 10, 10], 6),     # the wrong class
        (1, [21, 21, 30, 30], 4),   # IoU 0.81: recovers 1's second box
        (2, [0, 0, 10, 4], 5),      # IoU 0.4 < 0.5
        (3, [0, 0, 10, 10], 5),     # an image without erased boxes
        (2, [0, 0, 10, 6], 5),      # IoU 0.6: recovers 2's box
    ]
    cum = ranked_recall(shown, truth)
    assert cum == [1, 1, 1, 2, 2, 2, 3]
    # the order matters: the duplicate shown first takes the box, the exact one then recovers nothing
    assert ranked_recall([shown[1], shown[0]], truth) == [1, 1]
    rows = curve(cum, n_hidden=3, budgets=[2, 4, 100, 4])
    assert [(r["budget"], r["shown"], r["tp"]) for r in rows] == [(2, 2, 1), (4, 4, 2), (100, 7, 3)]
    assert rows[1]["recall"] == pytest.approx(2 / 3) and rows[1]["precision"] == pytest.approx(0.5)
    assert curve([], 3, [5]) == [{"budget": 5, "shown": 0, "tp": 0, "recall": 0.0, "precision": None}]


def test_the_page_table_and_verdict_come_from_the_records():
    import report

    def rec(method, rows, **kw):
        return {"method": method, "seed": 0, "split": "hard", "what": "review_cost", "steps": 600, "threads": 1,
                "n_hidden": 10, "images": 4, "list_length": rows[-1][1], "model_ap50": 0.8,
                "curve": [{"budget": b, "shown": s, "tp": t, "recall": t / 10, "precision": t / s if s else None,
                           "at_score": a} for b, s, t, a in rows], **kw}

    origin = {"command": "python benchmarks/bench_review_cost.py", "date": "2025-01-01T00:00:00", "git_commit": "abc",
              "machine": {}}
    m = rec("minedet", [(2, 2, 2, None), (4, 4, 3, [0.5]), (6, 6, 4, [0.3])], proposed_score=0.5)
    c = rec("cleanlab_overlooked_p0.95", [(2, 2, 1, None), (4, 3, 1, [0.5]), (6, 3, 1, [0.3])], ranked_by="its score")
    res = {"name": "review_cost", "records": [{**r, "origin": origin} for r in (m, c)], **origin}
    text = "\n".join(report.section_review_cost(res))
    assert "| 4 | 0.5 (proposed) | 30.0 / 75.0 | 10.0 / 33.3 (list ends at 3) |" in text
    assert "does not rank better: it recalls more at 0 of 3" in text and "at 2 boxes shown" in text
    win = rec("cleanlab_overlooked_p0.3", [(2, 2, 2, None), (4, 4, 4, [0.5]), (6, 6, 5, [0.3])])
    res["records"].append({**win, "origin": origin})
    empty = rec("cleanlab_overlooked_p0.95", [(2, 0, 0, None), (4, 0, 0, [0.5]), (6, 0, 0, [0.3])],
                high_probability_threshold=0.95)
    res["records"][1] = {**empty, "origin": origin}
    assert "shows no box: none of the model's predictions qualifies as an overlooked box at its high-probability " \
           "threshold 0.95 (minedet's highest score marked above: 0.5)" in "\n".join(report.section_review_cost(res))
    assert "**cleanlab ranks better** (`cleanlab_overlooked_p0.3`)" in "\n".join(report.section_review_cost(res))
