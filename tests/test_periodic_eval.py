"""`eval.every`: the teacher's zero-shot accuracy on a held-out list during training, and
checkpoints/best.

The runs drive the real CLI on the small synthetic training set with the tiny model. The held-out
list of the evaluated runs is the bad_dataset's: 12 readable clips and 4 unreadable entries.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
from conftest import BAD, ROOT, make_train_data, run_lss

import lss_cli.train.periodic_eval as pe
from lss_cli.config import TrainConfig, load_config
from lss_cli.errors import ConfigError, LssError
from lss_cli.runtime.checkpoint import (
    BEST,
    best_meta,
    load_checkpoint,
    load_newest_intact,
    save_best_checkpoint,
    save_checkpoint,
)
from lss_cli.train.periodic_eval import held_out_videos

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
LOSS_KEYS = ("loss", "cd_category", "cd_description", "ca", "uniform", "grad_norm", "teacher_entropy_category",
             "teacher_mean_entropy_category", "lr", "teacher_momentum")


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> Path:
    return make_train_data(tmp_path_factory.mktemp("train-data"))


def _args(data: Path, *extra: str) -> list[str]:
    """12 optimizer steps of the example config on 16 clips (batch 4, 3 epochs), every step logged."""
    return [str(EXAMPLE), f"data.root={data}", f"loss.concepts={data / 'concepts.safetensors'}", "data.batch_size=4",
            "data.num_workers=0", "views.global_frames=4", "views.local_views=2", "views.local_frames=[2]",
            "model.num_frames=4", "optim.epochs=3", "log.every=1", "log.save_every=2", "log.keep_last=10",
            "run.device=cpu", "model.pretrained=none", *extra]


def _eval_args(held_out: Path) -> list[str]:
    """Evaluations at steps 5, 10 and 12 (the last) on the bad_dataset's test list."""
    return ["eval.every=5", "eval.dataset=list", f"eval.root={held_out}", f"eval.list_file={held_out / 'test.txt'}",
            "eval.num_workers=0", "eval.num_frames=4"]


