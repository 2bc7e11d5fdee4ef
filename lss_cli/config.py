"""Every configuration of lss_cli, as typed dataclasses, and the one loader they all share.

Precedence: dataclass defaults < YAML file < dotted `key=value` overrides < explicit CLI flags.
Everything is checked here, before any heavy import: unknown keys (with close-match suggestions),
wrong types, and cross-field rules (`validate()` methods). The resolved config is dumped to YAML
next to every run's outputs.

The training defaults and the method they configure are written up in docs/method.md; where the
LSS paper is silent and a value is our reconstruction, the comment says so (docs/method.md §7
lists every such choice and why).
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
from dataclasses import dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.resources import example_path, shipped_configs
from lss_cli.textfiles import read_text

T = TypeVar("T")

# Upper bounds far beyond any real run. They catch a typo (`optim.epochs=1000000000`, an extra
# zero) before anything is sized by it: the schedules hold a value per step, the loader a buffer
# per frame, and describe starts a thread per concurrent request.
MAX_EPOCHS = 10_000
MAX_FRAMES = 1_024  # frames of one clip or view
MAX_VIEWS = 64  # views of one kind per video (global, local, eval clips)
MAX_SIZE = 4_096  # pixels of a crop's side
MAX_BATCH = 65_536  # clips (or texts) per batch, also per optimizer step
MAX_WORKERS = 1_024  # loader processes, concurrent requests
MAX_RETRIES = 100  # retries or re-asks of one request
MAX_SECONDS = 86_400.0  # one timeout or delay: a day
MAX_SEED = 2**32 - 1  # numpy's seed range


def check_device(value: str, key: str = "device") -> None:
    ok = value in ("auto", "cpu", "cuda") or (value.startswith("cuda:") and value[5:].isdigit())
    if not ok:
        raise ConfigError(f"{key}: invalid device {value!r}", hint="use auto, cpu, cuda or cuda:N")


def _check(cond: bool, key: str, message: str, hint: str | None = None) -> None:
    if not cond:
        raise ConfigError(f"{key}: {message}", hint=hint)


def _at_most(value: float, bound: float, key: str, unit: str) -> None:
    """Refuse a value beyond `bound` (one of the MAX_* bounds above), naming the key and the bound."""
    _check(value <= bound, key, f"{_shown(value)} is more than any real run uses (at most {bound:,} {unit})",
           hint="check the value for a typo (an extra zero?)")


def _shown(value: Any) -> str:
    """A value for an error message, cut short: a 5000-digit number must not fill the terminal."""
    text = f"{value:,}" if isinstance(value, int | float) and not isinstance(value, bool) else repr(value)
    return text if len(text) <= 60 else f"{text[:40]}... ({len(text)} characters)"


# --------------------------------------------------------------------------------------------
# Shared sections
# --------------------------------------------------------------------------------------------


@dataclass
class RunConfig:
    """Where a run writes, how it is seeded and which device it uses."""

    output_dir: str | None = None  # run dir; None = runs/<command>/<timestamp>[-name]
    name: str | None = None  # optional suffix of the default run dir name
    seed: int = 0  # global seed; each rank uses seed + rank
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    overwrite: bool = False  # start over in a non-empty run dir (train moves the old run into replaced-<time>/)
    resume: bool = False  # continue the run found in output_dir
    allow_config_change: bool = False  # train --resume: accept a config that differs from the checkpoint's (the run is then not exact)

    def validate(self) -> None:
        check_device(self.device, "run.device")
        _check(0 <= self.seed <= MAX_SEED, "run.seed", f"must be in [0, {MAX_SEED}]")


# --------------------------------------------------------------------------------------------
# lss describe
# --------------------------------------------------------------------------------------------


@dataclass
class DescribeConfig:
    """`lss describe`: LLM-written visual descriptions of each action class."""

    labels: str = "lss530"  # built-in label set name or a text file with one name per line
    out: str = "descriptions.jsonl"  # JSON Lines output, resumed if it exists
    prompt: str = "describe_actions_v1"  # a file in prompts/ (name or path)
    model: str = "gpt-4o-mini"  # model name as the server knows it
    per_class: int = 10  # descriptions requested per class
    temperature: float = 0.7  # sampling temperature; some diversity across descriptions helps
    max_tokens: int = 1024  # completion budget per call
    base_url: str | None = None  # OpenAI-compatible endpoint; None = OPENAI_BASE_URL or api.openai.com
    concurrency: int = 8  # requests in flight at once
    timeout: float = 60.0  # seconds per HTTP request
    max_retries: int = 6  # retries of one request on 429 / 5xx / timeout / dropped connection
    retry_base_delay: float = 1.0  # first backoff delay in seconds; doubles per retry, with jitter
    retry_max_delay: float = 60.0  # cap on one backoff delay, and on a server's Retry-After
    max_reasks: int = 2  # re-asks of one class whose reply failed validation
    limit: int | None = None  # only the first N classes (for trying a prompt)
    overwrite: bool = False  # start the output file over (the old one is kept as <out>.bak)

    def validate(self) -> None:
        _check(self.per_class >= 1, "per_class", "must be >= 1")
        _at_most(self.per_class, 1_000, "per_class", "descriptions per class")
        _check(0.0 <= self.temperature <= 2.0, "temperature", "must be in [0, 2]")
        _check(self.max_tokens >= 16, "max_tokens", "must be >= 16")
        _at_most(self.max_tokens, 10_000_000, "max_tokens", "tokens")
        _check(self.concurrency >= 1, "concurrency", "must be >= 1")
        _at_most(self.concurrency, MAX_WORKERS, "concurrency", "requests in flight")
        _check(self.timeout > 0, "timeout", "must be > 0")
        _at_most(self.timeout, MAX_SECONDS, "timeout", "seconds")
        _check(self.max_retries >= 0, "max_retries", "must be >= 0")
        _at_most(self.max_retries, MAX_RETRIES, "max_retries", "retries")
        _check(0 <= self.retry_base_delay <= self.retry_max_delay, "retry_base_delay",
               "need 0 <= retry_base_delay <= retry_max_delay")
        _at_most(self.retry_max_delay, MAX_SECONDS, "retry_max_delay", "seconds")
        _check(self.max_reasks >= 0, "max_reasks", "must be >= 0")
        _at_most(self.max_reasks, MAX_RETRIES, "max_reasks", "re-asks")
        _check(self.limit is None or self.limit >= 1, "limit", "must be >= 1 when set")
        _check(self.base_url is None or self.base_url.startswith(("http://", "https://")), "base_url",
               f"{self.base_url!r} is not an http(s) URL", hint="e.g. http://localhost:11434/v1")
        _check(bool(self.out.strip()), "out", "must name a file")


# --------------------------------------------------------------------------------------------
# lss build-concepts
# --------------------------------------------------------------------------------------------


@dataclass
class ConceptsConfig:
    """`lss build-concepts`: category and description banks from the frozen CLIP text tower."""

    labels: str = "lss530"  # category names: built-in label set or a text file
    descriptions: str | None = None  # descriptions JSONL (from `lss describe` or the synthetic set)
    out: str = "concepts.safetensors"  # output bank file
    model: str = "ViT-B-16"  # open_clip model name
    pretrained: str | None = "openai"  # open_clip tag, local weights file, local-dir:PATH, or null
    templates: str = "action_templates_v1"  # template set in prompts/ (name or path)
    extra_words: str | None = None  # extra category-space words, one per line (vocabulary expansion)
    extra_sentences: str | None = None  # extra description-space sentences without an owner
    allow_missing: bool = False  # allow categories without descriptions (concept distillation only)
    batch_size: int = 256  # texts per text-encoder call
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    overwrite: bool = False  # replace an existing `out` file (otherwise refused)

    def validate(self) -> None:
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _at_most(self.batch_size, MAX_BATCH, "batch_size", "texts per batch")
        check_device(self.device)


# --------------------------------------------------------------------------------------------
# lss train
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """The video encoder: an open_clip image tower given temporal modelling (docs/method.md §1)."""

    name: str = "ViT-B-16"  # open_clip model name; "lss-tiny" is shipped for CPU smoke runs
    pretrained: str | None = "openai"  # open_clip tag, local weights file, local-dir:PATH, or null
    temporal: Literal["divided", "mean"] = "divided"  # divided space-time attention, or mean pooling
    num_frames: int = 8  # T the temporal position embedding is created for (interpolated otherwise)
    init: str | None = None  # start student and teacher from a trained model's video encoder (export file or folder, hf-hub:org/name, run dir); None = CLIP's image tower
    grad_checkpointing: bool = False  # recompute block activations in backward to save memory
    compile: bool | None = None  # torch.compile the towers; None = on for CUDA, off on CPU

    def validate(self) -> None:
        _check(self.num_frames >= 1, "model.num_frames", "must be >= 1")
        _at_most(self.num_frames, MAX_FRAMES, "model.num_frames", "frames")


@dataclass
class DataConfig:
    """Unlabelled training videos and the loader feeding them."""

    dataset: str = "kinetics400"  # preset: ucf101|hmdb51|kinetics400|kinetics600|list|folder|synthetic (lss_cli.data.datasets)
    root: str = "data/kinetics400"  # dataset root (videos are found relative to it)
    list_file: str | None = None  # annotation list (for dataset=list, or to override a preset's list)
    split: str = "train"  # which split of the preset to train on, e.g. train, train1 (labels are ignored in training)
    batch_size: int = 32  # clips per GPU per step
    num_workers: int = 8  # DataLoader worker processes (each decodes with one FFmpeg thread)
    seek_mode: Literal["exact", "approximate"] = "exact"  # exact: frame-accurate, and faster on 10-s clips here (benchmarks/data_throughput.py); approximate skips the packet scan of long files
    decode_timeout: float = 60.0  # seconds before a hanging decode counts as unreadable

    def validate(self) -> None:
        _check(self.batch_size >= 1, "data.batch_size", "must be >= 1")
        _at_most(self.batch_size, MAX_BATCH, "data.batch_size", "clips per batch")
        _check(self.num_workers >= 0, "data.num_workers", "must be >= 0")
        _at_most(self.num_workers, MAX_WORKERS, "data.num_workers", "workers")
        _check(self.decode_timeout > 0, "data.decode_timeout", "must be > 0")
        _at_most(self.decode_timeout, MAX_SECONDS, "data.decode_timeout", "seconds")


@dataclass
class ViewsConfig:
    """Multi-view sampling for self-distillation (docs/method.md §2)."""

    global_views: int = 2  # V_g: seen by teacher and student
    global_frames: int = 8  # T_g frames per global view
    global_size: int = 224  # pixels (square)
    global_scale: tuple[float, float] = (0.4, 1.0)  # random-resized-crop area range
    global_span: tuple[float, float] = (0.8, 1.0)  # fraction of the clip a global view covers (reconstruction)
    local_views: int = 8  # V_l: seen by the student only
    local_frames: list[int] = field(default_factory=lambda: [8])  # T_l; one value, or one per local view
    local_size: int = 96  # pixels (square)
    local_scale: tuple[float, float] = (0.05, 0.4)  # random-resized-crop area range
    local_span: tuple[float, float] = (0.25, 0.5)  # shorter temporal windows (reconstruction)
    flip_p: float = 0.5  # horizontal flip probability
    color_jitter_p: float = 0.8  # probability of colour jitter per view
    color_jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue strengths (DINO)
    grayscale_p: float = 0.2  # probability of grayscale per view

    def validate(self) -> None:
        _check(self.global_views >= 1, "views.global_views", "must be >= 1")
        _check(self.local_views >= 0, "views.local_views", "must be >= 0")
        for key in ("global_views", "local_views"):
            _at_most(getattr(self, key), MAX_VIEWS, f"views.{key}", "views")
        for key, frames in (("global_frames", [self.global_frames]), ("local_frames", self.local_frames)):
            _check(all(t >= 1 for t in frames), f"views.{key}", "must be >= 1")
            _at_most(max(frames, default=0), MAX_FRAMES, f"views.{key}", "frames")
        for key in ("global_size", "local_size"):
            _check(getattr(self, key) >= 1, f"views.{key}", "must be >= 1")
            _at_most(getattr(self, key), MAX_SIZE, f"views.{key}", "pixels")
        _check(self.global_views + self.local_views >= 2, "views", "need at least 2 views in total",
               hint="distillation compares a teacher view with a different student view")
        _check(len(self.local_frames) in (1, self.local_views) or self.local_views == 0,
               "views.local_frames", f"give 1 value or {self.local_views} (one per local view)")
        for key in ("global_scale", "local_scale", "global_span", "local_span"):
            lo, hi = getattr(self, key)
            _check(0.0 < lo <= hi <= 1.0, f"views.{key}", f"need 0 < low <= high <= 1, got ({lo}, {hi})")
        for key in ("flip_p", "color_jitter_p", "grayscale_p"):
            _check(0.0 <= getattr(self, key) <= 1.0, f"views.{key}", "must be a probability in [0, 1]")
        _check(all(v >= 0 for v in self.color_jitter) and self.color_jitter[3] <= 0.5, "views.color_jitter",
               "need brightness, contrast, saturation >= 0 and 0 <= hue <= 0.5")


@dataclass
class LossConfig:
    """Concept distillation, concept alignment and the uniform prior (docs/method.md §4).

    Temperatures act on cosine scores in [-1, 1]. CLIP's own zero-shot logits are 100 x cosine,
    i.e. a temperature of 0.01; a softer student (0.01) and a sharper teacher (0.004, DINO's 0.1/0.04
    ratio) keep the distributions as peaked as CLIP's own, so step 0 starts from CLIP's zero-shot
    behaviour rather than a near-uniform distribution.
    """

    concepts: str = "concepts.safetensors"  # concept bank file from `lss build-concepts`
    student_temp: float = 0.01  # tau_s
    teacher_temp: float = 0.004  # tau_t after warm-up
    warmup_teacher_temp: float = 0.004  # tau_t at step 0 (equal = no warm-up)
    warmup_teacher_temp_epochs: int = 0  # linear warm-up length of tau_t
    center_momentum: float = 0.9  # m_c of the teacher-score centre
    center_init: Literal["zero", "first_batch"] = "first_batch"  # first centre: zeros (DINO) or the first batch's mean (reconstruction)
    w_cd: float = 1.0  # weight of concept distillation (both banks)
    w_ca: float = 1.0  # weight of concept alignment
    w_u: float = 0.1  # weight of the uniform prior KL(mean p_s,cat || uniform) (reconstruction)
    ca_aggregation: Literal["sum", "mean"] = "sum"  # how description probabilities map to categories
    ca_direction: Literal["both", "desc_to_cat", "cat_to_desc"] = "both"  # which CA terms are used
    prior_scope: Literal["view", "step"] = "step"  # uniform prior pooled over the optimizer step (all views, micro-batches, ranks: batch-independent), or per student view and micro-batch

    def validate(self) -> None:
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            _check(getattr(self, key) > 0, f"loss.{key}", "must be > 0")
        _check(0.0 <= self.center_momentum < 1.0, "loss.center_momentum", "must be in [0, 1)")
        _check(self.warmup_teacher_temp_epochs >= 0, "loss.warmup_teacher_temp_epochs", "must be >= 0")
        _at_most(self.warmup_teacher_temp_epochs, MAX_EPOCHS, "loss.warmup_teacher_temp_epochs", "epochs")
        for key in ("w_cd", "w_ca", "w_u"):
            _check(getattr(self, key) >= 0, f"loss.{key}", "must be >= 0")


@dataclass
class OptimConfig:
    """AdamW with warm-up + cosine schedules (per iteration)."""

    epochs: int = 20  # passes over the training list
    lr: float = 1e-5  # peak lr of pretrained CLIP weights at a global batch of 256 clips (scaled linearly)
    temporal_lr: float = 1e-4  # peak lr of the new temporal parameters at global batch 256
    min_lr: float = 1e-7  # final lr of the cosine schedule
    warmup_epochs: float = 1.0  # linear lr warm-up
    weight_decay: float = 0.04  # start of the weight-decay cosine schedule (DINO)
    weight_decay_end: float = 0.1  # end of the weight-decay schedule
    betas: tuple[float, float] = (0.9, 0.999)  # AdamW betas
    clip_grad: float = 3.0  # max gradient norm; 0 disables clipping
    global_batch: int | None = None  # target clips per optimizer step; gradient accumulation fills it

    def validate(self) -> None:
        _check(self.epochs >= 1, "optim.epochs", "must be >= 1")
        _at_most(self.epochs, MAX_EPOCHS, "optim.epochs", "epochs")
        _check(self.lr > 0 and self.temporal_lr > 0, "optim.lr", "learning rates must be > 0")
        _check(0 <= self.min_lr <= min(self.lr, self.temporal_lr), "optim.min_lr", "must be in [0, lr]")
        _check(self.warmup_epochs >= 0, "optim.warmup_epochs", "must be >= 0")
        _at_most(self.warmup_epochs, MAX_EPOCHS, "optim.warmup_epochs", "epochs")
        _check(self.clip_grad >= 0, "optim.clip_grad", "must be >= 0 (0 disables)")
        _check(self.global_batch is None or self.global_batch >= 1, "optim.global_batch", "must be >= 1")
        _at_most(self.global_batch or 0, MAX_BATCH, "optim.global_batch", "clips per step")


@dataclass
class TeacherConfig:
    """The EMA teacher."""

    momentum: float = 0.996  # EMA momentum at step 0
    momentum_end: float = 1.0  # momentum at the last step (cosine schedule)

    def validate(self) -> None:
        _check(0.0 <= self.momentum <= self.momentum_end <= 1.0, "teacher.momentum",
               "need 0 <= momentum <= momentum_end <= 1")


@dataclass
class LogConfig:
    """Logging and checkpointing cadence."""

    every: int = 20  # steps between metrics.jsonl lines
    save_every: int = 1000  # steps between checkpoints (one is always written at the end)
    keep_last: int = 3  # checkpoints kept on disk (older ones are deleted)
    tensorboard: bool = False  # also write TensorBoard events (needs the `tensorboard` extra)
    wandb: bool = False  # also log to Weights & Biases (needs the `wandb` extra; WANDB_MODE=offline works offline)
    wandb_project: str = "lss-cli"  # the W&B project of the run (the run's name is its run dir's name)

    def validate(self) -> None:
        _check(self.every >= 1, "log.every", "must be >= 1")
        _check(self.save_every >= 1, "log.save_every", "must be >= 1")
        _check(self.keep_last >= 1, "log.keep_last", "must be >= 1")
        _check(bool(self.wandb_project.strip()), "log.wandb_project", "must not be empty")


@dataclass
class TrainEvalConfig:
    """Zero-shot accuracy of the teacher on a held-out list while training runs
    (`lss_cli.train.periodic_eval`): logged to metrics.jsonl, best kept as checkpoints/best."""

    every: int = 0  # steps between evaluations, plus one at the last step; 0 = off
    dataset: str | None = None  # preset of the held-out list, as `lss eval --dataset`; None = data.dataset
    root: str | None = None  # its root; None = data.root
    list_file: str | None = None  # its labelled list (dataset=list; your list for kinetics600-zs); None = the preset's test list
    split: int | str | None = None  # split as `lss eval --splits` names it (1..3; Kinetics: val); None = the dataset's first (1, or val); lists use their test list
    max_videos: int | None = 1000  # evaluate an evenly spaced subset of this many videos (every class of a class-sorted list kept); None = all
    templates: str = "action_templates_v1"  # zero-shot prompt templates (prompts/ name or path)
    num_frames: int = 8  # frames per video (one centre view, as `lss eval`'s default)
    batch_size: int = 16  # clips per forward
    num_workers: int = 2  # decoding workers, started for each evaluation
    metric: Literal["top1", "top5"] = "top1"  # what checkpoints/best is kept by (a strictly better value replaces it)

    def validate(self) -> None:
        _check(self.every >= 0, "eval.every", "must be >= 0 (0 = off)")
        _check(self.max_videos is None or self.max_videos >= 1, "eval.max_videos", "must be >= 1 (or null: all)")
        _check(not isinstance(self.split, int) or self.split >= 1, "eval.split", "split numbers start at 1")
        _check(self.num_frames >= 1, "eval.num_frames", "must be >= 1")
        _at_most(self.num_frames, MAX_FRAMES, "eval.num_frames", "frames")
        _check(self.batch_size >= 1, "eval.batch_size", "must be >= 1")
        _at_most(self.batch_size, MAX_BATCH, "eval.batch_size", "clips per batch")
        _check(self.num_workers >= 0, "eval.num_workers", "must be >= 0")
        _at_most(self.num_workers, MAX_WORKERS, "eval.num_workers", "workers")


@dataclass
class TrainConfig:
    """`lss train`: LSS self-distillation."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    views: ViewsConfig = field(default_factory=ViewsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: TrainEvalConfig = field(default_factory=TrainEvalConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def validate(self) -> None:
        gb = self.optim.global_batch
        if gb is not None:
            _check(gb % self.data.batch_size == 0, "optim.global_batch",
                   f"must be a multiple of data.batch_size ({self.data.batch_size})",
                   hint="the remainder cannot be filled by whole accumulation steps")


