"""`lss train` under faults, through the real CLI: a resume whose newest checkpoints are gone or
damaged, a resume with a changed config, `--overwrite` of a finished run, Ctrl-C with --quiet and
before training starts, and a training list none of whose videos can be read.

One short run (8 steps, checkpoints at steps 4, 6 and 8) is trained once; each test works on its
own copy.
"""

from __future__ import annotations

import datetime
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, counting_batches, die_when_asked, make_train_data, run_lss

from lss_cli.config import TrainConfig
from lss_cli.train import loop

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"
ENV = {"OMP_NUM_THREADS": "1"}
STEPS = ("step_00000004", "step_00000006", "step_00000008")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    """16 training clips of 4 classes and their concept bank (tiny model, seed 0)."""
    return make_train_data(tmp_path_factory.mktemp("train-data"))


def _args(root: Path, *extra: str) -> list[str]:
    """A fast run: 16 clips, batch 4 (4 steps an epoch), 2 epochs, a checkpoint every 2 steps."""
    cfg = {"data.root": str(root), "loss.concepts": str(root / "concepts.safetensors"), "data.batch_size": "4",
           "data.num_workers": "0", "views.global_frames": "4", "views.local_views": "2",
           "views.local_frames": "[2]", "model.num_frames": "4", "optim.epochs": "2", "log.every": "1",
           "log.save_every": "2", "log.keep_last": "3", "run.device": "cpu", "model.pretrained": "none"}
    return [str(EXAMPLE), *(f"{k}={v}" for k, v in cfg.items()), *extra]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("trained") / "run"
    r = run_lss("train", *_args(data), "--output-dir", run, env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(p.name for p in (run / "checkpoints").glob("step_*")) == list(STEPS)
    return run


@pytest.fixture
def run(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _losses(run: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in _metrics(run)}


def _resume(data: Path, run: Path, *extra: str) -> subprocess.CompletedProcess:
    return run_lss("train", *_args(data, *extra), "--output-dir", run, "--resume", env=ENV)


def _said(r: subprocess.CompletedProcess, text: str) -> bool:
    """`text` is on stderr, whatever the console's line wrapping did to it."""
    return "".join(text.split()) in "".join(r.stderr.split())


def _assert_anticipated(r: subprocess.CompletedProcess) -> None:
    assert "unexpected" not in r.stderr and "Traceback" not in r.stderr and "probably a bug" not in r.stderr, r.stderr


# --------------------------------------------------------------------------------------------
# --resume chooses the newest intact checkpoint
# --------------------------------------------------------------------------------------------


def test_resume_without_its_newest_checkpoint_falls_back(data, run, trained):
    shutil.rmtree(run / "checkpoints" / "step_00000008")  # `last` still names it
    r = _resume(data, run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _said(r, "skipped step_00000008: named by checkpoints/last but missing")
    assert _said(r, "resuming from step_00000006") and _said(r, "(step 6)")
    assert _losses(run) == _losses(trained)  # steps 7 and 8 redone exactly
    assert [m["step"] for m in _metrics(run)] == list(range(1, 9))


def test_resume_skips_damaged_checkpoints(data, run, trained):
    ckpts = run / "checkpoints"
    torch.save({"state": {}, "param_groups": [], "x": datetime.datetime(2020, 1, 1)}, ckpts / STEPS[2] / "optim.pt")
    student = ckpts / STEPS[1] / "student.safetensors"
    student.write_bytes(student.read_bytes()[:100])  # cut short
    r = _resume(data, run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _said(r, "skipped step_00000008: optim.pt: not plain tensor data")
    assert _said(r, "step_00000006: student.safetensors:")
    assert _said(r, "resuming from step_00000004")
    assert _losses(run) == _losses(trained)


def test_resume_refuses_when_no_checkpoint_is_intact(data, run):
    for name in STEPS:
        (run / "checkpoints" / name / "rng.pt").write_bytes(b"")
    config = (run / "config.yaml").read_bytes()
    r = _resume(data, run)
    assert r.returncode == 1
    _assert_anticipated(r)
    assert _said(r, "no intact checkpoint") and all(_said(r, f"{name}: rng.pt: empty") for name in STEPS)
    assert "--overwrite" in r.stderr
    assert (run / "config.yaml").read_bytes() == config


# --------------------------------------------------------------------------------------------
# --resume with a different config
# --------------------------------------------------------------------------------------------


def test_resume_with_a_changed_config_is_refused_before_any_work(data, run):
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = _resume(data, run, "optim.epochs=3", "data.batch_size=2", "model.temporal=mean")
    assert r.returncode == 2
    _assert_anticipated(r)
    for change in ("optim.epochs: 2 -> 3", "data.batch_size: 4 -> 2", 'model.temporal: "divided" -> "mean"'):
        assert _said(r, change)
    assert "--allow-config-change" in r.stderr
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # config.yaml, metrics, checkpoints: untouched

    # Where and how the run executes and what it logs may change: the resume goes on (nothing
    # is left to train).
    r = _resume(data, run, "log.every=2", "data.num_workers=1", "log.keep_last=5")
    assert r.returncode == 0, r.stderr[-3000:]


def test_an_accepted_config_change_resumes_and_keeps_the_old_config(data, run, trained):
    r = _resume(data, run, "optim.epochs=3", "--allow-config-change")
    assert r.returncode == 0, r.stderr[-3000:]
    assert _said(r, "optim.epochs: 2 -> 3") and _said(r, "the run is no longer an exact continuation")
    assert [m["step"] for m in _metrics(run)] == list(range(1, 13))
    config = (run / "config.yaml").read_text()
    assert "epochs: 3" in config
    assert "allow_config_change: false" in config  # a one-time permission, not part of the run's config
    assert (run / "config.until-step-00000008.yaml").read_bytes() == (trained / "config.yaml").read_bytes()


def test_an_accepted_change_the_checkpoint_does_not_fit_is_an_error(data, run):
    r = _resume(data, run, "model.temporal=mean", "--allow-config-change")
    assert r.returncode == 1
    _assert_anticipated(r)
    assert _said(r, f"checkpoint {run / 'checkpoints' / 'step_00000008'} does not fit")


# --------------------------------------------------------------------------------------------
# --overwrite
# --------------------------------------------------------------------------------------------


def test_overwrite_starts_clean_and_keeps_the_old_run_aside(data, run, trained):
    r = run_lss("train", *_args(data, "optim.epochs=1"), "--output-dir", run, "--overwrite", env=ENV)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [m["step"] for m in _metrics(run)] == [1, 2, 3, 4]  # no line of the old run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last", "step_00000002", "step_00000004"]
    (aside,) = run.glob("replaced-*")
    assert _said(r, f"moved the previous run's checkpoints/, metrics.jsonl to {aside}")
    assert (aside / "metrics.jsonl").read_bytes() == (trained / "metrics.jsonl").read_bytes()
    assert sorted(p.name for p in (aside / "checkpoints").glob("step_*")) == list(STEPS)


# --------------------------------------------------------------------------------------------
# Ctrl-C
# --------------------------------------------------------------------------------------------


def test_ctrl_c_says_where_the_run_stopped_even_with_quiet(data, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group (the loader's workers too)."""
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "lss_cli", "train", *_args(data, "optim.epochs=50",
                             "data.num_workers=2"), "--output-dir", str(run), "--quiet"],
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **ENV}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            path = run / "metrics.jsonl"
            if path.is_file() and len(path.read_text().splitlines()) >= 2:
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    step = max(m["step"] for m in _metrics(run))
    assert f"SIGINT: stopped at step {step}, checkpoint saved; continue with --resume" in err  # one plain line
    assert (run / "checkpoints" / f"step_{step:08d}").is_dir()


def test_ctrl_c_before_training_starts_is_reported(monkeypatch, capsys):
    def interrupted_setup(cfg):
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "setup", interrupted_setup)
    with pytest.raises(KeyboardInterrupt):
        loop.train(TrainConfig())
    assert "SIGINT: stopped before training started; nothing was saved" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Unreadable training videos
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def unreadable(data, tmp_path_factory) -> Path:
    """The training list of `data`, every file replaced by text."""
    root = tmp_path_factory.mktemp("unreadable")
    shutil.copy(data / "classes.txt", root / "classes.txt")
    shutil.copy(data / "concepts.safetensors", root / "concepts.safetensors")
    lines = (data / "train.txt").read_text().splitlines()
    for line in lines:
        path = root / line.split()[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("not a video\n")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("workers", [0, 2])
def test_no_readable_training_video_is_an_anticipated_error(unreadable, tmp_path, workers):
    r = run_lss("train", *_args(unreadable, f"data.num_workers={workers}"), "--output-dir", tmp_path / "run",
                "--quiet", env=ENV)
    assert r.returncode == 1
    _assert_anticipated(r)
    assert "Caught LssError" not in r.stderr and "worker" not in r.stderr
    first = unreadable / (unreadable / "train.txt").read_text().split()[0]
    assert _said(r, f"none of the 16 training videos could be read (first: {first}: ")
    assert _said(r, "lss data check")


# --------------------------------------------------------------------------------------------
# A data-loading worker killed (the kernel's out-of-memory killer does it without a word)
# --------------------------------------------------------------------------------------------


class _DiesAt(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 8

    def __getitem__(self, i: int) -> int:
        if i == 5:
            os.kill(os.getpid(), signal.SIGKILL)
        return i


def test_a_killed_worker_is_named_and_other_errors_are_not():
    from lss_cli.data.loader import stop_workers, worker_death

    # Plain ints (no tensors): a tensor sent just before the death would come as a ConnectionResetError.
    it = iter(torch.utils.data.DataLoader(_DiesAt(), num_workers=1, collate_fn=lambda batch: batch))
    try:
        with pytest.raises(RuntimeError) as e:
            list(it)
    finally:
        stop_workers(it)  # else PyTorch raises the death again at the next SIGCHLD, anywhere
    died = worker_death(e.value, "then rerun")
    assert died is not None and died.message.startswith("a data-loading process died: DataLoader worker (pid")
    assert "out-of-memory" in died.hint and died.hint.endswith("then rerun")
    assert worker_death(RuntimeError("CUDA error: device-side assert triggered"), "x") is None
    assert worker_death(ValueError("DataLoader worker"), "x") is None


def test_training_whose_worker_is_killed_saves_its_steps_and_says_what_happened(data, tmp_path, monkeypatch):
    """The model is intact when only its data feed dies while the step waits for a batch: the
    finished steps are saved (they used to be lost to an "unexpected RuntimeError, probably a bug")
    and the error says how to go on. The worker dies only once the training has asked for the 4th
    batch, so the death surfaces where it waits (PyTorch's SIGCHLD handler could raise it anywhere)."""
    from lss_cli.config import load_config
    from lss_cli.data import loader
    from lss_cli.errors import LssError

    asked = tmp_path / "asked"  # how many batches the training has asked for
    plain_item, plain_iter = loader.TrainClips.__getitem__, loader.TrainLoader.__iter__
    calls, loaders = [], []

    def item(self, key):
        calls.append(key)
        if len(calls) == 13:  # the first sample of the 4th batch of 4, inside the worker
            die_when_asked(asked, 4)
        return plain_item(self, key)

    def counting(self):
        loaders.append(self)
        return counting_batches(plain_iter(self), asked)

    monkeypatch.setattr(loader.TrainClips, "__getitem__", item)
    monkeypatch.setattr(loader.TrainLoader, "__iter__", counting)
    args = _args(data, "data.num_workers=1", "log.save_every=100", f"run.output_dir={tmp_path / 'run'}")
    with pytest.raises(LssError) as e:
        loop.train(load_config(TrainConfig, args[0], args[1:]))
    assert e.value.message.startswith("a data-loading process died: DataLoader worker (pid")
    assert f"lss train {tmp_path / 'run'} --resume" in e.value.hint
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step_*")) == ["step_00000003"]
    # The workers are shut down at once (PyTorch would otherwise raise the death again at a later
    # child-process signal): the DataLoader's own iterator, not the generator `iter(loader)` returns.
    (train_loader,) = loaders
    assert train_loader._iterator is not None and train_loader._iterator._shutdown
