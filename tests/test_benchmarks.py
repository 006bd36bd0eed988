"""Smoke tests of the benchmark scripts: every table the closing notes promise runs from one command.

Each script runs at a toy scale (a few training images, a few steps) into a temporary results
folder (MINEDET_BENCH_RESULTS), then report.py renders the page into a temporary docs folder
(MINEDET_BENCH_DOCS). The numbers are meaningless; what is checked is that every method of the
table trains, is recorded with the fields the report reads, and shows up on the page.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"


def _run(tmp_path: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path / "results"), "MINEDET_BENCH_DOCS": str(tmp_path / "docs"),
           "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _records(tmp_path: Path, name: str) -> list[dict]:
    return json.loads((tmp_path / "results" / f"{name}.json").read_text())["records"]


@pytest.mark.slow
def test_bench_semi_tables_run_and_render(tmp_path):
    tiny = ["--seeds", "0", "--steps", "4", "--train-images", "24", "--val-images", "6", "--test-images", "4", "--fractions", "25",
            "--out", str(tmp_path / "work")]
    # Table 7 (STAC needs the supervised run of its seed first) ...
    _run(tmp_path, "bench_semi.py", "--table", "stac", "--methods", "supervised", "stac", "stac+acrst", *tiny)
    recs = _records(tmp_path, "semi_stac")
    assert [r["method"] for r in recs] == ["supervised", "stac", "stac+acrst"]
    assert all(r["steps"] == 4 and r["fraction"] == 25.0 and 0.0 <= r["ap"] <= 1.0 for r in recs)
    assert all(0.0 <= r["test_ap"] <= 1.0 and r["test_images"] == 4 and r["threads"] == 1 for r in recs)
    # ... and the headline's ceiling plus Mean Teacher, appended to one file
    _run(tmp_path, "bench_semi.py", "--methods", "mean_teacher", "--name", "semi", *tiny)
    _run(tmp_path, "bench_semi.py", "--table", "ablation", "--methods", "fbr+affr", "--append", "--name", "semi", *tiny)
    recs = _records(tmp_path, "semi")
    assert sorted(r["method"] for r in recs) == ["fbr+affr", "mean_teacher", "supervised_all"]
    assert all(r.get("student_ap") is not None for r in recs if r["method"] != "supervised_all")
    proc = subprocess.run([sys.executable, str(BENCH / "report.py")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path / "results"),
                               "MINEDET_BENCH_DOCS": str(tmp_path / "docs")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## STAC + ACRST (Table 7)" in page and "| 25% |" in page and "fbr+affr" in page
    assert "--table ablation --methods fbr+affr --append" in page  # the appended command is named


@pytest.mark.slow
def test_bench_co_mining_baselines_run(tmp_path):
    _run(tmp_path, "bench_co_mining.py", "--table", "baselines", "--splits", "hard", "--methods", "original", "retrain",
         "co_mining", "brl", "--seeds", "0", "--steps", "3", "--train-images", "16", "--val-images", "8",
         "--test-images", "5", "--out", str(tmp_path / "work"))
    recs = _records(tmp_path, "co_mining_baselines")
    assert [r["method"] for r in recs] == ["original", "retrain", "co_mining", "brl"]
    assert all(r["split"] == "hard" and r["steps"] == 3 for r in recs)
    # every run is scored on val (ap) and, evaluation only, on the digits test split (test_ap), at its thread count
    assert all(0.0 <= r["test_ap"] <= 1.0 and r["test_role"] and r["threads"] == 1 for r in recs)
    assert recs[2].get("predict_s") and recs[2].get("predict_base_s")
    # every sparse run's model mines for review against the hidden truth, but retrain's (its file has none)
    assert ["mine_recall_at_p90" in r for r in recs] == [True, False, True, True]
    completed = json.loads((tmp_path / "work" / "baselines_hard_original_s0" / "completed.json").read_text())
    sparse = json.loads(Path(json.loads((tmp_path / "work" / "baselines_hard_original_s0" / "config.json").read_text())
                             ["data"]["train"]).read_text())
    # pseudo-label retraining's data: the labels plus what the original mined, counted in its record and on the page
    assert recs[1]["retrain_mined"] == len(completed["annotations"]) - len(sparse["annotations"]) >= 0
    derived = json.loads((tmp_path / "results" / "co_mining_baselines.json").read_text())["derived"]
    n = recs[1]["retrain_mined"]
    assert f"hard: retrain trains on the labels plus the boxes the original model mines at score 0.6: seed 0: " \
           f"{n} box{'es' * (n != 1)}" in derived
    # --rederive recomputes the derived lines from the records, without training
    path = tmp_path / "results" / "co_mining_baselines.json"
    before = json.loads(path.read_text())
    path.write_text(json.dumps({**before, "derived": []}))
    _run(tmp_path, "bench_co_mining.py", "--table", "baselines", "--rederive")
    after = json.loads(path.read_text())
    assert after["derived"] == before["derived"] and after["records"] == before["records"]
    assert any("step time co-mining / original" in line for line in after["derived"])


@pytest.mark.slow
def test_bench_co_mining_model_extra_reaches_every_column(tmp_path):
    """--model-extra: one detector setting for every column (a cheaper Faster R-CNN under its own name), in each
    run's config, each record and the page's note; a pair without '=' is refused before anything trains."""
    _run(tmp_path, "bench_co_mining.py", "--table", "frcnn", "--splits", "hard", "--methods", "original", "co_mining_guarded",
         "--seeds", "0", "--steps", "2", "--train-images", "16", "--val-images", "8", "--test-images", "4", "--model-extra",
         "box_batch_size_per_image=32", "rpn_post_nms_top_n_train=100", "--name", "co_mining_frcnn_light",
         "--out", str(tmp_path / "work"))
    want = {"box_batch_size_per_image": 32, "rpn_post_nms_top_n_train": 100}
    recs = _records(tmp_path, "co_mining_frcnn_light")
    assert [r["method"] for r in recs] == ["original", "co_mining_guarded"]
    assert all(r["model_extra"] == want for r in recs)
    for run in ("frcnn_hard_original_s0", "frcnn_hard_co_mining_guarded_s0"):
        cfg = json.loads((tmp_path / "work" / run / "config.json").read_text())
        assert cfg["model"]["name"] == "faster_rcnn" and cfg["model"]["extra"] == want
    note = json.loads((tmp_path / "results" / "co_mining_frcnn_light.json").read_text())["note"]
    assert "model.extra box_batch_size_per_image=32, rpn_post_nms_top_n_train=100" in note
    proc = subprocess.run([sys.executable, str(BENCH / "bench_co_mining.py"), "--model-extra", "oops"], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path / "r2")})
    assert proc.returncode == 2 and "--model-extra 'oops': expected KEY=VALUE" in proc.stderr
    assert not (tmp_path / "r2").exists()


def test_every_co_mining_column_on_the_page_is_explained():
    """The page's legend names what each column trains: every label a co-mining results file holds (and every label
    a table trains) is declared once, with a meaning, the parametrised ones with their parameter."""
    sys.path.insert(0, str(BENCH))
    from bench_co_mining import BY_LABEL, COLUMNS, TABLES

    labels = {r["method"] for f in (ROOT / "benchmarks" / "results").glob("co_mining*.json")
              for r in json.loads(f.read_text())["records"]}
    assert "original" in labels and labels | {m for _, ms in TABLES.values() for m in ms} <= set(BY_LABEL)
    assert len(BY_LABEL) == len(COLUMNS) and all(c.meaning for c in COLUMNS)
    assert BY_LABEL["co_mining_guarded_tau0.5"].meaning == "the guards at tau 0.5"
    assert BY_LABEL["tau0.5_any"].meaning.startswith("co-mining at tau 0.5,")
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert f"`co_mining_brl_pos`: {BY_LABEL['co_mining_brl_pos'].meaning}" in page


def test_co_mining_target_check_compares_means_against_one_std(monkeypatch):
    """The derived line that checks the issue's target: co-mining must beat each rival's mean AP by
    more than the larger of the two stds, on the seeds both ran; with one seed there is no std. Co-mining
    variants (tau0.5) are checked too; other rivals (brl) are not."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import beats_rivals

    def recs(method, split, aps):
        return [{"method": method, "split": split, "seed": i, "ap": ap} for i, ap in enumerate(aps)]

    records = (recs("co_mining", "hard", [0.70, 0.71, 0.72]) + recs("original", "hard", [0.60, 0.62, 0.64])
               + recs("joint", "hard", [0.68, 0.70, 0.72]) + recs("co_mining", "extreme", [0.3])
               + recs("original", "extreme", [0.2]) + recs("augmented", "easy", [0.5, 0.6])
               + recs("brl", "hard", [0.5, 0.5]) + recs("tau0.5", "hard", [0.64, 0.66]))
    lines = beats_rivals(records)
    assert lines == [
        "hard: co_mining - original = +9.0 AP on seeds [0, 1, 2]: above by more than one std (2.0)",
        "hard: co_mining - joint = +1.0 AP on seeds [0, 1, 2]: within one std (2.0)",
        # on the seeds both ran: tau0.5 has seeds 0 and 1 only
        "hard: tau0.5 - original = +4.0 AP on seeds [0, 1]: above by more than one std (1.4)",
        "hard: tau0.5 - joint = -4.0 AP on seeds [0, 1]: below by more than one std (1.4)",
        "extreme: co_mining - original = +10.0 AP on seeds [0]: one seed, no std",
    ]


