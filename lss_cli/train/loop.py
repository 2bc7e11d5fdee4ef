"""LSS self-distillation: setup, the epoch loop, checkpoints, and stopping on a signal.

The same code runs on a laptop CPU with the tiny model, on one GPU, and under
`torchrun --nproc-per-node N -m lss_cli train ...` (DDP; NCCL on GPU, gloo on CPU). The models,
loss, optimizer and schedules come from `lss_cli.train.build`; one optimizer step is
`lss_cli.train.step.train_step`. With `eval.every`, `lss_cli.train.periodic_eval` scores the
teacher on a held-out list at those steps (their metrics.jsonl lines carry the numbers) and keeps
the best as checkpoints/best.

Determinism (what makes `--resume` exact): data order is a function of (seed, epoch); the
frame sampling of a sample is a function of (seed, epoch, index); the device-side augmentation of
step s uses a generator seeded with (seed, rank, s). So a run resumed from the checkpoint of step k
replays steps k+1... exactly as the uninterrupted run did. Which checkpoint a resume uses, what a
changed config does, and what `--overwrite` moves aside: `lss_cli.train.resume`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import Progress, TaskID, TextColumn

from lss_cli.config import TrainConfig, dump_yaml, to_dict
from lss_cli.data.loader import TrainLoader, build_train_loader, worker_death
from lss_cli.errors import LssError
from lss_cli.runtime.checkpoint import Checkpoint, latest_checkpoint, save_checkpoint
from lss_cli.runtime.device import resolve_device
from lss_cli.runtime.dist import DistInfo, all_reduce_mean_, any_rank, barrier, cleanup, init_distributed
from lss_cli.runtime.metrics import MetricsWriter, WandbRun, read_metrics
from lss_cli.runtime.outputs import write_text_atomic
from lss_cli.runtime.progress import log, make_progress, progress_enabled
from lss_cli.runtime.rundir import make_run_dir, write_run_files
from lss_cli.runtime.seeding import seed_everything
from lss_cli.train.build import Components, build_components, load_clip_and_bank
from lss_cli.train.inputs import check_inputs, ensure_synthetic_inputs, explain_loader_failure
from lss_cli.train.periodic_eval import PeriodicEval, build_periodic_eval
from lss_cli.train.resume import (
    apply_checkpoint,
    check_config,
    choose_checkpoint,
    keep_previous_config,
    set_aside_previous_run,
)
from lss_cli.train.step import train_step


class NonFiniteLoss(LssError):
    pass


@dataclass
class Trainer(Components):
    """A run's components plus what the epoch loop keeps; built once by `setup()`."""

    run_dir: Path
    loader: TrainLoader  # of uint8 clips
    iters_per_epoch: int  # optimizer steps per epoch
    accum: int  # micro-batches per optimizer step
    step: int = 0  # optimizer steps completed
    metrics: MetricsWriter | None = None
    stop_requested: bool = False  # set by a stop signal; honoured between steps
    resume_from: Checkpoint | None = None  # chosen (and checked) by setup, applied by _resume
    config_changed: bool = False  # a resume whose config change run.allow_config_change accepted
    started: float = 0.0  # perf_counter when this process began its steps (wall time, ETA)
    first_step: int = 0  # the step this process began at (> 0 when resumed)
    last_record: dict[str, Any] | None = None  # the newest metrics.jsonl line (the summary's final loss)
    evaluator: PeriodicEval | None = None  # eval.every > 0: the teacher's zero-shot accuracy on a held-out list


# --------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------


def train_one_epoch(t: Trainer, epoch: int, progress: Progress, task: TaskID) -> None:
    cfg = t.cfg
    t.loader.set_epoch(epoch)
    first = t.step - epoch * t.iters_per_epoch  # optimizer steps of this epoch already done (resume)
    t.loader.sampler.set_start(first * t.accum * cfg.data.batch_size)  # skip consumed samples without decoding
    tic, clips = time.perf_counter(), 0
    micro: list[dict[str, Any]] = []
    for batch in _batches(t):
        if t.step >= (epoch + 1) * t.iters_per_epoch:
            break  # drop the last incomplete accumulation group
        micro.append(batch)
        if len(micro) < t.accum:
            continue
        parts = train_step(t, micro, t.step)
        clips += sum(b["global"].shape[0] for b in micro)
        micro = []
        t.step += 1
        # Under DDP a stop signal reaches the ranks at different moments (each node's own); all stop
        # after the same step, or a rank still going would wait forever in the next all-reduce.
        t.stop_requested = any_rank(t.stop_requested)
        progress.update(task, advance=1)
        # A requested stop skips the evaluation: the checkpoint comes first (SLURM's warning may be short).
        evaluate = t.evaluator is not None and t.evaluator.due(t.step, len(t.schedules)) and not t.stop_requested
        if evaluate or t.step % cfg.log.every == 0 or t.step == len(t.schedules):
            elapsed = time.perf_counter() - tic  # the evaluation's time is not the training's throughput
            record = _log_step(t, epoch, parts, clips * t.dist.world_size / max(elapsed, 1e-9), evaluate)
            _show_step(t, record, progress, task)
            tic, clips = time.perf_counter(), 0
        if t.step % cfg.log.save_every == 0 or t.stop_requested:
            _save(t)
        if t.stop_requested:
            raise KeyboardInterrupt


