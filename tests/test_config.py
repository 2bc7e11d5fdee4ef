from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lss_cli.config import (
    CONFIGS,
    DescribeConfig,
    TrainConfig,
    dump_yaml,
    from_dict,
    load_config,
    parse_override,
    to_dict,
)
from lss_cli.errors import ConfigError, InputFileError

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.yaml"))


def test_defaults_validate():
    for cls in CONFIGS.values():
        load_config(cls)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_load(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.optim.lr > 0


def test_precedence_defaults_yaml_overrides_flags(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  lr: 0.5\n  epochs: 7\nrun:\n  seed: 3\n")
    cfg = load_config(TrainConfig, f, ["optim.lr=0.25"], flags={"run.seed": 9, "run.name": None})
    assert cfg.optim.lr == 0.25  # override beats YAML
    assert cfg.optim.epochs == 7  # YAML beats default
    assert cfg.run.seed == 9  # explicit flag beats YAML
    assert cfg.run.name is None  # a flag left unset does not mask anything
    assert cfg.optim.min_lr == TrainConfig().optim.min_lr


def test_override_splits_on_first_equals_and_types_with_yaml():
    assert parse_override("run.name=a=b") == ("run.name", "a=b")
    assert parse_override("optim.epochs=3") == ("optim.epochs", 3)
    assert parse_override("views.local_frames=[4, 8]") == ("views.local_frames", [4, 8])
    assert parse_override("model.pretrained=null") == ("model.pretrained", None)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("optim.lr")


def test_float_accepts_exponent_without_dot():
    # YAML 1.1 reads 1e-4 as a string; users mean a number.
    assert load_config(TrainConfig, None, ["optim.lr=1e-4"]).optim.lr == pytest.approx(1e-4)


@pytest.mark.parametrize("override, fragment", [
    ("optim.lr=abc", "optim.lr: expected float"),
    ("optim.epochs=1.5", "optim.epochs: expected int"),
    ("model.grad_checkpointing=yes please", "expected bool"),
    ("model.temporal=divded", "'divded' is not one of"),
    ("views.global_scale=[0.4]", "expected 2 values"),
    ("views.local_frames=8", "expected a list"),
])
def test_wrong_types_name_the_key(override, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(TrainConfig, None, [override])


def test_unknown_keys_suggest_close_matches(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, None, ["optim.lrr=1"])
    assert "optim.lrr" in str(e.value) and "optim.lr" in e.value.hint
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        load_config(TrainConfig, None, ["nope.key=1"])
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  warmup_epoch: 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(TrainConfig, f)
    assert "optim.warmup_epoch" in str(e.value) and "optim.warmup_epochs" in e.value.hint


def test_cross_field_validation():
    with pytest.raises(ConfigError, match="multiple of data.batch_size"):
        load_config(TrainConfig, None, ["data.batch_size=6", "optim.global_batch=16"])
    with pytest.raises(ConfigError, match="local_frames"):
        load_config(TrainConfig, None, ["views.local_views=3", "views.local_frames=[4, 4]"])
    with pytest.raises(ConfigError, match="momentum"):
        load_config(TrainConfig, None, ["teacher.momentum=0.999", "teacher.momentum_end=0.99"])
    with pytest.raises(ConfigError, match="device"):
        load_config(DescribeConfig.__mro__[0] and TrainConfig, None, ["run.device=gpu"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(InputFileError, match="not found: .*missing.yaml"):
        load_config(TrainConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim: [1, 2\n")
    with pytest.raises(InputFileError, match="not valid YAML"):
        load_config(TrainConfig, bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(InputFileError, match="mapping"):
        load_config(TrainConfig, lst)


def test_dump_round_trip():
    cfg = load_config(TrainConfig, None, ["views.local_frames=[4, 8, 8, 8, 8, 8, 8, 8]", "optim.lr=3e-5"])
    again = from_dict(TrainConfig, yaml.safe_load(dump_yaml(cfg)))
    assert again == cfg
    assert to_dict(again)["views"]["global_scale"] == [0.4, 1.0]