def test_co_mining_on_brl_meets_the_rivals_on_brls_loss(monkeypatch):
    """A co-mining column on BRL's loss is checked against BRL alone, BRL on twice the batch and the two
    views on BRL's loss (joint_brl is a rival there, not a candidate), never against the focal-loss rows."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import BY_LABEL, beats_rivals

    assert [BY_LABEL[m].on_brl for m in ("brl", "brl_2x", "joint_brl", "co_mining_brl_noib_tau0.5", "original_2x",
                                         "co_mining")] == [True, True, True, True, False, False]
    records = [{"method": m, "split": "hard", "seed": i, "ap": ap}
               for m, aps in {"co_mining_brl_noib": [0.74, 0.75], "brl_2x": [0.70, 0.72], "joint_brl": [0.75, 0.76],
                              "original": [0.6, 0.6]}.items() for i, ap in enumerate(aps)]
    assert beats_rivals(records) == [
        "hard: co_mining_brl_noib - brl_2x = +3.5 AP on seeds [0, 1]: above by more than one std (1.4)",
        "hard: co_mining_brl_noib - joint_brl = -1.0 AP on seeds [0, 1]: below by more than one std (0.7)",
    ]


def test_a_column_on_another_second_view_runs_its_base_and_meets_joint_on_that_view(monkeypatch):
    """A column declared on another second view (``LABEL_view_V``) trains column LABEL with the second view V; a
    co-mining column on a view also meets ``joint`` on the same view (so a gain from the view alone is not credited to
    co-generation)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import BY_LABEL, beats_rivals, method_cfg

    assert method_cfg("co_mining_brl_noib_view_strong", "extreme") == {**method_cfg("co_mining_brl_noib", "extreme"),
                                                                         "view": "strong"}
    assert method_cfg("joint_brl_view_strong", "hard") == {**method_cfg("joint_brl", "hard"), "view": "strong"}
    assert BY_LABEL["joint_brl_view_strong"].meaning.startswith("joint on BRL's loss, the second view strong")
    assert BY_LABEL["joint_brl_view_strong"].model_extra == BY_LABEL["joint_brl"].model_extra
    records = [{"method": m, "split": "hard", "seed": i, "ap": ap}
               for m, aps in {"co_mining_brl_noib_view_strong": [0.78, 0.79], "joint_brl": [0.75, 0.76],
                              "joint_brl_view_strong": [0.78, 0.80]}.items() for i, ap in enumerate(aps)]
    assert beats_rivals(records) == [
        "hard: co_mining_brl_noib_view_strong - joint_brl = +3.0 AP on seeds [0, 1]: above by more than one std (0.7)",
        "hard: co_mining_brl_noib_view_strong - joint_brl_view_strong = -0.5 AP on seeds [0, 1]: within one std (1.4)",
    ]


def test_bench_mixed_and_review_run_and_render(tmp_path):
    _run(tmp_path, "bench_mixed.py", "--seeds", "0", "--steps", "4", "--train-images", "40", "--val-images", "6",
         "--test-images", "5", "--methods", "supervised_sparse", "mean_teacher", "mixed", "--out", str(tmp_path / "mixed"))
    recs = _records(tmp_path, "mixed")
    assert [r["method"] for r in recs] == ["supervised_sparse", "mean_teacher", "mixed"] and all(r["steps"] == 4 for r in recs)
    assert all(0.0 <= r["test_ap"] <= 1.0 and r["test_images"] == 5 and r["threads"] == 1 for r in recs)
    _run(tmp_path, "bench_review.py", "--seeds", "0", "--round1", "3", "--round2", "2", "--train-images", "24",
         "--val-images", "6", "--test-images", "0", "--out", str(tmp_path / "review"))
    rev = _records(tmp_path, "review")
    assert "test_ap" not in rev[0] and rev[0]["threads"] == 1  # --test-images 0: val only
    assert rev[0]["method"] == "review_round" and rev[0]["total_steps"] == 5 and rev[0]["steps"] == 2
    assert (tmp_path / "review" / "round1_hard_3_s0" / "completed.json").exists()
    (tmp_path / "README.md").write_text((ROOT / "README.md").read_text())
    proc = subprocess.run([sys.executable, str(BENCH / "report.py")], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path / "results"),
                               "MINEDET_BENCH_DOCS": str(tmp_path / "docs"), "MINEDET_BENCH_README": str(tmp_path / "README.md")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = (tmp_path / "docs" / "benchmarks.md").read_text()
    assert "## Mixed supervision" in page and "| AP | " in page and "## One review round" in page
    assert "mixed: long-tailed digits" in (tmp_path / "README.md").read_text()