def _batches(t: Trainer) -> Iterator[dict[str, Any]]:
    """Iterate the loader; after Ctrl-C the workers are gone, so a failing fetch means "stop"."""
    it = iter(t.loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except LssError as e:  # the loader gave up on unreadable videos (maybe inside a worker)
            raise explain_loader_failure(t.loader.dataset.videos, e, t.cfg.data.decode_timeout) from None
        except RuntimeError as e:
            if t.stop_requested:
                return
            died = worker_death(e, _resume_hint(t))
            if died is None:
                raise
            t.loader.shutdown_workers()
            if t.dist.world_size == 1 and t.step > t.first_step:
                _save(t)  # the model is intact, only its data feed died: keep every finished step
            raise died from None


def _resume_hint(t: Trainer) -> str:
    return f"`lss train {t.run_dir} --resume` continues from the last checkpoint"


def _reduce_parts(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss parts averaged over ranks (every rank calls this), as floats: the one host sync, at
    logging steps only."""
    keys = sorted(parts)
    stacked = all_reduce_mean_(torch.stack([parts[k].detach().float() for k in keys]))
    return dict(zip(keys, stacked.tolist(), strict=True))


def _log_step(t: Trainer, epoch: int, parts: dict[str, torch.Tensor], clips_per_s: float,
              evaluate: bool = False) -> dict[str, Any]:
    """Write the step's metrics.jsonl line (every rank reduces the parts; rank 0 writes); returns it.
    `evaluate`: every rank runs the periodic evaluation, whose numbers join the line."""
    values = _reduce_parts(parts)
    if not math.isfinite(values["loss"]):
        lr = float(t.schedules.lr[t.step - 1])
        raise NonFiniteLoss(
            f"non-finite loss at step {t.step}: " + ", ".join(f"{k}={v:.4g}" for k, v in values.items())
            + f"; last lr {lr:.3g}",
            hint="the last good checkpoint is kept; lower optim.lr, raise loss.teacher_temp, or check the data",
        )
    record = {"step": t.step, "epoch": epoch, **values,
              "lr": float(t.schedules.lr[t.step - 1]), "temporal_lr": float(t.schedules.temporal_lr[t.step - 1]),
              "weight_decay": float(t.schedules.weight_decay[t.step - 1]),
              "teacher_momentum": float(t.schedules.teacher_momentum[t.step - 1]),
              "teacher_temp": float(t.schedules.teacher_temp[t.step - 1]),
              "clips_per_s": clips_per_s, "skipped_videos": t.loader.skipped_total}
    if t.device.type == "cuda":
        record["gpu_mem_gib"] = torch.cuda.max_memory_allocated(t.device) / 2**30
    if evaluate and t.evaluator is not None:
        record.update(t.evaluator.evaluate(t, t.step, epoch=t.step // t.iters_per_epoch) or {})
    if t.metrics is not None:
        t.metrics.write(record)
    t.last_record = record
    return record


# The loss terms a log line shows, in the method's order (metrics.jsonl holds every part).
SHOWN_PARTS = ("cd_category", "cd_description", "ca", "uniform")


def _show_step(t: Trainer, record: dict[str, Any], progress: Progress, task: TaskID) -> None:
    """The step in the terminal's progress bar, or, when stderr is a file (a SLURM log, `2> log`),
    as a plain line: a run redirected to a file shows its progress there."""
    if not t.dist.is_main:
        return
    progress.update(task, loss=f"loss {record['loss']:.4f}")
    if not progress_enabled(t.dist.rank):
        log(step_line(record, len(t.schedules), eta_s=_eta(t)))


def _eta(t: Trainer) -> float | None:
    done = t.step - t.first_step
    if done < 1:
        return None
    return (time.perf_counter() - t.started) / done * (len(t.schedules) - t.step)


def step_line(record: dict[str, Any], total_steps: int, eta_s: float | None) -> str:
    """One plain log line of a metrics record: step/total, loss and its parts, lr, clips/s, ETA, GPU memory."""
    parts = ", ".join(f"{k} {record[k]:.4f}" for k in SHOWN_PARTS if k in record)
    line = (f"step {record['step']}/{total_steps} epoch {record['epoch']} | loss {record['loss']:.4f} ({parts}) | "
            f"lr {record['lr']:.3g} | {record['clips_per_s']:.1f} clips/s")
    if eta_s is not None:
        line += f" | ETA {_duration(eta_s)}"
    if "gpu_mem_gib" in record:
        line += f" | gpu {record['gpu_mem_gib']:.1f} GiB"
    return line


def _duration(seconds: float) -> str:
    """1h02m, 4m05s, 12s: what a person reads at a glance."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _save(t: Trainer) -> None:
    if not t.dist.is_main:
        return
    # Never checkpoint a diverged model: the check costs one sync per save, not per step.
    finite = torch.stack([torch.isfinite(p).all() for p in t.student_raw.parameters()]).all()
    if not bool(finite):
        raise NonFiniteLoss(f"non-finite weights at step {t.step}", hint="the last good checkpoint is kept")
    epoch_of_next = t.step // t.iters_per_epoch
    save_checkpoint(t.run_dir / "checkpoints", step=t.step, epoch=epoch_of_next, student=t.student_raw,
                    teacher=t.teacher, state=t.loss_fn.state_dict(), optimizer=t.optimizer,
                    meta={"config": to_dict(t.cfg), "header": t.header}, keep_last=t.cfg.log.keep_last)


def run_epochs(t: Trainer) -> None:
    total = len(t.schedules)
    t.started, t.first_step = time.perf_counter(), t.step
    with make_progress(t.dist.rank, TextColumn("{task.fields[loss]}", markup=False)) as progress:
        task = progress.add_task("train", total=total, completed=t.step, loss="")
        for epoch in range(t.step // t.iters_per_epoch, t.cfg.optim.epochs):
            train_one_epoch(t, epoch, progress, task)
            if any_rank(t.stop_requested):  # Ctrl-C while the loader was stopping: the step count is whole
                t.stop_requested = True
                _save(t)
                raise KeyboardInterrupt
    if t.step % t.cfg.log.save_every != 0:
        _save(t)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def _run_dir(cfg: TrainConfig, dist: DistInfo) -> Path:
    # Rank 0 creates it (a default one unique even when another run starts in the same second) and
    # the other ranks receive its path, so all ranks write into one folder.
    return make_run_dir("train", cfg.run.output_dir, name=cfg.run.name, resume=cfg.run.resume,
                        overwrite=cfg.run.overwrite)


def _batch_plan(cfg: TrainConfig, dist: DistInfo, batches_per_epoch: int) -> tuple[int, int]:
    """(micro-batches per optimizer step, optimizer steps per epoch) for optim.global_batch."""
    per_step = cfg.data.batch_size * dist.world_size
    global_batch = cfg.optim.global_batch or per_step
    if global_batch % per_step:
        raise LssError(f"optim.global_batch={global_batch} is not a multiple of data.batch_size x world size = {per_step}")
    accum = global_batch // per_step
    iters_per_epoch = batches_per_epoch // accum
    if iters_per_epoch < 1:
        raise LssError(f"the dataset gives {batches_per_epoch} batches per rank, fewer than one optimizer step "
                       f"({accum} micro-batches)", hint="lower data.batch_size or optim.global_batch")
    return accum, iters_per_epoch


def setup(cfg: TrainConfig) -> Trainer:
    """Device, process group, seeds, run dir (and the checkpoint a resume starts from, checked
    against the config before anything is made), inputs and loader; then the components (build.py)."""
    device = resolve_device(cfg.run.device)
    dist = init_distributed(device.type)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(cfg.run.seed, dist.rank)
    run_dir = _run_dir(cfg, dist)
    resume_from, config_changed = None, False
    if cfg.run.resume:
        resume_from = choose_checkpoint(run_dir, announce=dist.is_main)
        config_changed = check_config(cfg, resume_from, run_dir, announce=dist.is_main)
    elif cfg.run.overwrite and dist.is_main:  # (with --resume, --overwrite only lets it into the run dir)
        set_aside_previous_run(run_dir)
    if dist.is_main:
        ensure_synthetic_inputs(cfg)
        check_inputs(cfg)
    barrier()  # other ranks wait for rank 0 to make the inputs
    clip, bank = load_clip_and_bank(cfg)
    loader = build_train_loader(cfg.data, cfg.views, seed=cfg.run.seed, rank=dist.rank, world_size=dist.world_size)
    accum, iters_per_epoch = _batch_plan(cfg, dist, len(loader))
    components = build_components(cfg, clip, bank, device, iters_per_epoch=iters_per_epoch, accum=accum, dist=dist)
    evaluator = build_periodic_eval(cfg, clip, components.teacher, device, run_dir / "checkpoints")
    t = Trainer(**vars(components), run_dir=run_dir, loader=loader, iters_per_epoch=iters_per_epoch, accum=accum,
                resume_from=resume_from, config_changed=config_changed, evaluator=evaluator)
    t.header["run dir"] = str(run_dir)
    return t


def _resume(t: Trainer) -> None:
    ck, t.resume_from = t.resume_from, None  # applied once; its CPU copy is freed with it
    apply_checkpoint(t, ck)
    t.step = ck.step
    if t.config_changed and t.dist.is_main:
        keep_previous_config(t.run_dir, t.step)
    # Metrics logged after that checkpoint belong to steps that will be redone: drop them.
    path = t.run_dir / "metrics.jsonl"
    if t.dist.is_main and path.is_file():
        kept = [r for r in read_metrics(path) if r.get("step", 0) <= t.step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    log(f"resumed from {ck.path} (step {t.step})")


# Ctrl-C, a scheduler's stop (SLURM, Kubernetes, torchrun shutting down) and SLURM's warning before
# a time limit (`--signal=USR1@120`): each finishes the step, saves a checkpoint and exits 130.
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGUSR1")


@contextmanager
def _stop_on_signals(t: Trainer) -> Iterator[None]:
    """Turn the stop signals into `t.stop_requested` (checked after every step) while training
    runs, and say what happened once the run has stopped (not from the handler: it may interrupt
    the progress bar mid-print)."""
    received: list[str] = []

    def request_stop(signum, frame):
        received.append(signal.Signals(signum).name)
        t.stop_requested = True

    previous = {name: signal.signal(getattr(signal, name), request_stop)
                for name in STOP_SIGNALS if hasattr(signal, name)}
    try:
        yield
    except KeyboardInterrupt:  # raised by the loop once the checkpoint of a requested stop is saved
        if received or t.stop_requested:
            why = received[0] if received else "another rank was asked to stop"
            _say_stopped(f"{why}: stopped at step {t.step}, checkpoint saved; continue with --resume")
        raise
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)


def _throughput(t: Trainer) -> dict[str, Any]:
    """The summary's numbers: the last logged loss, this process's wall time and clips per second."""
    wall = time.perf_counter() - t.started
    clips = (t.step - t.first_step) * t.accum * t.cfg.data.batch_size * t.dist.world_size
    return {"final_loss": round(t.last_record["loss"], 4) if t.last_record else None,
            "wall_s": round(wall, 1), "clips_per_s": round(clips / wall, 1) if wall > 0 else None}


def _as_recorded(cfg: TrainConfig) -> TrainConfig:
    """The config.yaml of a run, without the one-time permissions of the command that started it:
    passing the file back (`lss train RUN/config.yaml --resume`) must not accept a config change
    or set the run aside unasked."""
    return dataclasses.replace(cfg, run=dataclasses.replace(cfg.run, overwrite=False, allow_config_change=False))


def _say_stopped(message: str) -> None:
    """What became of a stopped run, on stderr, on rank 0 only, and also with --quiet: it is the
    only line telling whether the run can be continued."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message, file=sys.stderr, flush=True)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) LSS training. Returns a summary for the CLI to render."""
    t: Trainer | None = None
    try:
        t = setup(cfg)
        if cfg.run.resume:
            _resume(t)
        if t.dist.is_main:
            write_run_files(t.run_dir, dump_yaml(_as_recorded(cfg)), device=str(t.device))
            wandb = WandbRun(cfg.log.wandb_project, t.run_dir.name, to_dict(cfg)) if cfg.log.wandb else None
            t.metrics = MetricsWriter(t.run_dir / "metrics.jsonl", tensorboard=cfg.log.tensorboard, wandb=wandb)
            for k, v in t.header.items():
                log(str(v), lead=f"{k:>8}  ")
        with _stop_on_signals(t):
            run_epochs(t)
        return {"is_main": t.dist.is_main, "run_dir": str(t.run_dir), "steps": t.step,
                **_throughput(t), "skipped_videos": t.loader.skipped_total,
                "checkpoint": str(latest_checkpoint(t.run_dir / "checkpoints")),
                **(t.evaluator.summary() if t.evaluator is not None else {})}
    except RuntimeError as e:
        # PyTorch's SIGCHLD handler can raise a worker's death anywhere in the step (even inside the
        # optimizer's update), so nothing is saved here; `_batches` saves when it surfaces there.
        died = worker_death(e, _resume_hint(t)) if t is not None else None  # no worker runs before setup ends
        if died is None:
            raise
        t.loader.shutdown_workers()
        raise died from None
    except KeyboardInterrupt:
        if t is None or not t.stop_requested:  # Ctrl-C before the loop took over the stop signals
            kept = "the run's checkpoints are unchanged; continue with --resume" if cfg.run.resume else "nothing was saved"
            _say_stopped(f"SIGINT: stopped before training started; {kept}")
        raise
    finally:
        if t is not None and t.metrics is not None:
            t.metrics.close()
        cleanup()


__all__ = ["Trainer", "train", "train_one_epoch", "setup", "NonFiniteLoss"]
