"""The minedet command: help everywhere, train -> eval -> predict round trip, one-line errors."""

from __future__ import annotations

import json

import pytest

from minedet.cli import build_parser, main


def _subcommands(parser):
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            yield name, sub
            if sub._subparsers is not None:
                for n2, s2 in _subcommands(sub):
                    yield f"{name} {n2}", s2


def test_every_command_has_help_for_every_option(capsys):
    parser = build_parser()
    names = dict(_subcommands(parser))
    assert {"demo", "train", "eval", "predict", "mine", "data", "data sparsify", "data digits"} <= set(names)
    for name, sub in names.items():
        for action in sub._actions:
            import argparse

            if action.dest == "help" or isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"'minedet {name}' option {action.dest} has no help"
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "torchrun" in out
    # an option whose None stands for a value says which; one whose None is "off" says nothing more
    assert "pseudo_regress=None (the detector's)" in out and "nms=None (the detector's)" in out
    assert "ignore_below=None," in out and "part='auto' (the detector's)" in out


def test_train_eval_predict_round_trip(tiny_digits, tmp_path, capsys):
    import yaml

    from tests.conftest import tiny_config

    cfg = tiny_config(tiny_digits, tmp_path / "run", train__max_steps=2)
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg.as_dict()))
    assert main(["train", str(path), "train.log_every=1"]) == 0
    out = capsys.readouterr().out
    assert "pycocotools AP" in out and "model:" in out
    # the printed resume command continues the run (here two steps more)
    resume = next(line.split(None, 1)[1] for line in out.splitlines() if line.startswith("resume:"))
    assert resume.startswith("minedet train ") and "config.json --resume" in resume
    assert main([*resume.split()[1:], "train.max_steps=4"]) == 0
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
             if "loss" in json.loads(line)]
    assert steps[-1] == 4 and steps.count(1) == 1  # not started again from step 1
    evals = [m for m in map(json.loads, (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) if "ap" in m]
    summary = json.loads((tmp_path / "run" / "eval.json").read_text())
    final = summary["eval"][summary["roles"][0]]["per_class"]
    measured = {f"ap_class/{name}": ap for name, ap in final.items() if ap is not None}  # a class absent from val: none
    assert measured and {k: evals[-1][k] for k in evals[-1] if k.startswith("ap_class/")} == measured
    capsys.readouterr()
    model = tmp_path / "run" / "model.pt"
    assert (tmp_path / "run" / "pr_curve.png").stat().st_size > 1000 and (tmp_path / "run" / "confusion.png").exists()
    assert main(["eval", str(model), str(tiny_digits.val_json), "--images", str(tiny_digits.image_root),
                 "--out", str(tmp_path / "ev.json"), "--plot", str(tmp_path / "plots")]) == 0
    rep = json.loads((tmp_path / "ev.json").read_text())
    assert 0.0 <= rep["ap"] <= 1.0 and set(rep["per_class"]) == {str(i) for i in range(10)}
    assert set(rep["pr50"]) <= set(rep["per_class"]) and len(rep["confusion"]) == 11
    n_boxes = len(json.loads(tiny_digits.val_json.read_text())["annotations"])
    assert sum(sum(row) for row in rep["confusion"][:10]) == n_boxes  # every val box paired or missed, once
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion.png", "pr_curve.png"]
    (tmp_path / "a_file").write_text("x")
    assert main(["eval", str(model), str(tiny_digits.val_json), "--plot", str(tmp_path / "a_file")]) == 2
    assert "a_file" in capsys.readouterr().err
    pred = tmp_path / "pred"
    assert main(["predict", str(model), str(tiny_digits.image_root / "val"), "--out", str(pred), "--score", "0.0"]) == 0
    det = json.loads((pred / "detections.json").read_text())
    assert len(det["images"]) == 6 and len(list(pred.glob("*.png"))) == 6
    assert all(len(r["bbox"]) == 4 for r in det["results"])


def test_errors_are_one_line_with_status_2(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "nope.pt"), str(tmp_path / "nope.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "nope.pt" in err and "Traceback" not in err
    bad = tmp_path / "model.pt"
    bad.write_bytes(b"not a checkpoint")
    assert main(["predict", str(bad), str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "not a readable minedet checkpoint" in capsys.readouterr().err
    assert main(["train", "digits_retinanet", "train.max_step=3"]) == 2
    assert "did you mean 'max_steps'" in capsys.readouterr().err
    # an output path that cannot be written: one line naming it, no traceback
    coco = tmp_path / "t.json"
    coco.write_text(json.dumps({"images": [{"id": 1, "file_name": "a.png", "width": 9, "height": 9}],
                                "annotations": [], "categories": [{"id": 1, "name": "x"}]}))
    (tmp_path / "a_file").write_text("")
    assert main(["data", "stats", str(coco), "--plot", str(tmp_path / "a_file" / "x.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "a_file" in err and "Traceback" not in err


def test_each_command_is_built_from_the_module_the_table_names() -> None:
    """``minedet COMMAND`` builds only its own group's parser (minedet.cli._GROUPS): the table must
    name exactly the commands each module registers."""
    import argparse
    import importlib

    from minedet.cli import _GROUPS, build_parser

    for group, commands in _GROUPS.items():
        sub = argparse.ArgumentParser().add_subparsers()
        importlib.import_module(f"minedet.cli.{group}").register(sub)
        assert tuple(sub.choices) == commands, group
        for c in commands:
            assert c in build_parser(c)._subparsers._group_actions[0].choices
