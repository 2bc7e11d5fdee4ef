"""What a training run shows: a plain progress line per logged step when stderr is not a terminal
(a SLURM log, `2> train.log`), the loss in the terminal's progress bar, and a final summary."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import ROOT, make_train_data, run_lss

from lss_cli.train.loop import _duration, step_line

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_train_data(tmp_path_factory.mktemp("train-data"))


def _args(data: Path, *extra: str) -> list[str]:
    """A fast CPU run of the example config: 16 clips, 4-frame global views, 2 local views."""
    return [str(EXAMPLE), f"data.root={data}", f"loss.concepts={data / 'concepts.safetensors'}", "data.num_workers=0",
            "views.global_frames=4", "views.local_views=2", "views.local_frames=[2]", "model.num_frames=4",
            "run.device=cpu", "model.pretrained=none", *extra]


def test_a_run_redirected_to_a_file_shows_its_progress_there(data, tmp_path):
    run = tmp_path / "run"
    r = run_lss("train", *_args(data, "data.batch_size=4", "optim.epochs=2", "log.every=2"), "--output-dir", str(run),
                "--json", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    # stderr is a pipe here, as in a batch job: one plain line per logged step, no progress bar.
    lines = [x for x in r.stderr.splitlines() if x.startswith("step ")]
    assert [x.split()[1] for x in lines] == ["2/8", "4/8", "6/8", "8/8"]
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert f"loss {records[-1]['loss']:.4f} (cd_category" in lines[-1] and "clips/s" in lines[-1]
    assert "ETA" in lines[0]
    summary = json.loads(r.stdout)
    assert summary["final_loss"] == round(records[-1]["loss"], 4)
    assert summary["wall_s"] > 0 and summary["clips_per_s"] > 0 and summary["steps"] == 8


def test_quiet_runs_print_no_step_lines(data, tmp_path):
    r = run_lss("train", *_args(data, "data.batch_size=8", "optim.epochs=1", "log.every=1"), "--output-dir",
                str(tmp_path / "run"), "--quiet", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    assert not [x for x in r.stderr.splitlines() if x.startswith("step ")]


def test_step_line_reads_at_a_glance():
    record = {"step": 120, "epoch": 2, "loss": 8.02564, "cd_category": 2.0, "cd_description": 4.0, "ca": 2.0,
              "uniform": 0.002, "lr": 0.000625, "clips_per_s": 26.13, "gpu_mem_gib": 12.34, "grad_norm": 0.6}
    assert step_line(record, 1800, eta_s=3725) == (
        "step 120/1800 epoch 2 | loss 8.0256 (cd_category 2.0000, cd_description 4.0000, ca 2.0000, "
        "uniform 0.0020) | lr 0.000625 | 26.1 clips/s | ETA 1h02m | gpu 12.3 GiB")
    cpu = {k: v for k, v in record.items() if k != "gpu_mem_gib"}
    assert step_line(cpu, 1800, eta_s=None).endswith("| 26.1 clips/s")
    assert (_duration(12), _duration(245), _duration(3725)) == ("12s", "4m05s", "1h02m")


def test_resume_needs_only_the_run_dir(data, tmp_path):
    # `lss train --resume -o RUN` used the built-in defaults ("concept bank not found:
    # concepts.safetensors"); the run's own config.yaml is what it means.
    run = tmp_path / "run"
    r = run_lss("train", *_args(data, "data.batch_size=8", "optim.epochs=1", "log.every=1"), "--output-dir", str(run),
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr
    for args in (["--resume", "--output-dir", str(run)], [str(run), "--resume"]):
        r = run_lss("train", *args, "--json", env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["steps"] == 2 and json.loads(r.stdout)["run_dir"] == str(run)
    r = run_lss("train", str(run), "--resume", "optim.epochs=3")  # overrides are checked like any resume
    assert r.returncode == 2 and "optim.epochs: 1 -> 3" in r.stderr
    r = run_lss("train", str(run))
    assert r.returncode == 2 and f"lss train {run} --resume" in r.stderr


def test_a_shipped_config_can_be_named(tmp_path):
    r = run_lss("config", "show", "synthetic_tiny", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["model"]["name"] == "lss-tiny"
    r = run_lss("train", "synthetic_tiny", "--dry-run", cwd=tmp_path)
    assert "config file not found" not in r.stderr
    r = run_lss("config", "show", "no_such_config", cwd=tmp_path)
    assert r.returncode == 2 and "synthetic_tiny" in r.stderr