# --------------------------------------------------------------------------------------------
# lss eval
# --------------------------------------------------------------------------------------------


@dataclass
class EvalConfig:
    """`lss eval zero-shot` / `lss eval linear-probe`: protocol and views (docs/method.md §6)."""

    dataset: str = "ucf101"  # ucf101 | hmdb51 | kinetics400 | kinetics600 | kinetics600-zs | list | folder | synthetic
    root: str = "data/ucf101"  # dataset root
    list_file: str | None = None  # test/eval list (dataset=list; the user's list for kinetics600-zs; a Kinetics CSV instead of the split's for kinetics400/600)
    train_list: str | None = None  # linear probe: training list when list_file is given (else <root>/train.txt)
    splits: list[int | str] | None = None  # splits to evaluate; None = the dataset's: 1, 2, 3 (ucf101, hmdb51, kinetics600-zs) or val (kinetics400, kinetics600); lists, folders and synthetic have one
    checkpoint: str | None = None  # exported model or training checkpoint; None = plain CLIP baseline
    model: str = "ViT-B-16"  # CLIP model for the baseline (a checkpoint carries its own)
    pretrained: str | None = "openai"  # its weights (tag, file, local-dir:PATH, or none = random init)
    seed: int = 0  # random-init seed of a baseline with pretrained none (training uses run.seed the same way)
    templates: str = "action_templates_v1"  # zero-shot prompt templates (prompts/ name or path)
    pairs: str | None = None  # time-reversal class pairs for the direction accuracy: one pair a line, two class names separated by a TAB; None = <root>/pairs.txt for the synthetic dataset when it exists, else no direction accuracy
    num_frames: int = 8  # frames per view (centres of equal segments)
    num_clips: int = 1  # temporal views
    num_crops: int = 1  # spatial views: 1 (centre) or 3 (left/centre/right)
    features: Literal["pre-proj", "proj"] = "pre-proj"  # linear probe: features before the projection (CLIP's probes) or after it
    probe_standardize: bool = False  # linear probe: z-score features with the train set's mean/std (CLIP does not)
    probe_val_split: Literal["grouped", "stratified"] = "grouped"  # linear probe: validation keeps source groups together (UCF101 gNN, HMDB51 source video) or holds out single videos per class
    probe_l2_range: tuple[float, float] = (1e-6, 1e6)  # linear probe: range of the L2 strength λ = 1/C searched (CLIP's)
    batch_size: int = 16  # clips per forward (the last batch is padded to it: one compiled shape)
    num_workers: int = 4  # decoding workers
    compile: bool | None = None  # torch.compile the encoder forward; None = on for CUDA, off on CPU
    cache_dir: str | None = None  # per-video feature cache; None = runs/feature-cache (shared by all evals)
    out: str | None = None  # results JSON; None = <run dir>/results.json
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def validate(self) -> None:
        _check(self.splits is None or len(self.splits) >= 1, "splits", "give at least one split",
               hint="or leave splits unset: the dataset's own")
        _check(self.num_frames >= 1, "num_frames", "must be >= 1")
        _at_most(self.num_frames, MAX_FRAMES, "num_frames", "frames")
        _check(self.num_clips >= 1, "num_clips", "must be >= 1")
        _at_most(self.num_clips, MAX_VIEWS, "num_clips", "views")
        _check(self.num_crops in (1, 3), "num_crops", "must be 1 or 3")
        _check(self.batch_size >= 1, "batch_size", "must be >= 1")
        _at_most(self.batch_size, MAX_BATCH, "batch_size", "clips per batch")
        _check(self.num_workers >= 0, "num_workers", "must be >= 0")
        _at_most(self.num_workers, MAX_WORKERS, "num_workers", "workers")
        _check(0 <= self.seed <= MAX_SEED, "seed", f"must be in [0, {MAX_SEED}]")
        _check(all(k >= 1 if isinstance(k, int) else bool(k.strip()) for k in self.splits or ()), "splits",
               "split numbers start at 1, and a named split (val) needs a name")
        lo, hi = self.probe_l2_range
        _check(0 < lo <= hi, "probe_l2_range", "must be two strengths 0 < low <= high", hint="e.g. [1e-6, 1e6]")
        check_device(self.device)