def _records(run: Path) -> dict[int, dict]:
    return {r["step"]: r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory, small_data, bad_dataset) -> dict[str, Path]:
    """The same 12 steps without and with evaluations."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    for name, extra in (("off", []), ("on", _eval_args(bad_dataset))):
        r = run_lss("train", *_args(small_data, *extra), "--output-dir", root / name, "--json", env={"OMP_NUM_THREADS": "1"})
        assert r.returncode == 0, r.stderr[-3000:]
        (root / name / "summary.json").write_text(r.stdout)
        (root / name / "stderr.txt").write_text(r.stderr)
        out[name] = root / name
    return out


def test_evaluations_do_not_change_the_training(runs):
    off, on = _records(runs["off"]), _records(runs["on"])
    assert sorted(off) == sorted(on) == list(range(1, 13))  # still one line per logged step
    for step in off:
        for key in LOSS_KEYS:
            assert on[step][key] == off[step][key], (step, key)  # bit for bit
    # The teacher and every RNG training draws from end the same (the eval loader draws a seed from
    # torch's generator: without the fork of the RNGs, the checkpoint's torch state differs).
    a, b = load_checkpoint(runs["off"]), load_checkpoint(runs["on"])
    assert all(torch.equal(a.teacher[k], b.teacher[k]) for k in a.teacher)
    assert torch.equal(a.rng["torch"], b.rng["torch"]) and a.rng["numpy"]["pos"] == b.rng["numpy"]["pos"]
    assert a.rng["python"] == b.rng["python"]


def test_evaluations_are_logged_at_their_steps_with_unreadable_videos_counted(runs):
    on = _records(runs["on"])
    evaluated = [s for s, r in on.items() if "eval_top1" in r]
    assert evaluated == [5, 10, 12]  # every 5 steps, and the last
    for s in evaluated:
        r = on[s]
        assert r["eval_videos"] == 16 and r["eval_unreadable"] == 4  # the 4 bad entries count as errors
        assert 0 <= r["eval_top1"] <= 12 / 16 and r["eval_top1"] <= r["eval_top5"] <= 12 / 16
        assert r["eval_s"] > 0
    assert not any(k.startswith("eval_") for k in _records(runs["off"])[12])
    err = (runs["on"] / "stderr.txt").read_text()
    assert err.count("held-out videos are unreadable and count as errors") == 3
    assert any(bad in err for bad in BAD)


def test_the_best_evaluation_is_kept_as_a_checkpoint(runs):
    on = _records(runs["on"])
    evaluated = {s: r["eval_top1"] for s, r in on.items() if "eval_top1" in r}
    best_step = max(evaluated, key=lambda s: (evaluated[s], -s))  # the first step with the best value
    meta = best_meta(runs["on"] / "checkpoints")
    assert meta["step"] == best_step and meta["best"] == {"metric": "top1", "value": evaluated[best_step],
                                                          "step": best_step, "videos": 16}
    assert all(on[s]["eval_best_step"] in evaluated for s in evaluated)
    assert on[12]["eval_best_step"] == best_step
    best = load_checkpoint(runs["on"] / "checkpoints" / BEST)  # a whole checkpoint: export and eval read it
    assert best.step == best_step and set(best.teacher) == set(load_checkpoint(runs["on"]).teacher)
    summary = json.loads((runs["on"] / "summary.json").read_text())
    assert summary["best_checkpoint"] == str(runs["on"] / "checkpoints" / BEST)
    assert "best_checkpoint" not in json.loads((runs["off"] / "summary.json").read_text())
    assert not (runs["off"] / "checkpoints" / BEST).exists()


def test_a_resumed_run_knows_the_best_so_far(runs, small_data, bad_dataset, tmp_path):
    """Resume at step 6 of a run whose best says 1.0 (no evaluation here reaches it): the
    evaluations at steps 10 and 12 must not replace it, and the losses replay exactly."""
    run = tmp_path / "resumed"
    shutil.copytree(runs["on"], run)
    for step in (8, 10, 12):
        shutil.rmtree(run / "checkpoints" / f"step_{step:08d}")
    (run / "checkpoints" / "last").write_text("step_00000006\n")
    meta_path = run / "checkpoints" / BEST / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["best"]["value"] = 1.0
    meta_path.write_text(json.dumps(meta))
    r = run_lss("train", *_args(small_data, *_eval_args(bad_dataset)), "--output-dir", run, "--resume",
                env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    got, ref = _records(run), _records(runs["on"])
    assert sorted(got) == list(range(1, 13))
    for step in got:
        for key in (*LOSS_KEYS, "eval_top1"):
            assert got[step].get(key) == ref[step].get(key), (step, key)
    assert got[10]["eval_best_step"] == got[12]["eval_best_step"] == meta["step"]
    assert json.loads(meta_path.read_text()) == meta  # untouched
    assert f"best top1 1.0000 at step {meta['step']}" in r.stderr


@pytest.mark.slow
def test_ddp_ranks_evaluate_together(tmp_path, small_data, bad_dataset):
    """2 gloo ranks: each evaluates its shard, the features are gathered, training goes on in step
    (a rank left out of the gather would hang the run until the timeout)."""
    run = tmp_path / "ddp"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", str(port),
                        "-m", "lss_cli", "train", *_args(small_data, *_eval_args(bad_dataset), "data.batch_size=2",
                                                          "optim.epochs=1"),
                        "--output-dir", str(run)], env=ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    rec = _records(run)
    assert sorted(rec) == list(range(1, 5)) and [s for s in rec if "eval_top1" in rec[s]] == [4]
    assert rec[4]["eval_videos"] == 16 and rec[4]["eval_unreadable"] == 4  # both shards counted
    assert best_meta(run / "checkpoints")["step"] == 4


# ---- the held-out list, the config, the best checkpoint ----------------------------------------


def _cfg(*overrides: str) -> TrainConfig:
    return load_config(TrainConfig, None, list(overrides))


def test_the_held_out_list_is_checked_and_capped(synth_dataset, bad_dataset, tmp_path):
    cfg = _cfg("data.dataset=synthetic", f"data.root={synth_dataset}", "eval.every=10")
    full = held_out_videos(cfg)  # eval.dataset / eval.root follow the training data's
    assert len(full) == 4 and full.source.startswith("synthetic test")
    capped = held_out_videos(_cfg("eval.every=10", "eval.dataset=list", f"eval.root={bad_dataset}",
                                  f"eval.list_file={bad_dataset / 'test.txt'}", "eval.max_videos=8"))
    assert len(capped) == 8 and set(capped.labels.tolist()) == {0, 1, 2, 3}  # evenly spaced: every class kept
    with pytest.raises(LssError, match="missing under"):  # a wrong eval.root: stop before training
        held_out_videos(_cfg("data.dataset=synthetic", f"data.root={synth_dataset}", "eval.every=10",
                             f"eval.root={tmp_path}", "eval.dataset=list", f"eval.list_file={synth_dataset / 'test.txt'}"))
    unlabelled = tmp_path / "unlabelled.txt"
    unlabelled.write_text("".join(line.split()[0] + "\n" for line in (synth_dataset / "test.txt").read_text().splitlines()))
    with pytest.raises(ConfigError, match="have no label"):
        held_out_videos(_cfg("eval.every=10", "eval.dataset=list", f"eval.root={synth_dataset}",
                             f"eval.list_file={unlabelled}"))


@pytest.mark.parametrize("override", ["eval.every=-1", "eval.max_videos=0", "eval.metric=top3", "eval.num_frames=0"])
def test_bad_eval_settings_are_refused(override):
    with pytest.raises(ConfigError, match=override.split("=")[0].split(".")[1]):
        _cfg(override)


def _save(kind, ckpt_dir: Path, step: int, value: float | None = None, keep_last: int = 2) -> Path:
    model = torch.nn.Linear(2, 2)
    opt = torch.optim.AdamW(model.parameters())
    kw = dict(step=step, epoch=0, student=model, teacher=model, state={}, optimizer=opt)
    if kind == "best":
        return save_best_checkpoint(ckpt_dir, **kw, meta={"best": {"metric": "top1", "value": value, "step": step}})
    return save_checkpoint(ckpt_dir, **kw, meta={}, keep_last=keep_last)


def test_best_checkpoint_is_replaced_never_pruned_never_resumed(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save("step", ckpt, 2)
    _save("best", ckpt, 3, 0.5)
    _save("best", ckpt, 4, 0.7)  # a better one replaces it
    for step in (6, 8, 10):
        _save("step", ckpt, step)  # keep_last=2 prunes step dirs only
    assert sorted(p.name for p in ckpt.iterdir()) == ["best", "last", "step_00000008", "step_00000010"]
    assert best_meta(ckpt)["best"] == {"metric": "top1", "value": 0.7, "step": 4}
    assert load_checkpoint(ckpt / BEST).step == 4
    _save("best", ckpt, 12, 0.9)  # newer than every step dir: still not what --resume continues from
    assert load_newest_intact(ckpt)[0].step == 10 and load_checkpoint(tmp_path).step == 10


def test_a_best_renamed_aside_by_a_killed_writer_is_put_back(tmp_path):
    """Replacing best renames the old one aside before the new one takes its name; a writer killed
    between the two renames leaves only `.old-best-<pid>`, which the next save restores."""
    ckpt = tmp_path / "checkpoints"
    _save("best", ckpt, 4, 0.7)
    os.rename(ckpt / BEST, ckpt / f".old-best-{os.getpid()}")
    assert best_meta(ckpt) is None
    _save("step", ckpt, 6)
    assert best_meta(ckpt)["step"] == 4 and not list(ckpt.glob(".old-*"))


def test_sigterm_during_an_evaluation_becomes_the_trainings_stop(monkeypatch, synth_dataset):
    """extract_features raises SIGTERM as KeyboardInterrupt; during training it must reach the
    loop's own handler (finish the step, save, exit 130) instead of ending the run unsaved."""
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt("signal 15")

    monkeypatch.setattr(pe, "extract_features", interrupted)
    received = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: received.append(signum))
    try:
        encoder = torch.nn.Linear(2, 2).train()
        model = pe.VideoModel(encoder=encoder, clip=None, source="test", model_id="test", meta={})
        ev = pe.PeriodicEval(every=5, metric="top1", videos=held_out_videos(_cfg("data.dataset=synthetic",
                             f"data.root={synth_dataset}", "eval.every=5")), model=model,
                             classifier=torch.zeros(4, 2), views=pe.Views(num_frames=4), batch_size=2, num_workers=0,
                             ckpt_dir=synth_dataset / "no-checkpoints")
        c = types.SimpleNamespace(device=torch.device("cpu"))
        assert ev.evaluate(c, step=5, epoch=1) is None
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert received == [signal.SIGTERM] and encoder.training  # its train mode is back
    assert ev.best is None and not (synth_dataset / "no-checkpoints").exists()