def test_the_scripted_reviewer_accepts_hidden_matches_and_deletes_the_rest():
    sys.path.insert(0, str(BENCH))
    from bench_review import scripted_review

    from minedet.data.coco import validate_coco
    from minedet.review import merge_reviewed

    cats = [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]
    images = [{"id": 1, "file_name": "1.png", "width": 64, "height": 64}, {"id": 2, "file_name": "2.png", "width": 64, "height": 64}]
    anns = [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10], "mined": True, "score": 0.9},  # right
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [40, 40, 10, 10], "mined": True, "score": 0.8},  # wrong class
            {"id": 4, "image_id": 1, "category_id": 1, "bbox": [21, 21, 10, 10], "mined": True, "score": 0.7},  # duplicate
            {"id": 5, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 10], "mined": True, "score": 0.6}]  # no object
    hidden = [{"id": 10, "image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},
              {"id": 11, "image_id": 1, "category_id": 1, "bbox": [40, 40, 10, 10]}]
    mined = validate_coco({"images": images, "annotations": anns, "categories": cats}, file="mined.json")
    truth = validate_coco({"images": images, "annotations": hidden, "categories": cats}, file="hidden.json")
    reviewed, counts = scripted_review(mined, truth)
    assert counts == {"shown": 4, "accepted": 1, "deleted": 3}
    merged = merge_reviewed(mined, reviewed)
    assert merged.counts["mined-accepted"] == 1 and merged.counts["rejected"] == 3 and merged.counts["labelled"] == 1
    assert merged.counts["labelled_changed"] == 0


def test_nuclei_folds_completion_cuts_mined_region_boxes_into_every_tile_they_lie_in():
    sys.path.insert(0, str(BENCH))
    import torch
    from bench_real import completed_tiles

    from minedet.data.coco import validate_coco
    from minedet.structures import Target

    def tile(i, x):
        return {"id": i, "file_name": f"{i}.png", "width": 128, "height": 128,
                "tile": {"source": 1, "x": x, "y": 0, "source_file": "r.png", "source_width": 208, "source_height": 128}}

    sparse = {"images": [tile(1, 0), tile(2, 80)], "categories": [{"id": 1, "name": "nucleus"}],
              "annotations": [{"id": 7, "image_id": 1, "category_id": 1, "bbox": [2, 2, 10, 10], "area": 100, "iscrowd": 0}]}
    mined = Target(torch.tensor([[90.0, 10.0, 110.0, 30.0],    # in both tiles (x 80..128 overlap)
                                 [20.0, 50.0, 30.0, 60.0],     # tile 1 only
                                 [120.0, 70.0, 140.0, 90.0]]),  # 40 % in tile 1 (left out there), whole in tile 2
                   torch.zeros(3, dtype=torch.long), torch.tensor([0.9, 0.8, 0.7]))
    out = completed_tiles(sparse, mined)
    validate_coco(out, file="completed.json")
    assert out["annotations"][0] == sparse["annotations"][0] and len(sparse["annotations"]) == 1
    got = sorted((a["image_id"], tuple(a["bbox"])) for a in out["annotations"] if a.get("mined"))
    assert got == [(1, (20.0, 50.0, 10.0, 10.0)), (1, (90.0, 10.0, 20.0, 20.0)),
                   (2, (10.0, 10.0, 20.0, 20.0)), (2, (40.0, 70.0, 20.0, 20.0))]
    assert len({a["id"] for a in out["annotations"]}) == len(out["annotations"])


def test_nuclei_twice_the_batch_columns_train_their_base_column_on_twice_the_tiles(monkeypatch, tmp_path):
    """full_2x / original_2x / brl_2x: the base column's method and loss, twice --batch-size (a two-view step's compute)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_real

    monkeypatch.setattr(bench_real, "sparse_tiles", lambda info, seed: ("sparse.json", "hidden.json", 5, 5))
    info = {"root": str(tmp_path)}
    col = bench_real.BY_LABEL
    for label, loss in (("full", {}), ("original", {}), ("brl", {"cls_loss": "brl"})):
        one, two = bench_real.make_config(info, col[label], 0, 10, 8), bench_real.make_config(info, col[f"{label}_2x"], 0, 10, 8)
        assert (one.data.batch_size, two.data.batch_size) == (8, 16)
        assert one.method == two.method == {"name": "supervised"}
        assert one.model.extra == two.model.extra == loss
        assert one.data.train == two.data.train
    assert bench_real.make_config(info, col["full_2x"], 0, 10, 8).data.train.endswith("tiles.json")


def test_nuclei_noreg_column_is_its_base_column_with_mined_boxes_teaching_no_regression(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_real import BY_LABEL, method_block

    base, noreg = method_block(BY_LABEL["co_mining_brl_blur"]), method_block(BY_LABEL["co_mining_brl_blur_noreg"])
    assert base["view"] == "blur" and base.get("pseudo_regress") is not False
    assert noreg == {**base, "pseudo_regress": False}


def test_nuclei_and_mixed_columns_are_declared_once_and_the_report_reads_them(monkeypatch):
    """Every label a results file of bench_real / bench_mixed holds is a declared column (a nuclei fold column retrained
    at another score: its base's label and that score), with a meaning; the report's columns, names and README names
    are the declarations' (no second list of names in report.py)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_mixed
    import bench_real
    import report

    assert report.MIXED_COLUMNS is bench_mixed.COLUMNS and report.NUCLEI_COLUMNS is bench_real.COLUMNS
    assert not hasattr(report, "REAL_README") and not hasattr(report, "MIXED_README")
    for mod in (bench_mixed, bench_real):
        assert len(mod.BY_LABEL) == len(mod.COLUMNS) and all(c.meaning and c.method for c in mod.COLUMNS)
    stored = {name: {r["method"]: r for r in json.loads((ROOT / "benchmarks" / "results" / f"{name}.json").read_text())["records"]}
              for name in ("mixed", "real_nuclei")}
    assert set(stored["mixed"]) == set(bench_mixed.BY_LABEL)
    for label, r in stored["real_nuclei"].items():
        assert label in bench_real.BY_LABEL or any(
            c.folds and label == c.label + bench_real.retrain_suffix(r["retrain_score"]) for c in bench_real.COLUMNS), label
    # every declared column shows on the page under its heading, in the declared order; a retrained one after its base
    recs = [{"method": c.label, "seed": 0} for c in bench_real.COLUMNS] + [{"method": "folds_original_r70", "seed": 0,
                                                                            "retrain_score": 0.7}]
    cols = report._nuclei_columns(recs)
    labels = [c.label for c in bench_real.COLUMNS]
    assert [c.label for c in cols] == labels[:labels.index("folds_original") + 1] + ["folds_original_r70", "folds_co_mining"]
    assert cols[-2].heading == "held-out folds, original, retrained on boxes mined at score > 0.7"
    readme = (ROOT / "README.md").read_text()
    assert [c.label for c in bench_real.COLUMNS if c.short] == ["full", "original", "brl", "brl_2x", "joint_brl",
                                                                "co_mining_brl", "co_mining_brl_blur"]
    assert [c.label for c in bench_mixed.COLUMNS if c.short] == ["supervised_complete", "supervised_sparse", "co_mining",
                                                                 "mixed_late_sparse", "full"]
    for c in tuple(c for c in bench_mixed.COLUMNS + bench_real.COLUMNS if c.short):
        assert f"{c.short} " in readme, c.label
    page = (ROOT / "docs" / "benchmarks.md").read_text()
    assert all(c.heading in page for c in bench_real.COLUMNS)


def test_mixed_columns_train_what_they_declare(monkeypatch):
    """A mixed column's method block: the schedule's (mean_teacher, mixed) or the co-mining preset's, then its options."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_mixed import BY_LABEL, method_block

    schedule, co_mining = {"name": "mean_teacher", "burn_in": 400, "tau": 0.7}, {"name": "co_mining", "tau": 0.6}
    block = {label: method_block(BY_LABEL[label], schedule, co_mining) for label in BY_LABEL}
    assert block["full"] == block["supervised_sparse_brl"] == {"name": "supervised"}
    assert block["co_mining"] == {"name": "co_mining", "tau": 0.6, "paper": True}
    assert block["mean_teacher_ignore"] == {**schedule, "ignore_below": 0.3}
    assert block["mixed_late_sparse_brl"] == block["mixed_late_sparse"] == {**schedule, "name": "mixed", "sparse_burn_in": False}
    assert BY_LABEL["mixed_late_sparse_brl"].model_extra == BY_LABEL["supervised_sparse_brl"].model_extra == {
        "cls_loss": "brl", "loss_norm": "image"}
    assert not BY_LABEL["mixed_late_sparse"].model_extra and BY_LABEL["mixed"].streams == 4
    assert [c.label for c in BY_LABEL.values() if not c.scored] == ["supervised_complete", "supervised_sparse", "full",
                                                                    "supervised_sparse_brl"]


@pytest.mark.parametrize("script", ["bench_mixed.py", "bench_real.py"])
def test_list_prints_every_declared_column_and_methods_take_only_declared_ones(script, tmp_path):
    """--list prints each column's label, method and meaning without building any data; --methods refuses a label
    that is not declared."""
    sys.path.insert(0, str(BENCH))
    module = __import__(script.removesuffix(".py"))
    env = {**os.environ, "MINEDET_BENCH_RESULTS": str(tmp_path / "results")}
    proc = subprocess.run([sys.executable, str(BENCH / script), "--list", "--cache-dir" if script == "bench_real.py" else
                           "--out", str(tmp_path / "data")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 2 * len(module.COLUMNS)
    for c, (head, meaning) in zip(module.COLUMNS, zip(lines[::2], lines[1::2])):
        assert head.split()[0] == c.label and c.method in head and meaning.strip() == c.meaning
    assert not (tmp_path / "data").exists() and not (tmp_path / "results").exists()
    bad = subprocess.run([sys.executable, str(BENCH / script), "--methods", "no_such_column"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "no_such_column" in bad.stderr


def test_no_benchmark_function_is_longer_than_80_lines():
    import ast

    long = [f"{p.name}:{n.name} ({n.end_lineno - n.lineno + 1} lines)" for p in sorted(BENCH.glob("*.py"))
            for n in ast.walk(ast.parse(p.read_text(encoding="utf-8")))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 80]
    assert not long, long


def test_co_mining_method_labels_name_the_settings_they_run(monkeypatch):
    """A label names its settings: the guards at the preset's tau (0.1 lower on extreme, as the release),
    the guards at an explicit tau on every split, the paper's rule at an explicit tau."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import GUARDS, method_cfg

    assert method_cfg("co_mining_guarded", "hard") == {"name": "co_mining", **GUARDS, "tau": 0.6}
    assert method_cfg("co_mining_guarded", "extreme")["tau"] == 0.5
    assert method_cfg("co_mining_guarded_noreg", "hard") == {"name": "co_mining", **GUARDS, "tau": 0.6, "pseudo_regress": False}
    for split in ("hard", "extreme"):
        assert method_cfg("co_mining_guarded_tau0.5", split) == {"name": "co_mining", **GUARDS, "tau": 0.5}
    assert method_cfg("tau0.5", "hard") == {"name": "co_mining", "tau": 0.5, "paper": True}
    # the part rule as Faster R-CNN's default runs it; co_mining_guarded itself pins it off, as its records ran
    assert method_cfg("co_mining_guarded_part0.5", "hard") == {"name": "co_mining", **GUARDS, "tau": 0.6, "part": 0.5}
    assert GUARDS["part"] is None
    # the guards are minedet's defaults on RetinaNet, where every guarded record so far ran
    from minedet.methods.co_mining import CoMiningOptions
    from minedet.models.detector import RetinaNetAdapter

    d, own = CoMiningOptions(), ("pseudo_regress", "ignore_below", "part")  # the detector's: None / "auto"
    assert {k: getattr(d, k) for k in GUARDS if k not in own} == {k: v for k, v in GUARDS.items() if k not in own}
    assert d.pseudo_regress is None and RetinaNetAdapter.mining_regress is GUARDS["pseudo_regress"]
    assert d.ignore_below == "auto" and RetinaNetAdapter.mining_ignore_below == GUARDS["ignore_below"]
    assert d.part == "auto" and RetinaNetAdapter.mining_part is GUARDS["part"]
    # the labels on BRL's loss: co_mining_brl pins the band it ran with; _noib is the default there (no band)
    assert method_cfg("co_mining_brl", "hard")["ignore_below"] == 0.3
    assert method_cfg("co_mining_brl_noib", "hard") == {"name": "co_mining", **GUARDS, "tau": 0.6, "ignore_below": None}


def test_the_ignored_band_label_and_another_detectors_step_cost_section(monkeypatch):
    """``co_mining_guarded_ibX`` is the guards with the band from X (below tau, in every declared column); a
    ``bench_loader.py --detector`` results file (``loader_DETECTOR``) renders as its own section of the page."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report
    from bench_co_mining import COLUMNS, GUARDS, method_cfg

    assert method_cfg("co_mining_guarded_ib0.1", "extreme") == {"name": "co_mining", **GUARDS, "tau": 0.5, "ignore_below": 0.1}
    blocks = [method_cfg(c.label, split) for c in COLUMNS for split in ("full", "easy", "hard", "extreme")]
    assert all(b["ignore_below"] < b["tau"] for b in blocks if b.get("ignore_below") is not None)
    rec = {"method": "co_mining_guarded", "what": "training step, batch 16", "workers": None, "images_per_s": 1.5, "step_s": 10.8}
    res = {"name": "loader_fcos", "command": "python benchmarks/bench_loader.py --detector fcos", "date": "2026-12-01",
           "git_commit": "0" * 40, "machine": {}, "note": "digits, fcos", "records": [rec],
           "derived": ["co_mining_guarded / co_mining step: 1.028x"]}
    text = report.page({"loader_fcos": res})
    assert "## Loader and step cost: fcos" in text
    assert "| co_mining_guarded | training step, batch 16 | 1.5 |" in text and "- co_mining_guarded / co_mining step: 1.028x" in text


def test_recovery_of_a_twice_the_batch_column_names_its_ceiling(monkeypatch):
    """The recovered share divides by the full-label run at the table's batch; a 2x column trains on twice
    that batch and may pass the ceiling, so its line says so (a plain column's does not)."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import derived

    records = [{"method": m, "split": sp, "seed": 0, "ap": ap}
               for m, sp, ap in [("original", "full", 0.8), ("original", "hard", 0.6), ("brl_2x", "hard", 0.8),
                                 ("brl", "hard", 0.7)]]
    lines = [x for x in derived(records) if "recovers" in x]
    assert lines == [
        "hard: brl_2x recovers 100% of the AP lost to missing labels ((AP_brl_2x 80.0 - AP_orig 60.0) / "
        "(AP_full 80.0 - AP_orig 60.0)); the full-label run trains on half its batch",
        "hard: brl recovers 50% of the AP lost to missing labels ((AP_brl 70.0 - AP_orig 60.0) / (AP_full 80.0 - AP_orig 60.0))",
    ]


def test_recovery_of_a_twice_the_batch_column_uses_the_full_label_run_at_twice_the_batch(monkeypatch):
    """Where the file has the full-label run at twice the batch, a 2x column's recovered share divides by it."""
    monkeypatch.syspath_prepend(str(BENCH))
    from bench_co_mining import derived

    records = [{"method": m, "split": sp, "seed": 0, "ap": ap}
               for m, sp, ap in [("original", "full", 0.8), ("original_2x", "full", 0.9), ("original", "hard", 0.6),
                                 ("brl_2x", "hard", 0.8), ("brl", "hard", 0.7)]]
    lines = [x for x in derived(records) if "recovers" in x and "hard" in x]
    assert lines == [
        "hard: brl_2x recovers 67% of the AP lost to missing labels ((AP_brl_2x 80.0 - AP_orig 60.0) / "
        "(AP_full_2x 90.0 - AP_orig 60.0))",
        "hard: brl recovers 50% of the AP lost to missing labels ((AP_brl 70.0 - AP_orig 60.0) / (AP_full 80.0 - AP_orig 60.0))",
    ]


def test_readme_nuclei_rows_show_the_chosen_columns_by_their_short_names(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    def rec(method, seed, ap, recall):
        pr = [{"threshold": 0.5, "n_mined": 10, "tp": 9, "n_hidden": 10, "precision": 0.9, "recall": recall}]
        return {"method": method, "seed": seed, "ap": ap, "mine_pr_part": pr,
                "origin": {"command": "x", "date": "2026-01-01T00:00:00+00:00", "git_commit": "0" * 40, "machine": {}}}

    recs = [rec(m, s, ap, r) for s in (0, 1) for m, ap, r in
            [("full", 0.6, 0.0), ("brl", 0.48, 0.5), ("folds_original", 0.42, 0.4), ("co_mining_brl", 0.45 + s / 100, 0.7)]]
    rows = [r for r in report.readme_rows({"real_nuclei": {"name": "real_nuclei", "records": recs}}) if "nuclei" in r]
    assert len(rows) == 2
    assert ("full labels 60.0 ± 0.0 (2 seeds), BRL's loss 48.0 ± 0.0 (2 seeds), co-mining on BRL's loss (the preset) "
            "45.5 ± 0.7 (2 seeds)") in rows[0]
    assert "BRL's loss 50.0 ± 0.0 % (2 seeds), co-mining on BRL's loss (the preset) 70.0 ± 0.0 % (2 seeds)" in rows[1]
    assert not any("folds" in r for r in rows) and "full labels" not in rows[1]  # left out; nothing to mine


def test_the_page_says_what_the_false_mined_boxes_lay_on(monkeypatch, tmp_path):
    """A co-mining record whose curve logged the false kinds gets them beside its precision (mean over the runs that
    logged them, and how many did); a record from before they were logged gets nothing added."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    monkeypatch.setattr(report, "IMG", tmp_path)  # the page's plots: not into the project's docs/img

    def rec(seed, kinds):
        row = {"step": 10, "quality/o_n_hidden": 10.0, "quality/o_n_pseudo": 10.0, "quality/o_recall": 0.5,
               **{f"quality/o_total_false_{k}": v for k, v in kinds.items()}}
        return {"method": "co_mining_guarded", "split": "hard", "seed": seed, "ap": 0.5, "ap50": 0.7, "curve": [row]}

    kinds = {"duplicate": 0.0, "class": 0.1, "misplaced": 0.2, "labelled": 0.1, "background": 0.1}
    res = {"name": "co_mining_frcnn_light", "command": "python benchmarks/bench_co_mining.py", "date": "2026-12-03",
           "git_commit": "0" * 40, "machine": {}, "note": "digits", "derived": [],
           "records": [rec(0, kinds), rec(1, {**kinds, "background": 0.3}), rec(2, {})]}
    text = report.page({"co_mining_frcnn_light": res})
    line = next(x for x in text.splitlines() if x.startswith("- hard/co_mining_guarded: precision"))
    assert line.endswith("; false, as shares of the mined boxes: duplicate 0.00, class 0.10, misplaced 0.20, "
                         "labelled 0.10, background 0.20 (2 of 3 runs logged them)")
    res["records"] = [rec(2, {})]
    line = next(x for x in report.page({"co_mining_frcnn_light": res}).splitlines() if x.startswith("- hard/co_mining"))
    assert line.endswith("mined per erased box")


def test_records_of_different_thread_counts_never_share_a_figure(monkeypatch):
    """A page cell whose records ran at 1 and 2 torch threads (or did not record it) shows one figure per count, each
    naming its count and seeds; a record's own ``threads`` wins over its origin's; a README cell quotes one count."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    def rec(seed, ap, threads=None, origin_threads=None):
        r = {"method": "original", "split": "hard", "seed": seed, "ap": ap, "ap50": ap}
        if threads:
            r["threads"] = threads
        if origin_threads:
            r["origin"] = {"machine": {"torch_threads": origin_threads}}
        return r

    recs = [rec(0, 0.60, threads=1, origin_threads=2), rec(1, 0.62, origin_threads=1), rec(2, 0.70, threads=2), rec(3, 0.5)]
    assert report.seed_cell(recs, "ap", [0, 1, 2, 3]) == \
        "61.0 ± 1.4 (1 thread, seeds 0, 1) / 70.0 (2 threads, seed 2) / 50.0 (threads not recorded, seed 3)"
    assert report.seed_cell(recs[:2], "ap", [0, 1, 2]) == "61.0 ± 1.4 (seeds 0, 1)"
    [row] = [r for r in report.readme_rows({"co_mining_baselines": {"name": "co_mining_baselines", "records": recs}})
             if "sparse labels" in r]
    # the README quotes one count, the one with the most seeds, and says which (the page shows every count)
    assert "original 61.0 ± 1.4 (2 seeds, 1 thread)" in row and "70.0" not in row
    tie = [rec(0, 0.60, threads=1), rec(1, 0.70, threads=2)]
    [row] = [r for r in report.readme_rows({"co_mining_baselines": {"name": "co_mining_baselines", "records": tie}})
             if "sparse labels" in r]
    assert "original 70.0 (1 seed, 2 threads)" in row  # a tie: the count of the newest record
    [row] = [r for r in report.readme_rows({"co_mining_baselines": {"name": "co_mining_baselines", "records": recs[:1]}})
             if "sparse labels" in r]
    assert "original 60.0 (1 seed)" in row  # one count: not named
    brl = {**rec(0, 0.70, threads=2), "method": "brl"}
    [row] = [r for r in report.readme_rows({"co_mining_baselines": {"name": "co_mining_baselines",
                                                                    "records": [recs[0], brl]}}) if "sparse labels" in r]
    assert "original 60.0 (1 seed, 1 thread)" in row and "70.0 (1 seed, 2 threads)" in row  # compared across counts


def _all_results() -> dict:
    return {p.stem: json.loads(p.read_text()) for p in (BENCH / "results").glob("*.json")}


def test_the_readme_table_has_one_row_per_setting_and_at_most_eight(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    monkeypatch.setattr(report, "TREES_REPORT", tmp_path / "absent.py")
    results = {k: v for k, v in _all_results().items() if k != "real_trees"}
    rows = report.readme_rows(results)[2:]
    assert [r.split(" | ")[0].split(":")[0].lstrip("| ") for r in rows] == [
        "sparse real images", "sparse labels", "few labelled images", "mixed", "mining for review", "ONNX export",
        "COCO scale", "demo"]
    monkeypatch.setattr(report, "readme_rows", report.readme_rows)
    monkeypatch.setattr(report, "_row_demo", lambda res: [("a", "b")] * 2)
    with pytest.raises(SystemExit, match="would have 9 rows, at most 8"):
        report.readme_rows(results)


def test_the_tree_crown_report_comes_first_on_the_page_and_in_the_readme(monkeypatch, tmp_path):
    """Where benchmarks/report_trees.py and results/real_trees.json both exist, their section opens the page and their
    rows open the README table (in place of the nuclei row); where either is missing, nothing of them shows."""
    import types

    monkeypatch.syspath_prepend(str(BENCH))
    import report

    fake = types.ModuleType("report_trees")
    fake.section = lambda res, img: ["## Real images: tree crowns", "", f"{len(res['records'])} records", ""]
    fake.readme_rows = lambda res: [("sparse real images: tree crowns", "AP 1.0")]
    monkeypatch.setitem(sys.modules, "report_trees", fake)
    monkeypatch.setattr(report, "IMG", tmp_path)
    module = tmp_path / "report_trees.py"
    monkeypatch.setattr(report, "TREES_REPORT", module)
    results = {"real_trees": {"name": "real_trees", "records": [{}]}, "demo": _all_results()["demo"],
               "real_nuclei": _all_results()["real_nuclei"]}
    assert "tree crowns" not in report.page(results) and "tree crowns" not in "".join(report.readme_rows(results))
    module.write_text("")
    text = report.page(results)
    assert text.index("## Real images: tree crowns") < text.index("## Demo") and "1 records" in text
    rows = report.readme_rows(results)
    assert rows[2] == "| sparse real images: tree crowns | AP 1.0 |" and not any("nuclei image" in r for r in rows)
    fake.readme_rows = lambda res: []  # nothing to quote yet (too few seeds): the nuclei row stays
    rows = report.readme_rows(results)
    assert any("nuclei image" in r for r in rows) and not any("tree crowns" in r for r in rows)
    del results["real_trees"]
    assert "tree crowns" not in report.page(results)


def _tree_rec(column, split, seed, steps, ap50, protocol="random"):
    return {"column": column, "method": column, "protocol": protocol, "split": split, "seed": seed, "steps": steps,
            "ap": ap50 / 2, "ap50": ap50}


def test_tree_report_keeps_budgets_apart_and_quotes_the_protocols_budget(monkeypatch):
    """A cell is one column at one budget; the README quotes a protocol at its budget (``STEPS``) once full, original
    and one more column hold a test record, each cell with its seed count and the gap it recovers ((column - original)
    / (full - original) on test AP50), and the default's mining at the score ``minedet mine`` proposed."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    steps = rt.STEPS
    recs = [_tree_rec("full", "dev", 0, 150, 0.9)]  # a probe at another budget
    for seed in (0, 1):
        recs += [_tree_rec(c, s, seed, steps, v) for c, v in (("full", 0.6), ("original", 0.2)) for s in ("dev", "test")]
    res = {"records": recs}
    table = "\n".join(rt.ap_table(res, "random"))
    assert "| full | every training crown labelled (the ceiling) | 150 | 90.0 (1 seed) |" in table
    assert f"| full | every training crown labelled (the ceiling) | {steps} | 60.0 ± 0.0 |" in table
    assert rt.readme_rows(res) == []  # nothing beside the two baselines: not yet
    default = next(c.label for c in rt.COLUMNS if c.default)
    res["records"] += [_tree_rec(default, "dev", 0, steps, 0.4), _tree_rec(default, "test", 0, steps, 0.4),
                       _tree_rec("brl", "test", 0, 300, 0.5),
                       {**_tree_rec(default, "train", 0, steps, 0), "what": "mine", "proposal_dev_flip": {},
                        "proposed_score_dev_flip": 0.9, "mine_at_proposed_dev_flip": {"recall": 0.25, "precision": 0.5},
                        # calibrated on the labels, or without the flipped view's agreement: not the README's settings
                        "mine_at_proposed": {"recall": 0.9, "precision": 0.1}, "proposal_dev": {},
                        "proposed_score_dev": 0.8, "mine_at_proposed_dev": {"recall": 0.8, "precision": 0.2}}]
    assert "| 50 % |" in "\n".join(rt.ap_table(res, "random"))  # the default: (40 - 20) / (60 - 20) of the gap
    rows = rt.readme_rows(res)
    assert len(rows) == 1 and f"{steps} steps" in rows[0][0] and "50.0" not in rows[0][1]  # the 300-step BRL: another budget
    short = next(c.short for c in rt.COLUMNS if c.default)
    assert (f"full labels 60.0 ± 0.0 (2 seeds), original 20.0 ± 0.0 (2 seeds), {short} "
            "40.0 (1 seed; 50 % of the gap)") in rows[0][1]
    assert ("`minedet mine` with its model and the README's settings (calibrated on the dev tiles, a flipped view "
            "agreeing): 25 % of the erased crowns at precision 0.50 (1 seed)") in rows[0][1]
    assert "hurried" not in rows[0][1]


def test_tree_report_compares_the_default_with_its_targets_columns_seed_by_seed(monkeypatch):
    """The default minus BRL's loss (and the equal-compute original) per split, paired over the seeds both ran: a mean
    and the std of the differences with the target's verdict; one common seed gives no verdict; a column not run says
    so."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    steps, default = rt.STEPS, next(c.label for c in rt.COLUMNS if c.default)
    recs = [_tree_rec(default, "dev", s, steps, v) for s, v in ((0, 0.40), (1, 0.42), (2, 0.41))]
    recs += [_tree_rec("brl", "dev", s, steps, v) for s, v in ((0, 0.44), (1, 0.43), (2, 0.50))]  # 4, 1 and 9 above
    recs += [_tree_rec(default, "test", 0, steps, 0.3), _tree_rec("brl", "test", 0, steps, 0.2)]
    lines = rt.paired({"records": recs}, "random")
    assert (f"- dev, the default never below BRL's loss alone by more than one std: {default} - brl = -4.7 ± 4.0 AP50 "
            "over seeds [0, 1, 2] (paired): missed by 0.7") in lines
    assert any(line.startswith("- test, the default never below") and "+10.0 AP50 on seed 0 only: no std" in line
               for line in lines)
    assert any("equal-compute original" in line and "not measured (original_2x not run at" in line
               for line in lines)
    assert "- test, the default recovers at least 50 % of the AP50 gap: not measured" in lines  # no full, no original
    recs += [_tree_rec("full", "test", 0, steps, 0.5), _tree_rec("original", "test", 0, steps, 0.1),
             {**_tree_rec(default, "train", 0, steps, 0), "what": "mine", "proposal_dev_flip": {},
              "proposed_score_dev_flip": 0.9, "mine_at_proposed_dev_flip": {"recall": 0.2, "precision": 0.8}},
             {**_tree_rec(default, "train", 1, steps, 0), "what": "mine", "proposal_dev_flip": {},
              "proposed_score_dev_flip": None,
              "mine_pr_flip": [{"threshold": 0.5, "recall": 0.9, "precision": 0.1},  # none proposed on dev: mine's 0.6
                               {"threshold": 0.6, "recall": 0.3, "precision": 0.5}]},
             {**_tree_rec(default, "train", 2, steps, 0), "what": "mine",  # from before the flip agreement: left out
              "proposal_dev": {}, "proposed_score_dev": 0.9, "mine_at_proposed_dev": {"recall": 0.9, "precision": 0.9}}]
    lines = rt.paired({"records": recs + [_tree_rec(default, "test", 1, steps, 0.2), _tree_rec("brl", "test", 1, steps, 0.22)]},
                      "random")
    assert any(line.startswith("- test, the default never below") and "= +4.0 ± 8.5 AP50 over seeds [0, 1] (paired): holds"
               in line for line in lines)
    # the default's mean test AP50 25: (25 - 10) / (50 - 10) of the gap
    assert "- test, the default recovers at least 50 % of the AP50 gap: 38 % (2 seeds of the default): missed by 12 points" in lines
    assert any(line.endswith("applies by default to models trained on flips: the score proposed there, else 0.6), at "
                             "least 30 % of the erased crowns at precision >= 0.7: 25 % at 0.65 (mean of 2 seeds): "
                             "missed: recall 5 points short, precision 0.05 short") for line in lines)


def test_tree_report_shows_each_models_dev_precision_apart_from_its_ap(monkeypatch):
    """A dev precision-recall record (``what: pr``) fills its own table, full labels included under either protocol,
    with the best precision and its recall; it never enters the AP cells."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    steps = rt.STEPS
    pr = [{"threshold": t, "n": n, "tp": tp, "n_boxes": 10, "precision": tp / n if n else float("nan"), "recall": tp / 10}
          for t, n, tp in ((0.5, 10, 5), (0.6, 8, 5), (0.7, 5, 3), (0.8, 2, 2), (0.9, 0, 0))]
    res = {"records": [_tree_rec("full", "dev", 0, steps, 0.6), _tree_rec("brl", "dev", 0, steps, 0.4, "partial"),
                       {**_tree_rec("full", "dev", 0, steps, 0), "what": "pr", "dev_pr": pr, "ap": None, "ap50": None,
                        "dev_pr_iou40": [dict(pr[0], tp=8, precision=0.8, recall=0.8)]}]}
    assert "60.0 (1 seed)" in "\n".join(rt.ap_table(res, "partial"))  # the pr record is not an AP record of full
    table = "\n".join(rt.pr_table(res, "partial"))
    assert (f"| full | {steps} | 0 | 50 % at 0.50 | 50 % at 0.62 | 30 % at 0.60 | 20 % at 1.00 | – | 20 % at 1.00, t 0.8 "
            "| 80 % at 0.80, t 0.5 |") in table  # the last: every detection judged at IoU 0.4 (DeepForest's)
    assert "right less than 0.7 of the time" in table and "{" not in table
    assert "brl" not in table and rt.pr_table({"records": res["records"][:2]}, "random") == []
    assert rt.pr_table(res, "partial", "_flip") == []  # no record measured the flipped view's agreement
    res["records"][-1]["dev_pr_flip"] = pr[:1]
    flip = "\n".join(rt.pr_table(res, "partial", "_flip"))
    assert "with the flipped view's agreement" in flip and f"| full | {steps} | 0 | 50 % at 0.50 | – |" in flip
    # precision at equal recall: 0.7 at recall 0.5 beats the plain curve's best at recall >= 0.5 (0.62); 0.55 at
    # recall 0.3 loses to it; 1.0 at recall 0.1 ties its 1.0 (at recall 0.2), and a tie is no gain
    res["records"][-1]["dev_pr_flip"] = [dict(pr[0], precision=0.7), dict(pr[1], precision=0.55, recall=0.3),
                                         dict(pr[3], precision=1.0, recall=0.1), pr[4]]
    assert rt.agreement_gain(res, "partial", "_flip")[0].endswith(
        "higher at 1 of 3 points; higher at most thresholds for 0 of 1 models.")
    assert rt.agreement_gain({"records": res["records"][:2]}, "partial", "_flip") == []


def test_tree_mining_table_per_agreement(monkeypatch):
    """Mining without agreement shows the score proposed on the training labels too; with the flipped view's agreement
    only the dev calibration (what the README recommends); a record without an agreement's keys is left out of its
    table."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    steps = rt.STEPS
    rows = [{"threshold": t, "recall": r, "precision": p, "n_mined": n}
            for t, r, p, n in ((0.6, 0.4, 0.5, 20), (0.7, 0.3, 0.75, 10), (0.8, 0.1, 0.9, 3))]
    old = {**_tree_rec("brl", "train", 0, steps, 0), "what": "mine", "mine_pr": rows, "proposed_score": 0.7,
           "mine_at_proposed": rows[1], "proposal_dev": {}, "proposed_score_dev": None}
    res = {"records": [old, {**old, "seed": 1, "mine_pr_flip": rows, "proposal_dev_flip": {},
                             "proposed_score_dev_flip": 0.8, "mine_at_proposed_dev_flip": rows[2]}]}
    plain, flip = rt.mining_table(res, "random"), rt.mining_table(res, "random", "_flip")
    assert (f"| brl | {steps} | 0 | 40.0 % at 0.50 (20 shown) | 30.0 % at 0.75 (10 shown), t 0.7 | 0.7 | "
            "30.0 % at 0.75 (10 shown) | – | none | – | – |") in plain
    assert flip[-2:-1] == ["|---|---|---|---|---|---|---|---|"] and "proposed score |" not in flip[-3]
    assert flip[-1] == (f"| brl | {steps} | 1 | 40.0 % at 0.50 (20 shown) | 30.0 % at 0.75 (10 shown), t 0.7 | 0.8 | "
                        "10.0 % at 0.90 (3 shown) | – |")


def test_tree_review_table_walks_each_list_and_counts_where_cleanlab_recalls_more(monkeypatch):
    """The review table: per model and list, recall / precision after each number of boxes shown ('–' where the list is
    shorter), and a count of the points where a cleanlab list recovers more erased crowns than minedet's default list
    (the flipped view's), points one list cannot reach left out; no review record, no table."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    def lst(method, tps, length):
        curve = [{"budget": n, "shown": min(n, length), "tp": tp, "recall": tp / 100, "precision": tp / min(n, length) if length else None}
                 for n, tp in zip((25, 50, 100, 200, 400), tps)]  # as records hold them
        return {"method": method, "list_length": length, "curve": curve}

    rec = {**_tree_rec("brl_2x", "train", 0, rt.STEPS, 0), "what": "review",
           "lists": [lst("minedet_flip", (20, 30, 40, 50, 60), 150), lst("minedet", (10, 20, 30, 40, 50), 1000),
                     lst("cleanlab_overlooked_p0.3", (5, 35, 45, 45, 45), 400)]}
    res = {"records": [rec]}
    table = rt.review_table(res, "random")
    assert f"| brl_2x | {rt.STEPS} | 0 | minedet (flipped view, `mine`'s default) | 20 % / 0.80 | 30 % / 0.60 | " \
           "40 % / 0.40 | – | 60 % / 0.40 (150 shown) |" in table
    assert f"| brl_2x | {rt.STEPS} | 0 | cleanlab (threshold 0.3) | 5 % / 0.20 | 35 % / 0.70 | 45 % / 0.45 | " \
           "45 % / 0.23 | 45 % / 0.11 (400 shown) |" in table
    # minedet's default list holds 150 boxes: 200 shown is no comparison; cleanlab more at 50 and 100
    assert table[-2] == ("Where both lists reach a number of boxes shown, cleanlab's recovers more erased crowns than "
                         "minedet (flipped view, `mine`'s default): cleanlab (threshold 0.3) at 2 of 3.")
    short = dict(rec, lists=[lst("minedet_flip", (0, 0, 0, 0, 0), 0), lst("cleanlab_overlooked_p0.3", (1,) * 5, 10)])
    assert rt.review_table({"records": [short]}, "random")[-2].startswith("No number of boxes shown in the table")
    assert f"| brl_2x | {rt.STEPS} | 0 | minedet (flipped view, `mine`'s default) | – | – | – | – | – (0 shown) |" \
        in rt.review_table({"records": [short]}, "random")
    assert rt.review_table({"records": [dict(rec, what="mine")]}, "random") == []
    assert rt.review_table(res, "partial") == []


def test_tree_bands_share_no_pixel_and_eval_tiles_do_not_overlap(monkeypatch, tmp_path):
    """bench_trees' data pieces: a crown cut by a band edge is crowd on both sides; the dev/test tiles kept are the
    non-overlapping 400 px grid; the partial protocol erases only in hurried cells, keeping their largest crowns."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_trees as bt

    name = bt.BANDED[0]
    scenes = {"images": [{"id": 1, "file_name": f"{name}.png", "width": 1000, "height": 1000}],
              "categories": [{"id": 1, "name": "tree"}],
              "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [590, 10, 20, 20]},   # cut at x = 600
                              {"id": 2, "image_id": 1, "category_id": 1, "bbox": [100, 100, 30, 30]}]}
    train, _ = bt.band_coco(scenes, "train")
    dev, _ = bt.band_coco(scenes, "dev")
    assert train["images"][0]["width"] == 600 and dev["images"][0]["width"] == 200
    assert sorted(a["iscrowd"] for a in train["annotations"]) == [0, 1]
    assert [a["iscrowd"] for a in dev["annotations"]] == [1] and dev["annotations"][0]["bbox"][:2] == [0, 10]
    tiles = {"images": [{"id": i, "width": 400, "height": 400, "tile": {"x": x, "y": 0}}
                        for i, x in enumerate((0, 400, 460), start=1)],
             "annotations": [{"id": i, "image_id": i} for i in (1, 2, 3)]}
    path = tmp_path / "tiles.json"
    path.write_text(json.dumps(tiles))
    bt.drop_seam_tiles(path)
    kept = json.loads(path.read_text())
    assert [im["tile"]["x"] for im in kept["images"]] == [0, 400] and [a["image_id"] for a in kept["annotations"]] == [1, 2]
    crowns = [{"id": i, "image_id": 1, "category_id": 1, "bbox": [10 + 40 * (i % 9), 10 + 40 * (i // 9), 5 + i, 5 + i],
               "iscrowd": 0} for i in range(1, 19)]  # 18 crowns, all in cell (0, 0), growing with the id
    (tmp_path / "train.json").write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 600, "height": 600}],
                                                     "annotations": crowns, "categories": [{"id": 1, "name": "tree"}]}))
    erased = bt.erased_crowns({"root": str(tmp_path)}, "partial", seed=0)
    assert erased == set(range(1, 13))  # the cell is hurried (the only one): its largest third (ids 13..18) kept
    random_half = bt.erased_crowns({"root": str(tmp_path)}, "random", seed=0)
    assert len(random_half) == 9 and random_half != bt.erased_crowns({"root": str(tmp_path)}, "random", seed=1)


def test_the_defaults_table_sets_val_beside_test_and_names_seeds(monkeypatch):
    """Each default's row: where it was chosen, its val AP over every run and its test AP over the runs that were
    scored on test (none: a dash), each naming its seeds."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    recs = [{"method": "co_mining_brl_noib", "split": "hard", "seed": 0, "ap": 0.74, "test_ap": 0.72, "threads": 1},
            {"method": "co_mining_brl_noib", "split": "hard", "seed": 1, "ap": 0.76, "threads": 1},
            {"method": "brl", "split": "hard", "seed": 0, "ap": 0.70, "threads": 1}]
    lines = report.section_defaults({"co_mining_baselines": {"name": "co_mining_baselines", "records": recs}})
    [preset] = [ln for ln in lines if ln.startswith("| co-mining preset")]
    assert preset.endswith("| digits val, `hard` and `extreme` | `co_mining_baselines` | 75.0 ± 1.4 (seeds 0, 1) | 72.0 (seed 0) |")
    [brl] = [ln for ln in lines if ln.startswith("| baseline: BRL's loss alone")]
    assert brl.endswith("| 70.0 (seed 0) | – |")
    assert any(ln.startswith("| Mean Teacher's ignored band") and ln.endswith("| – | – |") for ln in lines)


def test_a_record_says_what_ran_beside_it_and_what_was_paused(monkeypatch, tmp_path):
    """``other_benchmarks`` counts running ``bench_*.py`` processes, not stopped ones (``kill -STOP``: no CPU taken);
    those are counted apart, and the page's header says both."""
    import signal
    import time

    monkeypatch.syspath_prepend(str(BENCH))
    import common
    import report

    script = tmp_path / "bench_sleeper.py"
    script.write_text("import time\ntime.sleep(60)\n")
    before = common.other_benchmarks()
    proc = subprocess.Popen([sys.executable, str(script)])
    try:
        time.sleep(0.5)
        assert common.other_benchmarks() == (before[0] + 1, before[1])
        proc.send_signal(signal.SIGSTOP)
        time.sleep(0.5)
        assert common.other_benchmarks() == (before[0], before[1] + 1)
    finally:
        proc.kill()
        proc.wait()
    origin = {"command": "python benchmarks/bench_x.py", "date": "2026-12-06", "git_commit": "abc",
              "machine": {"cores": 2, "torch_threads": 1}, "other_benchmarks": 1, "paused_benchmarks": 2}
    [line, _] = report.header({"records": [{"origin": origin}], "date": "2026-12-06", "command": "x"})
    assert "beside 1 other benchmark process (2 paused)" in line


def test_the_export_row_quotes_the_latency_of_the_model_whose_parity_it_quotes(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    par = {"what": "parity, digits val", "model_steps": 1200, "matched": 10, "compared": 10, "ap_pytorch": 0.8}
    lat = {"what": "latency, 128 px", "image_size": 128, "onnx_threads": 1, "reps": 20, "speedup": 2.5, "onnx_ms": 8.0,
           "pytorch_ms": 20.0}
    old = {**lat, "model_steps": 100, "onnx_threads": 2, "speedup": 3.9}
    res = {"name": "export", "records": [old, par, {**lat, "model_steps": 1200}]}
    [(head, text)] = report._row_export({"export": res})
    assert "1200-step" in head and "medians of 20 paired" in head
    assert "2.50×" in text and "3.90×" not in text


def test_a_readme_part_quotes_test_only_once_every_cell_has_three_test_seeds(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import report

    def recs(seeds, test):
        return [{"seed": s, "threads": 1, "ap": 0.5 + s / 100, **({"test_ap": 0.4} if test else {})} for s in seeds]

    three = [("a", recs([0, 1, 2], True)), ("b", recs([0, 1, 2], True)), ("none", [])]
    assert report._val_or_test(three) == "test AP: a 40.0 ± 0.0 (3 seeds), b 40.0 ± 0.0 (3 seeds)"
    # one cell with test on one seed only (the others on val alone): the part stays on val, and says so
    short = [("a", recs([0, 1, 2], True)), ("b", recs([0], True) + recs([1, 2], False))]
    assert report._val_or_test(short) == "val AP: a 51.0 ± 1.0 (3 seeds), b 51.0 ± 1.0 (3 seeds)"


def test_a_record_keeps_co_minings_val_checks(monkeypatch, tmp_path):
    """A run that logged val checks (method.min_val_precision) carries each check's step, precision, verdict and
    seconds (runs from before the check was timed have none)."""
    import types

    import minedet.run

    monkeypatch.syspath_prepend(str(BENCH))
    import common

    logged = [{"kind": "train", "step": 50, "pseudo/val_precision": 0.4, "pseudo/paused": 1.0, "time/val_check": 1.234},
              {"kind": "train", "step": 60}, {"kind": "train", "step": 100, "pseudo/val_precision": 0.8, "pseudo/paused": 0.0}]
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(m) for m in logged))
    monkeypatch.setattr(minedet.run, "run_training",
                        lambda cfg, **kw: {"steps": 100, "wall_s": 1.0, "nonfinite_steps": 0, "reports": {}})
    monkeypatch.setattr(common, "test_scores", lambda cfg, out_dir: {})
    cfg = types.SimpleNamespace(train=types.SimpleNamespace(progress=True, threads=1))
    rec = common.train_record(cfg, label={"column": "x"}, out_dir=tmp_path)
    assert rec["val_checks"] == [{"step": 50, "precision": 0.4, "paused": True, "seconds": 1.23},
                                 {"step": 100, "precision": 0.8, "paused": False}]
    (tmp_path / "metrics.jsonl").write_text(json.dumps(logged[1]))
    assert "val_checks" not in common.train_record(cfg, label={}, out_dir=tmp_path)


def test_tree_report_plots_mining_and_dev_precision_recall_per_final_column(monkeypatch, tmp_path):
    """Each protocol's plots: the seeds' mean precision and recall at each threshold every seed measured (a threshold
    with no box in one seed is left out), final columns at the protocol's budget only; nothing to plot, no file."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    a = [{"threshold": 0.5, "precision": 0.4, "recall": 0.6, "n": 5, "n_mined": 5},
         {"threshold": 0.9, "precision": 0.8, "recall": 0.1, "n": 1, "n_mined": 1}]
    b = [{"threshold": 0.5, "precision": 0.6, "recall": 0.4, "n": 5, "n_mined": 5},
         {"threshold": 0.9, "precision": float("nan"), "recall": 0.0, "n": 0, "n_mined": 0}]
    assert rt.mean_curve([a, b]) == ([0.5], [0.5]) and rt.mean_curve([]) == ([], [])
    steps = rt.STEPS
    mined = [{**_tree_rec("brl", "train", s, steps, 0), "what": "mine", "mine_pr": c} for s, c in ((0, a), (1, b))]
    probe = {**_tree_rec("full_anchor2", "dev", 0, steps, 0, "random"), "what": "pr", "dev_pr": a}
    res = {"records": [_tree_rec("brl", "dev", 0, steps, 0.4), *mined, probe]}
    links = rt.plots(res, "random", tmp_path)
    assert links == ["![minedet mine on the sparse training tiles](img/trees_random_mine_pr.png)", ""]
    assert (tmp_path / "trees_random_mine_pr.png").stat().st_size > 0
    assert not (tmp_path / "trees_random_dev_pr.png").exists()  # only a probe's dev curve: not a page column
    assert rt.plots(res, "partial", tmp_path) == []
    assert any("trees_random_mine_pr.png" in line for line in rt.section(res, tmp_path))


def test_tree_report_shows_what_each_val_check_did_and_its_share_of_the_wall_time(monkeypatch):
    """One row per run that ran co-mining's val check: its precision at each check (paused ones starred), the steps
    it paused and resumed at, and the checks' seconds against the run's wall time ('–' where a check was not timed)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    steps, default = rt.STEPS, next(c.label for c in rt.COLUMNS if c.default)
    checks = [{"step": 150, "precision": 0.75, "paused": False, "seconds": 1.0},
              {"step": 200, "precision": 0.5, "paused": True, "seconds": 1.0},
              {"step": 250, "precision": 0.45, "paused": True, "seconds": 2.0},
              {"step": 300, "precision": 0.71, "paused": False, "seconds": 1.0}]
    res = {"records": [{**_tree_rec(default, "dev", 0, steps, 0.4), "val_checks": checks, "wall_s": 1000.0},
                       {**_tree_rec(default, "dev", 1, steps, 0.4), "val_checks": [{"step": 150, "precision": 0.3,
                                                                                     "paused": True}], "wall_s": 900.0},
                       _tree_rec("brl", "dev", 0, steps, 0.4)]}
    table = rt.val_check_table(res, "random")
    assert (f"| {default} | {steps} | 0 | 150: 0.75, 200: 0.50*, 250: 0.45*, 300: 0.71 | 200 | 300 | 5 s (0.50 %) |"
            in table)
    assert f"| {default} | {steps} | 1 | 150: 0.30* | 150 | never | – |" in table
    assert not any("| brl |" in line for line in table) and rt.val_check_table(res, "partial") == []


def test_tree_self_training_on_brl_is_what_minedet_train_mixed_does_on_an_unflagged_file(monkeypatch, tmp_path):
    """The column ran with its image records flagged sparse and its options spelled out; ``minedet train mixed`` with
    nothing else, on the same tiles unflagged, builds the same run: the same options and the same images in the same
    streams."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_trees as bt
    from minedet.run import own_data_config, stream_data

    col = bt.BY_LABEL["self_training_brl"]
    images = [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400} for i in (1, 2, 3)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
            for i in (1, 2, 3)]
    for split in ("train", "dev"):
        (tmp_path / "tiles" / split).mkdir(parents=True)
        (tmp_path / "tiles" / split / "tiles.json").write_text(json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "tree"}]}))
    flagged = tmp_path / "flagged.json"
    flagged.write_text(json.dumps({"images": [{**im, "labels": "sparse"} for im in images], "annotations": anns,
                                   "categories": [{"id": 1, "name": "tree"}]}))
    unflagged = str(tmp_path / "tiles" / "train" / "tiles.json")
    monkeypatch.setattr(bt, "training_files", lambda info, protocol, seed, flag: (str(flagged if flag else unflagged), None))
    ran = bt.make_config({"root": str(tmp_path)}, col, "random", 0)
    said_nothing = own_data_config(col.method, train=unflagged, val=str(tmp_path / "tiles" / "dev" / "tiles.json"),
                                   overrides=[*bt.BUDGET, f"train.max_steps={bt.STEPS}", "train.ckpt_every=100",
                                              "train.seed=0"], quiet=True)
    assert (ran.method, ran.model, ran.train) == (said_nothing.method, said_nothing.model, said_nothing.train)
    assert ran.data.batch_size == said_nothing.data.batch_size
    streams = ["labelled", "sparse", "unlabelled"]
    ids = lambda cfg: {s: sorted(im["id"] for im in d.images) for s, (d, _) in stream_data(cfg, streams).items()}  # noqa: E731
    assert ids(ran) == ids(said_nothing) == {"sparse": [1, 2, 3]}


def test_tree_fold_column_trains_one_model_per_fold_on_its_file_and_mines_each_tile_with_the_other(monkeypatch, tmp_path):
    """A held-out-fold column: ``minedet data folds --strips`` on the column's training tiles, one model per fold
    trained on that fold's file (``--fold F``: that one alone, nothing measured), then the mining measured with every
    fold model and the folds (each tile by the model that did not train on it)."""
    monkeypatch.syspath_prepend(str(BENCH))
    import bench_trees as bt

    col = bt.BY_LABEL["self_training_brl_folds"]
    assert col.folds == 2 and not col.final
    # one 1200 px wide band cut into three 400 px tiles (no overlap): two strips, left and right of x = 600
    images = [{"id": i, "file_name": f"{i}.png", "width": 400, "height": 400, "labels": "sparse",
               "tile": {"source": 1, "x": 400 * (i - 1), "y": 0, "source_file": "band.png", "source_width": 1200,
                        "source_height": 400}} for i in (1, 2, 3)]
    anns = [{"id": i, "image_id": i, "category_id": 1, "bbox": [10, 10, 30, 30], "area": 900, "iscrowd": 0}
            for i in (1, 2, 3)]
    coco = {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "tree"}]}
    for split in ("train", "dev"):
        (tmp_path / "tiles" / split).mkdir(parents=True)
        (tmp_path / "tiles" / split / "tiles.json").write_text(json.dumps(coco))
    kept = tmp_path / "kept.json"
    kept.write_text(json.dumps(coco))
    monkeypatch.setattr(bt, "training_files", lambda info, protocol, seed, flag: (str(kept), None))
    trained, measured = [], []

    def fake_train(cfg, *, label, out_dir, resume=None, continue_from=None):
        trained.append((label["what"], sorted(im["id"] for im in json.loads(Path(cfg.data.train).read_text())["images"])))
        return {**label, "steps": cfg.train.max_steps, "ap": 0.0, "ap50": 0.0}

    monkeypatch.setattr(bt.common, "train_record", fake_train)
    monkeypatch.setattr(bt, "measure_model", lambda models, c, cfg, base, folds=None: measured.append(
        ([Path(m).parent.name for m in models], folds, cfg.data.train)) or [{**base, "what": "mine"}])
    monkeypatch.setattr(bt, "held_out_ap", lambda models, folds, info, cfg: measured.append(
        ([Path(m).parent.name for m in models], folds, "held out")) or {"held_out_ap50": 0.5})
    info = {"root": str(tmp_path)}
    recs = bt.run_one(info, col, "random", 0, tmp_path / "work", 0, fold=1)
    assert [r["what"] for r in recs] == ["fold1"] and not measured
    record = json.loads(next((tmp_path / "work").rglob("folds.json")).read_text())
    assert record["strips"] == 2
    held = [set(f["image_ids"]) for f in record["folds"]]
    assert sorted(map(sorted, held)) == [[1], [2, 3]]  # tile 2's centre (x 600) opens the right strip
    assert trained == [("fold1", sorted({1, 2, 3} - held[1]))]
    recs = bt.run_one(info, col, "random", 0, tmp_path / "work", 0)
    assert [r["what"] for r in recs] == ["fold0", "fold1", "held_out_ap", "mine"]
    assert recs[2]["held_out_ap50"] == 0.5 and recs[2]["split"] == "train"
    assert trained[1:] == [("fold0", sorted({1, 2, 3} - held[0])), ("fold1", sorted({1, 2, 3} - held[1]))]
    of = {i: f for f, ids in enumerate(held) for i in ids}
    assert measured == [(["fold0", "fold1"], of, "held out"), (["fold0", "fold1"], of, str(kept))]


def test_tree_report_shows_each_fold_model_and_the_held_out_ap(monkeypatch):
    """The held-out-fold table: per run, each fold model's dev AP50 with its training tiles, and the pooled held-out
    AP50 and AP on the training tiles; a protocol without fold records has no table."""
    monkeypatch.syspath_prepend(str(BENCH))
    import report_trees as rt

    base = {"column": "self_training_brl_folds", "protocol": "random", "seed": 0, "steps": 600, "anchor_scale": 2.0}
    recs = [{**base, "split": "dev", "what": "fold1", "fold": 1, "ap50": 0.25, "train_images": 14},
            {**base, "split": "dev", "what": "fold0", "fold": 0, "ap50": 0.2, "train_images": 10},
            {**base, "split": "train", "what": "held_out_ap", "held_out_ap50": 0.456, "held_out_ap": 0.123,
             "held_out_tiles": 36, "held_out_crowns": 636},
            {**base, "column": "brl", "split": "dev", "ap50": 0.3}]
    lines = rt.folds_table({"records": recs}, "random")
    assert lines[-1] == "| self_training_brl_folds | 600 | 0 | 20.0 (10), 25.0 (14) | 45.6 | 12.3 | 36 (636) |"
    assert rt.folds_table({"records": recs}, "partial") == []
    page = "\n".join(rt.section({"records": recs}))
    assert "| self_training_brl_folds | 600 | 0 | 20.0 (10), 25.0 (14) | 45.6 | 12.3 | 36 (636) |" in page