# Which dataclass a YAML file is read into, by command (for `lss config show --for`).
CONFIGS: dict[str, type] = {
    "train": TrainConfig,
    "describe": DescribeConfig,
    "build-concepts": ConceptsConfig,
    "eval": EvalConfig,
}


# --------------------------------------------------------------------------------------------
# Loading machinery
# --------------------------------------------------------------------------------------------


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (),
                flags: dict[str, Any] | None = None) -> T:
    """Build `cls` from defaults < YAML `path` < dotted `overrides` < explicit `flags`, then validate.

    `flags` maps dotted keys to values from CLI options; entries whose value is None (flag not
    given) are ignored so they do not mask the YAML.
    """
    data: dict[str, Any] = read_yaml(path) if path is not None else {}
    for item in overrides:
        key, value = parse_override(item)
        _set_dotted(cls, data, key, value)
    for key, value in (flags or {}).items():
        if value is not None:
            _set_dotted(cls, data, key, value)
    cfg = _build(cls, data, "")
    validate(cfg)
    return cfg


def config_path(path: str | Path) -> Path:
    """A config file, or the name of one shipped in examples/ (`synthetic_tiny`, `lss_k400_vitb16`):
    a file of that name in the current directory wins."""
    path = Path(path)
    if path.is_file():
        return path
    name = path.name.removesuffix(".yaml")
    if path.parent == Path(".") and name in shipped_configs():
        return example_path(name)
    raise InputFileError(f"config file not found: {path}",
                         hint="check the path (it is relative to the current directory), or name a shipped "
                              f"config: {', '.join(shipped_configs())}")


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = config_path(path)
    try:
        data = yaml.safe_load(read_text(path, "config file"))
    except (yaml.YAMLError, ValueError) as e:  # ValueError: an integer too long to convert
        raise InputFileError(f"{path} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise InputFileError(f"{path}: expected a mapping of config keys at the top level, got {type(data).__name__}")
    return data


def parse_override(item: str) -> tuple[str, Any]:
    """`a.b=value` -> ("a.b", value typed by YAML). Splits on the first `=` only."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {item!r}", hint="write overrides as key=value, e.g. optim.lr=1e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except (yaml.YAMLError, ValueError):  # ValueError: an integer too long to convert
        value = raw  # not YAML (e.g. "a: b: c"): keep the text; the type check decides
    return key, value


def validate(cfg: Any, prefix: str = "") -> None:
    """Check every float in the tree is finite, then run every `validate()`, children first."""
    for f in fields(cfg):
        child = getattr(cfg, f.name)
        if is_dataclass(child):
            validate(child, _join(prefix, f.name))
        else:
            _check_finite(child, _join(prefix, f.name))
    if hasattr(cfg, "validate"):
        cfg.validate()


def _check_finite(value: Any, key: str) -> None:
    """No config value has a use for inf or nan; refused here, a nan would slip past every range
    check (all comparisons with it are false) and an inf would make a schedule or a wait endless."""
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_finite(v, f"{key}[{i}]")
    elif isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key}: {value} is not a finite number", hint="give an ordinary number, e.g. 0.5 or 1e-4")


def to_dict(cfg: Any) -> dict[str, Any]:
    """Plain dict (tuples as lists) ready for YAML/JSON."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(cfg))


def dump_yaml(cfg: Any) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=False)


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Rebuild a config saved with `to_dict` (e.g. from a checkpoint), with the same checks."""
    cfg = _build(cls, data, "")
    validate(cfg)
    return cfg


def _unknown_key(key: str, name: str, choices: list[str]) -> ConfigError:
    close = difflib.get_close_matches(name, choices, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(repr(_join(key, c)) for c in close)}?" if close else None
    valid = ", ".join(choices)
    return ConfigError(f"unknown config key {_join(key, name)!r} (valid here: {valid})", hint=hint)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _set_dotted(cls: type, data: dict[str, Any], key: str, value: Any) -> None:
    """Set `data[a][b] = value` for key "a.b", checking every part of the key against the schema."""
    parts = key.split(".")
    node, node_cls, prefix = data, cls, ""
    for i, name in enumerate(parts):
        hints = get_type_hints(node_cls)
        if name not in hints:
            raise _unknown_key(prefix, name, list(hints))
        if i == len(parts) - 1:
            node[name] = value
            return
        sub_cls = hints[name]
        if not is_dataclass(sub_cls):
            raise ConfigError(f"{_join(prefix, name)!r} is a value, not a section; cannot set {key!r}")
        sub = node.setdefault(name, {})
        if not isinstance(sub, dict):
            raise ConfigError(f"{_join(prefix, name)!r} must be a mapping")
        node, node_cls, prefix = sub, sub_cls, _join(prefix, name)


def _build(cls: type[T], data: dict[str, Any], prefix: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {data!r}")
    hints = get_type_hints(cls)
    init_names = [f.name for f in fields(cls) if f.init]
    kwargs = {}
    for name, value in data.items():
        if name not in init_names:
            raise _unknown_key(prefix, str(name), init_names)
        kwargs[name] = _coerce(value, hints[name], _join(prefix, name))
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    if get_origin(tp) is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _as_float(value: int | float, key: str) -> float:
    try:
        return float(value)
    except OverflowError:  # an int with hundreds of digits
        raise ConfigError(f"{key}: {_shown(value)} is too large for a number",
                          hint="give an ordinary number, e.g. 0.5 or 1e-4") from None


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check `value` against type `tp`, converting only where lossless (int -> float, list -> tuple)."""
    origin, args = get_origin(tp), get_args(tp)
    if tp is Any:
        return value
    if is_dataclass(tp):
        return _build(tp, value, key)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key}: expected {' or '.join(_type_name(a) for a in args)}, got {_shown(value)}")
    if origin is Literal:
        if value in args:
            return value
        close = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(a) for a in args)}",
                          hint=f"did you mean {close[0]!r}?" if close else None)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}", hint=f"write it as [a, b], e.g. {key}=[1,2]")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}: expected {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
        item_tp = args[0] if args else Any
        items = [_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return _as_float(value, key)
        if isinstance(value, str):  # YAML 1.1 reads "1e-4" (no dot) as text; it is a number to a user
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # e.g. run.name=2024: unambiguous as text
    else:
        raise TypeError(f"config field {key}: unsupported type {tp!r}")  # a bug in this module
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {_shown(value)}")


__all__ = [
    "CONFIGS", "ConceptsConfig", "DataConfig", "DescribeConfig", "EvalConfig", "LogConfig",
    "LossConfig", "ModelConfig", "OptimConfig", "RunConfig", "TeacherConfig", "TrainConfig", "TrainEvalConfig",
    "ViewsConfig", "dump_yaml", "from_dict", "load_config", "parse_override", "read_yaml",
    "to_dict", "validate",
]
