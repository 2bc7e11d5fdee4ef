from __future__ import annotations

import json

import pytest

from lss_cli.config import TrainConfig, dump_yaml, load_config
from lss_cli.errors import ConfigError
from lss_cli.runtime.metrics import MetricsWriter, read_metrics
from lss_cli.runtime.rundir import default_run_dir, prepare_run_dir, write_run_files


def test_run_dir_rules(tmp_path):
    run = tmp_path / "run"
    prepare_run_dir(run)  # new: fine
    prepare_run_dir(run)  # empty: fine
    (run / "x").write_text("1")
    with pytest.raises(ConfigError, match="not empty") as e:
        prepare_run_dir(run)
    assert "--resume" in e.value.hint and "--overwrite" in e.value.hint
    prepare_run_dir(run, resume=True)
    prepare_run_dir(run, overwrite=True)
    assert (run / "x").read_text() == "1"  # overwrite never deletes what is there
    with pytest.raises(ConfigError, match="cannot resume"):
        prepare_run_dir(tmp_path / "nothing", resume=True)
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="not a directory"):
        prepare_run_dir(tmp_path / "file")


def test_default_run_dir_layout():
    p = default_run_dir("train", "abc")
    assert p.parts[0] == "runs" and p.parts[1] == "train" and p.name.endswith("-abc")


def test_run_files(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-SECRET-should-not-appear")
    cfg = load_config(TrainConfig)
    write_run_files(tmp_path, dump_yaml(cfg), device="cpu")
    env = json.loads((tmp_path / "env.json").read_text())
    assert env["device"] == "cpu" and env["versions"]["torch"] and "argv" in env
    assert "SECRET" not in (tmp_path / "env.json").read_text()
    assert load_config(TrainConfig, tmp_path / "config.yaml") == cfg


def test_metrics_writer_tolerates_torn_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as m:
        m.write({"step": 1, "loss": 2.0})
        m.write({"step": 2, "loss": float("nan")})
    with open(path, "a") as f:
        f.write('{"step": 3, "lo')
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2] and rows[1]["loss"] is None


def test_seeding_is_per_rank():
    import torch

    from lss_cli.runtime.seeding import seed_everything

    seed_everything(5, rank=0)
    a = torch.rand(3)
    seed_everything(5, rank=1)
    b = torch.rand(3)
    seed_everything(5, rank=0)
    assert torch.equal(a, torch.rand(3)) and not torch.equal(a, b)


def test_device_resolution():
    from lss_cli.runtime.device import resolve_device

    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(ConfigError):
        resolve_device("tpu")
    import torch

    if not torch.cuda.is_available():
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda:0")


def test_tensorboard_mirror_or_clear_error(tmp_path):
    from lss_cli.runtime.metrics import tensorboard_writer_class

    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="tensorboard") as e:
            MetricsWriter(tmp_path / "m.jsonl", tensorboard=True)
        assert "lss-cli[tensorboard]" in e.value.hint
        return
    tensorboard_writer_class()
    with MetricsWriter(tmp_path / "m.jsonl", tensorboard=True) as m:
        m.write({"step": 1, "loss": 2.0})
    assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())
