"""LSS self-distillation: setup, the epoch loop, and one readable training step (DINO style).

The same code runs on a laptop CPU with the tiny model, on one GPU, and under
`torchrun --nproc-per-node N -m lss_cli train ...` (DDP; NCCL on GPU, gloo on CPU).

Determinism (what makes `--resume` exact): data order is a function of (seed, epoch); the
frame sampling of a sample is a function of (seed, epoch, index); the device-side augmentation of
step s uses a generator seeded with (seed, rank, s). So a run resumed from the checkpoint of step k
replays steps k+1... exactly as the uninterrupted run did.
"""

from __future__ import annotations

import copy
import math
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from lss_cli.config import TrainConfig, dump_yaml, to_dict
from lss_cli.errors import LssError
from lss_cli.runtime.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint, set_rng_state
from lss_cli.runtime.compile import maybe_compile
from lss_cli.runtime.dist import DistInfo, barrier, cleanup, init_distributed
from lss_cli.runtime.metrics import MetricsWriter, read_metrics
from lss_cli.runtime.progress import log, make_progress, warn
from lss_cli.runtime.rundir import default_run_dir, prepare_run_dir, write_run_files, write_text_atomic
from lss_cli.runtime.seeding import seed_everything
from lss_cli.train.ema import ema_update
from lss_cli.train.schedules import Schedules, build_schedules


class NonFiniteLoss(LssError):
    pass


