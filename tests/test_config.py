"""Configs: presets load, overrides apply, unknown keys are one-line errors with a suggestion."""

from __future__ import annotations

import pytest

from minedet.registry import build_method
from minedet.config import PRESETS_DIR, apply_overrides, build_config, load_config, preset_path
from minedet.errors import MinedetError
from tests.helpers import tiny_detector


@pytest.mark.parametrize("preset", sorted(p.stem for p in PRESETS_DIR.glob("*.yaml")))
def test_every_preset_loads_and_its_method_builds(preset):
    cfg = load_config(preset_path(preset))
    if cfg.method["name"] == "stac":  # STAC needs the exported supervised model it relabels with
        with pytest.raises(MinedetError, match="teacher"):
            build_method(cfg.method, tiny_detector(cfg.model.name, num_classes=10))
        return
    method = build_method(cfg.method, tiny_detector(cfg.model.name, num_classes=10))
    assert method.name == cfg.method["name"]


def test_overrides_are_parsed_as_yaml_scalars():
    cfg = load_config(preset_path("digits_retinanet"), ["train.max_steps=7", "train.milestones=[3, 5]",
                                                         "model.pretrained=false", "method.name=co_mining", "method.tau=0.5"])
    assert cfg.train.max_steps == 7 and cfg.train.milestones == [3, 5]
    assert cfg.model.pretrained is False
    assert cfg.method == {"name": "co_mining", "tau": 0.5}


def test_unknown_key_suggests_the_nearest():
    with pytest.raises(MinedetError, match=r"unknown key train.max_step; did you mean 'max_steps'\?"):
        build_config({"train": {"max_step": 3}})
    with pytest.raises(MinedetError, match=r"unknown section 'trian'; did you mean 'train'"):
        build_config({"trian": {}})


def test_unknown_method_option_is_an_error():
    cfg = build_config({"method": {"name": "co_mining", "tua": 0.5}})
    with pytest.raises(MinedetError, match=r"unknown key method.tua; did you mean 'tau'"):
        build_method(cfg.method, tiny_detector("retinanet"))
    with pytest.raises(MinedetError, match="unknown method 'co_minig'; did you mean 'co_mining'"):
        build_method({"name": "co_minig"}, tiny_detector("retinanet"))


def test_wrong_types_are_errors():
    with pytest.raises(MinedetError, match="train.max_steps must be an integer"):
        build_config({"train": {"max_steps": "ten"}})
    with pytest.raises(MinedetError, match="train.lr must be a number"):
        build_config({"train": {"lr": "fast"}})
    with pytest.raises(MinedetError, match="must look like key.sub=value"):
        apply_overrides({}, ["train.lr"])
    # a switch that may also be left to a default (null) still takes only true or false
    det = tiny_detector("retinanet")
    with pytest.raises(MinedetError, match="method.pseudo_regress must be true or false, got 'yes'"):
        build_method({"name": "co_mining", "pseudo_regress": "yes"}, det)
    assert build_method({"name": "co_mining", "pseudo_regress": None}, det).options.pseudo_regress is None


def test_bad_yaml_file_is_one_line(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(MinedetError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "\n" not in str(e.value)


def test_yaml_is_loaded_safely(tmp_path):
    p = tmp_path / "evil.yaml"
    p.write_text("train: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(MinedetError, match="not valid YAML"):
        load_config(p)


def test_unknown_preset():
    with pytest.raises(MinedetError, match="did you mean 'digits_retinanet'"):
        preset_path("digits_retinet")
