"""The training components of a run, built from its config: the student and its EMA teacher, the
loss, AdamW, the per-step schedules, the (compiled) forwards and the autocast dtype.

A pure builder: no run dir, no data loader, no file read besides the two `load_clip_and_bank`
reads (the CLIP weights and the concept bank). `lss_cli.train.loop.setup` builds a run from it,
and benchmarks/train_step.py builds the step it times from it (random weights, a random bank),
so the benchmark runs what training runs. Nothing here imports the video decoder (torchcodec):
the benchmark also runs where it is not installed.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lss_cli.concepts.bank import load_concept_bank
from lss_cli.config import ModelConfig, TrainConfig
from lss_cli.errors import ConfigError
from lss_cli.models.artefact import load_video_model
from lss_cli.models.clip import Clip, load_clip
from lss_cli.models.video import VideoEncoder, build_video_encoder
from lss_cli.runtime.compile import maybe_compile
from lss_cli.runtime.dist import DistInfo
from lss_cli.train.losses import LSSLoss
from lss_cli.train.schedules import Schedules, build_schedules

Forward = Callable[[torch.Tensor], torch.Tensor]  # videos [N, T, 3, S, S] -> z [N, D]
BankTensors = Mapping[str, torch.Tensor]  # category [K, D], description [M, D], description_owner [M]


@dataclass
class Components:
    """Everything one training step uses (`lss_cli.train.step.train_step`)."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    student: nn.Module  # DDP-wrapped when distributed
    student_raw: VideoEncoder  # the module itself (EMA source, checkpoints)
    teacher: VideoEncoder
    loss_fn: LSSLoss
    optimizer: torch.optim.Optimizer
    schedules: Schedules
    student_fwd: Forward  # the (guarded-)compiled forwards
    teacher_fwd: Forward
    autocast_dtype: torch.dtype | None  # of the forwards and the loss's input; None = float32
    mean: tuple[float, float, float]  # CLIP's pixel normalisation
    std: tuple[float, float, float]
    header: dict[str, str]  # what the run says about itself when it starts


def default_autocast_dtype(device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA; float32 elsewhere (bf16 on a CPU is slower, and no production setting)."""
    return torch.bfloat16 if device.type == "cuda" else None


def load_clip_and_bank(cfg: TrainConfig) -> tuple[Clip, BankTensors]:
    """The run's CLIP (on the CPU) and the tensors of its concept bank, which must have been built
    with the same model and weights."""
    clip = load_clip(cfg.model.name, cfg.model.pretrained, device="cpu", seed=cfg.run.seed)
    bank = load_concept_bank(cfg.loss.concepts, expect_model=cfg.model.name, expect_weights=clip.weights_id,
                             expect_weights_source=clip.weights_source)
    return clip, {"category": bank.category, "description": bank.description,
                  "description_owner": bank.description_owner}


def start_from(student: VideoEncoder, model: ModelConfig, clip: Clip) -> None:
    """Load the video encoder of a trained model (`model.init`: an export, hf-hub:org/name, a run
    dir) into the freshly built student, e.g. to continue LSS on other videos. It must be the run's
    architecture and have been trained against the run's CLIP weights: the concept bank and the
    frozen text side come from those, and a video encoder trained against other text vectors would
    start in another concept space."""
    with torch.random.fork_rng(devices=[]):  # loading an architecture reseeds torch's generator
        start = load_video_model(model.init)
    what = f"model.init {model.init}"
    if start.clip.name != model.name or start.clip.weights_id != clip.weights_id:
        raise ConfigError(f"{what} was trained from {start.clip.name} weights {start.clip.weights_id}, but this run "
                          f"uses {model.name} weights {clip.weights_id}",
                          hint="set model.name / model.pretrained to the model's base CLIP (its export's config)")
    try:
        student.load_state_dict(start.encoder.state_dict())
    except RuntimeError as e:
        raise ConfigError(f"{what}: its video encoder does not fit {model.name} with temporal={model.temporal}: {e}",
                          hint="set model.temporal to the one it was trained with") from None


def build_components(cfg: TrainConfig, clip: Clip, bank: BankTensors, device: torch.device, *,
                     iters_per_epoch: int, accum: int = 1, dist: DistInfo | None = None,
                     compile_options: Mapping[str, str] | None = None) -> Components:
    """The components of a run of `iters_per_epoch` optimizer steps per epoch, each of `accum`
    micro-batches of `cfg.data.batch_size` clips per rank.

    The student's random parameters (the temporal layers) come from torch's global generator: seed
    it first. Under torch.distributed (`dist`) the student is DDP-wrapped. `compile_options` go to
    `torch.compile` when `cfg.model.compile` (default: on CUDA) compiles the towers.
    """
    dist = dist or DistInfo()
    student_raw = build_video_encoder(clip, cfg.model)
    if cfg.model.init:
        start_from(student_raw, cfg.model, clip)
    student_raw.to(device)
    teacher = copy.deepcopy(student_raw)
    teacher.requires_grad_(False)
    teacher.eval()  # no dropout / drop-path in the teacher
    loss_fn = LSSLoss.from_config(bank, cfg.loss).to(device)
    global_batch = cfg.data.batch_size * dist.world_size * accum
    # Linear scaling rule: the configured lrs are per 256 clips of global batch.
    schedules = build_schedules(cfg.optim, cfg.teacher, cfg.loss, iters_per_epoch, lr_scale=global_batch / 256)
    student: nn.Module = student_raw
    if dist.distributed:
        student = DistributedDataParallel(student_raw, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.AdamW(student_raw.param_groups(cfg.optim.lr, cfg.optim.temporal_lr, cfg.optim.weight_decay),
                                  betas=cfg.optim.betas, fused=device.type == "cuda")
    compile_on = cfg.model.compile if cfg.model.compile is not None else device.type == "cuda"
    options = dict(compile_options or {})
    autocast_dtype = default_autocast_dtype(device)
    header = {
        "model": f"{cfg.model.name} ({clip.weights_source}), temporal={cfg.model.temporal}"
                 + (f", started from {cfg.model.init}" if cfg.model.init else ""),
        "params": f"{sum(p.numel() for p in student_raw.parameters()) / 1e6:.2f}M "
                  f"({sum(p.numel() for p in student_raw.temporal_parameters()) / 1e6:.2f}M temporal)",
        "views": f"{cfg.views.global_views}x{cfg.views.global_frames}x{cfg.views.global_size}px global + "
                 f"{cfg.views.local_views}x{cfg.views.local_frames}x{cfg.views.local_size}px local",
        "batch": f"{cfg.data.batch_size}/rank x {dist.world_size} ranks x {accum} accum = {global_batch} clips",
        "steps": f"{iters_per_epoch}/epoch x {cfg.optim.epochs} epochs = {len(schedules)}",
        "device": f"{device} ({'bf16 autocast' if autocast_dtype == torch.bfloat16 else 'fp32'}"
                  f"{', compiled' if compile_on else ''})",
    }
    return Components(cfg=cfg, dist=dist, device=device, student=student, student_raw=student_raw, teacher=teacher,
                      loss_fn=loss_fn, optimizer=optimizer, schedules=schedules,
                      student_fwd=maybe_compile(student, "student", compile_on, **options),
                      teacher_fwd=maybe_compile(teacher, "teacher", compile_on, **options),
                      autocast_dtype=autocast_dtype, mean=clip.mean, std=clip.std, header=header)
