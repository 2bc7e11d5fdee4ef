"""`lss train` end to end on CPU: the example config, exact resume after SIGKILL, Ctrl-C, and DDP.

All runs drive the real CLI in subprocesses (`python -m lss_cli`, and `torch.distributed.run` for
DDP), on a small synthetic dataset with the tiny model.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, make_train_data, run_lss

from lss_cli.runtime.checkpoint import load_checkpoint

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    """16 training clips of 4 classes and their concept bank (tiny model, seed 0)."""
    return make_train_data(tmp_path_factory.mktemp("train-data"))


def _small(root: Path, **extra: str) -> list[str]:
    """The example config with overrides for a fast run: 16 clips, batch 4, 4-frame global views,
    2 local views."""
    cfg = {"data.root": str(root), "loss.concepts": str(root / "concepts.safetensors"), "data.batch_size": "4",
           "data.num_workers": "0", "views.global_frames": "4", "views.local_views": "2",
           "views.local_frames": "[2]", "model.num_frames": "4", "optim.epochs": "2", "log.every": "1",
           "log.save_every": "2", "run.device": "cpu", "model.pretrained": "none", **extra}
    return [str(EXAMPLE), *(f"{k}={v}" for k, v in cfg.items())]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _metrics(run: Path) -> dict[int, dict]:
    """Last record per step (a resumed run rewrites the steps after its checkpoint)."""
    out = {}
    for line in (run / "metrics.jsonl").read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            out[r["step"]] = r
    return out


def _assert_checkpoints_whole(run: Path) -> None:
    from lss_cli.runtime.checkpoint import load_checkpoint

    ckpts = sorted((run / "checkpoints").glob("step_*"))
    assert ckpts
    for c in ckpts:
        ck = load_checkpoint(c)  # every file present and readable
        assert ck.step == int(c.name.split("_")[1])


@pytest.mark.slow
def test_example_config_from_a_fresh_directory(tmp_path):
    """The documented command (2 of its 20 epochs): generates the synthetic dataset and its bank
    when missing. Whether training *helps* is benchmarks/learning.py's question, not a loss curve's."""
    out = tmp_path / "run"
    r = run_lss("train", EXAMPLE, "optim.epochs=2", "log.every=1", "--output-dir", out, cwd=tmp_path,
                env={"OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "runs" / "data" / "synthetic" / "classes.txt").is_file()
    assert {"config.yaml", "env.json", "metrics.jsonl", "checkpoints"} <= {p.name for p in out.iterdir()}
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, 19))  # 144 clips / batch 16 x 2 epochs
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert (tmp_path / "runs" / "data" / "synthetic" / "concepts-lss-tiny-world-sentences.txt").is_file()
    _assert_checkpoints_whole(out)


def test_resume_after_sigkill_is_exact(tmp_path, small_data):
    args = _small(small_data, **{"optim.epochs": "3"})  # 12 steps, checkpoints every 2
    ref = tmp_path / "ref"
    r = run_lss("train", *args, "--output-dir", ref, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    expected = _metrics(ref)
    assert len(expected) == 12

    run = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "lss_cli", "train", *args, "--output-dir", str(run)],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        path = run / "metrics.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= 5:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed; make it longer"
    proc.send_signal(signal.SIGKILL)  # no chance to save or clean up
    proc.wait()
    _assert_checkpoints_whole(run)
    done_before = max(_metrics(run))
    assert done_before < 12

    r = run_lss("train", *args, "--output-dir", run, "--resume", env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got = _metrics(run)
    assert sorted(got) == list(range(1, 13))
    for step in range(1, 13):
        for key in ("loss", "cd_category", "cd_description", "ca", "uniform", "lr", "teacher_momentum"):
            assert got[step][key] == expected[step][key], (step, key)
    _assert_checkpoints_whole(run)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1], ids=lambda s: s.name)
def test_stop_signal_saves_and_exits_130(tmp_path, small_data, signum):
    """Ctrl-C, a scheduler's SIGTERM and SLURM's pre-time-limit SIGUSR1: the step finishes, a
    checkpoint at the last logged step is saved, the run says so and exits 130."""
    run = tmp_path / "interrupted"
    proc = subprocess.Popen([sys.executable, "-m", "lss_cli", "train", *_small(small_data, **{"optim.epochs": "20"}),
                             "--output-dir", str(run)], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        path = run / "metrics.jsonl"
        if path.is_file() and len(path.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert f"{signum.name}: stopped at step" in err and "--resume" in err
    from lss_cli.runtime.checkpoint import load_checkpoint

    last = load_checkpoint(run)
    assert last.step == max(_metrics(run)) and last.step < 80


def test_existing_run_dir_is_refused(tmp_path, small_data):
    run = tmp_path / "taken"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    r = run_lss("train", *_small(small_data), "--output-dir", run)
    assert r.returncode == 2 and "not empty" in r.stderr and "--resume" in r.stderr


def test_ddp_two_processes_match_one(tmp_path, small_data):
    """2 gloo ranks x batch 4 == 1 process x batch 8: same global batch, so the same losses, the
    same gradients (and so the same optimizer state).

    No warm-up and a large lr (0.8 at batch 256 -> 0.025 here), so step 1 really moves the weights
    and step 2's loss depends on it. Gradients are compared through their norm (logged before
    clipping) and AdamW's moment estimates after 2 steps, which scale with the gradient: a wrong
    gradient scale across ranks (a sum instead of a mean, a prior's all-reduce counted twice) fails
    here, where AdamW's scale invariance would hide it from the weights and the losses.
    Device-side augmentation is drawn per rank, so it is switched off here; crops and frame
    sampling are per sample (seeded by sample) and stay on."""
    common = _small(small_data, **{"views.flip_p": "0", "views.color_jitter_p": "0", "views.grayscale_p": "0",
                                   "optim.epochs": "1", "optim.warmup_epochs": "0", "optim.lr": "0.8",
                                   "optim.temporal_lr": "0.8"})
    one = tmp_path / "one"
    r = run_lss("train", *common, "data.batch_size=8", "--output-dir", one, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    two = tmp_path / "two"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(_free_port()),
                        "-m", "lss_cli", "train", *common, "data.batch_size=4", "--output-dir", str(two)],
                       env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = _metrics(one), _metrics(two)
    assert sorted(a) == sorted(b) == [1, 2]
    assert a[1]["lr"] > 0.02 and abs(a[2]["loss"] - a[1]["loss"]) > 1e-3  # step 1 moved the weights
    for step in a:
        for key in ("loss", "cd_category", "cd_description", "ca", "uniform", "grad_norm"):
            assert b[step][key] == pytest.approx(a[step][key], rel=1e-4, abs=1e-5), (step, key)
    _assert_same_moments(load_checkpoint(one), load_checkpoint(two))


def _assert_same_moments(one, two) -> None:
    """AdamW's moments after 2 steps (both steps' gradients, scale included) agree, each tensor to
    1e-3 of its own largest entry. Weights are not compared entry by entry: gradients that are zero
    in exact arithmetic (attention key biases) are float noise, which AdamW's first step turns into
    +-lr updates that differ between any two summation orders."""
    assert one.step == two.step == 2
    moments = 0
    for pid, state in one.optim["state"].items():
        for key in ("exp_avg", "exp_avg_sq"):
            x, y = state[key], two.optim["state"][pid][key]
            torch.testing.assert_close(y, x, rtol=0, atol=1e-3 * float(x.abs().max()) + 1e-12, msg=(pid, key))
            moments += int(x.abs().max() > 0)
    assert moments > 0