@dataclass
class Trainer:
    """Everything the epoch loop touches, built once by `setup()`."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    run_dir: Path
    student: torch.nn.Module  # DDP-wrapped when distributed
    student_raw: torch.nn.Module  # the module itself (EMA source, checkpoints)
    teacher: torch.nn.Module
    loss_fn: Any  # lss_cli.train.losses.LSSLoss
    optimizer: torch.optim.Optimizer
    loader: Any  # DataLoader of uint8 clips
    schedules: Schedules
    iters_per_epoch: int  # optimizer steps per epoch
    accum: int  # micro-batches per optimizer step
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    student_fwd: Any = None  # (guarded-)compiled forward functions
    teacher_fwd: Any = None
    step: int = 0  # optimizer steps completed
    metrics: MetricsWriter | None = None
    stop_requested: bool = False  # set by SIGINT; honoured between steps
    header: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# One training step
# --------------------------------------------------------------------------------------------


def _view_groups(global_views: torch.Tensor, local_views: Any) -> list[tuple[torch.Tensor, int]]:
    """(inputs [B*v, T, 3, S, S], v) for each group of same-shaped views: globals, then locals.

    Views of one size go through the encoder in one call; `local_views` is a list (one
    [B, T_i, 3, S, S] per view) when the local views have different frame counts."""
    groups = [(global_views.flatten(0, 1), global_views.shape[1])]
    if isinstance(local_views, torch.Tensor):
        if local_views.shape[1] > 0:
            groups.append((local_views.flatten(0, 1), local_views.shape[1]))
    else:
        groups.extend((view, 1) for view in local_views)
    return groups


def _encode_views(forward, groups: list[tuple[torch.Tensor, int]], batch: int) -> torch.Tensor:
    """Run the encoder on each view group and return z as [V, B, D] in view order."""
    out = []
    for x, v in groups:
        z = forward(x)  # [B*v, D]; flatten(0, 1) of [B, v] put view j of clip b at b * v + j
        out.append(z.view(batch, v, -1).transpose(0, 1))  # [v, B, D]
    return torch.cat(out, 0)


def train_step(t: Trainer, micro_batches: list[Any], step: int, make_views=None) -> dict[str, torch.Tensor]:
    """One optimizer step over `accum` micro-batches: teacher forward (global views), student
    forward/backward (all views), clip, AdamW, EMA. Returns detached loss parts (no host sync).

    `make_views(batch, i) -> (global_views, local_views)` turns a loader batch into float views on
    the device (default: the GPU-side augmentation); benchmarks pass ready-made views instead."""
    cfg = t.cfg
    t.schedules.apply(t.optimizer, step)
    student_temp = cfg.loss.student_temp
    teacher_temp = float(t.schedules.teacher_temp[step])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if t.device.type == "cuda" else nullcontext()
    parts_sum: dict[str, torch.Tensor] = {}
    make_views = make_views or (lambda batch, i: _make_views(t, batch, step, i))
    for i, batch in enumerate(micro_batches):
        global_views, local_views = make_views(batch, i)  # [B, V_g, T, 3, G, G], [B, V_l, T_l, 3, L, L]
        B = global_views.shape[0]
        groups = _view_groups(global_views, local_views)
        # DDP all-reduces gradients only on the last micro-batch of an accumulation group.
        sync = i == len(micro_batches) - 1 or not t.dist.distributed
        with autocast:
            with torch.no_grad():
                teacher_z = _encode_views(t.teacher_fwd, groups[:1], B)  # [V_g, B, D]: global views only
            with (nullcontext() if sync else t.student.no_sync()):
                student_z = _encode_views(t.student_fwd, groups, B)  # [V_g + V_l, B, D]
                loss, parts = t.loss_fn(student_z, teacher_z, student_temp, teacher_temp)
                (loss / len(micro_batches)).backward()
        for k, v in parts.items():
            parts_sum[k] = parts_sum.get(k, 0) + v / len(micro_batches)
    if cfg.optim.clip_grad > 0:
        parts_sum["grad_norm"] = torch.nn.utils.clip_grad_norm_(t.student.parameters(), cfg.optim.clip_grad)
    t.optimizer.step()
    t.optimizer.zero_grad(set_to_none=True)
    ema_update(t.teacher, t.student_raw, float(t.schedules.teacher_momentum[step]))
    return parts_sum


def _make_views(t: Trainer, batch: dict[str, Any], step: int, micro: int):
    from lss_cli.data.loader import make_train_views
    from lss_cli.runtime.seeding import sample_seed

    # Parameters are drawn on the CPU, applied on the device. Augmentation randomness is a function
    # of (seed, rank, step, micro-batch), so a resumed run replays it exactly.
    g = torch.Generator().manual_seed(sample_seed(t.cfg.run.seed, t.dist.rank, step, micro))
    return make_train_views(batch, t.cfg.views, t.mean, t.std, t.device, generator=g)


# --------------------------------------------------------------------------------------------
# The epoch loop
# --------------------------------------------------------------------------------------------


def train_one_epoch(t: Trainer, epoch: int, progress, task) -> None:
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
        progress.update(task, advance=1)
        if t.step % cfg.log.every == 0 or t.step == len(t.schedules):
            elapsed = time.perf_counter() - tic
            _log_step(t, epoch, parts, clips * t.dist.world_size / max(elapsed, 1e-9))
            tic, clips = time.perf_counter(), 0
        if t.step % cfg.log.save_every == 0 or t.stop_requested:
            _save(t)
        if t.stop_requested:
            raise KeyboardInterrupt


def _batches(t: Trainer):
    """Iterate the loader; after Ctrl-C the workers are gone, so a failing fetch means "stop"."""
    it = iter(t.loader)
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except RuntimeError:
            if t.stop_requested:
                return
            raise


def _reduce_parts(parts: dict[str, torch.Tensor]) -> dict[str, float]:
    """Loss parts averaged over ranks (every rank calls this), as floats: the one host sync, at
    logging steps only."""
    from lss_cli.runtime.dist import all_reduce_mean_

    keys = sorted(parts)
    stacked = all_reduce_mean_(torch.stack([parts[k].detach().float() for k in keys]))
    return dict(zip(keys, stacked.tolist(), strict=True))


def _log_step(t: Trainer, epoch: int, parts: dict[str, torch.Tensor], clips_per_s: float) -> None:
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
    if t.metrics is not None:
        t.metrics.write(record)


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
    with make_progress(t.dist.rank) as progress:
        task = progress.add_task("train", total=total, completed=t.step)
        for epoch in range(t.step // t.iters_per_epoch, t.cfg.optim.epochs):
            train_one_epoch(t, epoch, progress, task)
            if t.stop_requested:  # Ctrl-C while the loader was stopping: the step count is whole
                _save(t)
                raise KeyboardInterrupt
    if t.step % t.cfg.log.save_every != 0:
        _save(t)


# --------------------------------------------------------------------------------------------
# Setup
# --------------------------------------------------------------------------------------------


def _run_dir(cfg: TrainConfig, dist: DistInfo) -> Path:
    path = Path(cfg.run.output_dir) if cfg.run.output_dir else default_run_dir("train", cfg.run.name)
    if dist.is_main:
        prepare_run_dir(path, resume=cfg.run.resume, overwrite=cfg.run.overwrite)
    return path


def _build_models(cfg: TrainConfig, device: torch.device):
    from lss_cli.concepts import load_concept_bank
    from lss_cli.models.clip import load_clip
    from lss_cli.models.video import build_video_encoder
    from lss_cli.train.losses import LSSLoss

    clip = load_clip(cfg.model.name, cfg.model.pretrained, device="cpu", seed=cfg.run.seed)
    bank = load_concept_bank(cfg.loss.concepts, expect_model=cfg.model.name, expect_weights=clip.weights_id)
    student = build_video_encoder(clip, cfg.model).to(device)
    teacher = copy.deepcopy(student)
    teacher.requires_grad_(False)
    teacher.eval()  # no dropout / drop-path in the teacher
    loss_fn = LSSLoss.from_config({"category": bank.category, "description": bank.description,
                                   "description_owner": bank.description_owner}, cfg.loss).to(device)
    return clip, student, teacher, loss_fn


def setup(cfg: TrainConfig) -> Trainer:
    from lss_cli.data.loader import build_train_loader
    from lss_cli.runtime.device import resolve_device

    device = resolve_device(cfg.run.device)
    dist = init_distributed(device.type)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    seed_everything(cfg.run.seed, dist.rank)
    run_dir = _run_dir(cfg, dist)
    if dist.is_main:
        from lss_cli.train.inputs import check_inputs, ensure_synthetic_inputs

        ensure_synthetic_inputs(cfg)
        check_inputs(cfg)
    barrier()  # other ranks wait for rank 0 to make the inputs
    clip, student, teacher, loss_fn = _build_models(cfg, device)
    loader = build_train_loader(cfg.data, cfg.views, seed=cfg.run.seed, rank=dist.rank, world_size=dist.world_size)
    per_step = cfg.data.batch_size * dist.world_size
    global_batch = cfg.optim.global_batch or per_step
    if global_batch % per_step:
        raise LssError(f"optim.global_batch={global_batch} is not a multiple of data.batch_size x world size = {per_step}")
    accum = global_batch // per_step
    iters_per_epoch = len(loader) // accum
    if iters_per_epoch < 1:
        raise LssError(f"the dataset gives {len(loader)} batches per rank, fewer than one optimizer step "
                       f"({accum} micro-batches)", hint="lower data.batch_size or optim.global_batch")
    # Linear scaling rule: the configured lrs are per 256 clips of global batch.
    schedules = build_schedules(cfg.optim, cfg.teacher, cfg.loss, iters_per_epoch, lr_scale=global_batch / 256)
    student_raw = student
    if dist.distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        student = DDP(student, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(student_raw.param_groups(cfg.optim.lr, cfg.optim.temporal_lr, cfg.optim.weight_decay),
                                  betas=cfg.optim.betas, fused=device.type == "cuda")
    compile_on = cfg.model.compile if cfg.model.compile is not None else device.type == "cuda"
    t = Trainer(cfg=cfg, dist=dist, device=device, run_dir=run_dir, student=student, student_raw=student_raw,
                teacher=teacher, loss_fn=loss_fn, optimizer=optimizer, loader=loader, schedules=schedules,
                iters_per_epoch=iters_per_epoch, accum=accum, mean=clip.mean, std=clip.std)
    t.student_fwd = maybe_compile(student, "student", compile_on)
    t.teacher_fwd = maybe_compile(teacher, "teacher", compile_on)
    t.header = {
        "model": f"{cfg.model.name} ({clip.weights_id}), temporal={cfg.model.temporal}",
        "params": f"{sum(p.numel() for p in student_raw.parameters()) / 1e6:.2f}M "
                  f"({sum(p.numel() for p in student_raw.temporal_parameters()) / 1e6:.2f}M temporal)",
        "views": f"{cfg.views.global_views}x{cfg.views.global_frames}x{cfg.views.global_size}px global + "
                 f"{cfg.views.local_views}x{cfg.views.local_frames}x{cfg.views.local_size}px local",
        "batch": f"{cfg.data.batch_size}/rank x {dist.world_size} ranks x {accum} accum = {global_batch} clips",
        "steps": f"{iters_per_epoch}/epoch x {cfg.optim.epochs} epochs = {len(schedules)}",
        "device": f"{device} ({'bf16 autocast' if device.type == 'cuda' else 'fp32'}"
                  f"{', compiled' if compile_on else ''})",
        "run dir": str(run_dir),
    }
    return t


def _resume(t: Trainer) -> None:
    ckpt_path = latest_checkpoint(t.run_dir / "checkpoints")
    if ckpt_path is None:
        raise LssError(f"--resume: no checkpoint in {t.run_dir / 'checkpoints'}", hint="start without --resume")
    ck = load_checkpoint(ckpt_path, map_location=t.device)
    t.student_raw.load_state_dict(ck.student)
    t.teacher.load_state_dict(ck.teacher)
    t.loss_fn.load_state_dict(ck.state, strict=False)
    t.optimizer.load_state_dict(ck.optim)
    set_rng_state(ck.rng)
    t.step = ck.step
    # Metrics logged after that checkpoint belong to steps that will be redone: drop them.
    path = t.run_dir / "metrics.jsonl"
    if t.dist.is_main and path.is_file():
        import json

        kept = [r for r in read_metrics(path) if r.get("step", 0) <= t.step]
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in kept))
    log(f"resumed from {ckpt_path} (step {t.step})")


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
    finally:
        for name, handler in previous.items():
            signal.signal(getattr(signal, name), handler)
        if received:
            log(f"{received[0]}: stopped at step {t.step}, checkpoint saved; continue with --resume")


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run (or resume) LSS training. Returns a summary for the CLI to render."""
    t = setup(cfg)
    try:
        if cfg.run.resume:
            _resume(t)
        if t.dist.is_main:
            write_run_files(t.run_dir, dump_yaml(cfg), device=str(t.device))
            t.metrics = MetricsWriter(t.run_dir / "metrics.jsonl", tensorboard=cfg.log.tensorboard)
            for k, v in t.header.items():
                log(f"[bold]{k:>8}[/bold]  {v}")
        with _stop_on_signals(t):
            run_epochs(t)
        return {"is_main": t.dist.is_main, "run_dir": str(t.run_dir), "steps": t.step,
                "skipped_videos": t.loader.skipped_total,
                "checkpoint": str(latest_checkpoint(t.run_dir / "checkpoints"))}
    finally:
        if t.metrics is not None:
            t.metrics.close()
        cleanup()


__all__ = ["Trainer", "train", "train_one_epoch", "train_step", "setup", "NonFiniteLoss", "warn"]
