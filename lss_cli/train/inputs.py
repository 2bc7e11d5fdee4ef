"""Inputs of a training run, checked before any heavy work.

For the built-in synthetic dataset the inputs are made when missing (the demo's benchmark, then
its concept bank from the shipped hand-written descriptions and the world's attribute sentences:
`build_synthetic_concepts`, which `lss demo` uses too), so `lss train examples/synthetic_tiny.yaml`
works from a fresh clone with no other step. Real datasets and banks are never made implicitly.

When the loader gives up on unreadable videos mid-run, `explain_loader_failure` says whether any
training video can be read at all (a wrong data.root, an unmounted disk) and drops the worker
process's traceback from the message.
"""

from __future__ import annotations

from pathlib import Path

from lss_cli.concepts.build import build_concepts
from lss_cli.config import ConceptsConfig, TrainConfig
from lss_cli.data.datasets import VideoList
from lss_cli.data.stills import attribute_prompts
from lss_cli.data.synth import benchmark_spec, generate
from lss_cli.data.video_io import check_video
from lss_cli.errors import ConfigError, LssError
from lss_cli.runtime.metrics import tensorboard_writer_class, wandb_module
from lss_cli.runtime.progress import log
from lss_cli.train.periodic_eval import held_out_videos


def _synthetic(cfg: TrainConfig) -> bool:
    return cfg.data.dataset == "synthetic"


def check_inputs(cfg: TrainConfig) -> None:
    """Fail fast, naming the missing input and how to make it."""
    if cfg.log.tensorboard:
        tensorboard_writer_class()  # raises, saying how to install it, when tensorboard is missing
    if cfg.log.wandb:
        wandb_module()  # the same for wandb
    if cfg.eval.every:
        held_out_videos(cfg)  # a wrong held-out list is refused before any model is built
    if not Path(cfg.loss.concepts).is_file() and not _synthetic(cfg):
        raise ConfigError(f"concept bank not found: {cfg.loss.concepts}",
                          hint="build it with `lss build-concepts ... --out " + cfg.loss.concepts + "`")
    if not Path(cfg.data.root).exists() and not _synthetic(cfg):
        raise ConfigError(f"data.root does not exist: {cfg.data.root}", hint="point data.root at your videos")


def ensure_synthetic_inputs(cfg: TrainConfig) -> None:
    """Generate the synthetic dataset and its concept bank when they are missing (rank 0 only)."""
    if not _synthetic(cfg):
        return
    root = Path(cfg.data.root)
    if not (root / "classes.txt").is_file():
        log(f"generating the synthetic dataset in {root}")
        generate(root, benchmark_spec(seed=cfg.run.seed))
    if not Path(cfg.loss.concepts).is_file():
        log(f"building the concept bank {cfg.loss.concepts} from {root / 'descriptions.jsonl'}")
        build_synthetic_concepts(root, cfg.loss.concepts, cfg.model.name, cfg.model.pretrained)


def build_synthetic_concepts(root: str | Path, out: str | Path, model: str, pretrained: str | None,
                             descriptions: bool = True) -> dict:
    """Both banks of a synthetic dataset: the class names; the class descriptions (unless
    `descriptions` is False, an ablation) and the world's attribute sentences ("a shape on the
    left", "a large shape", ...) as unowned extras: the concepts the pretrained tiny CLIP grounds."""
    root, out = Path(root), Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    world = out.with_name(out.stem + "-world-sentences.txt")
    world.write_text("".join(p + "\n" for prompts in attribute_prompts().values() for p in prompts))
    described = root / "descriptions.jsonl"
    if not descriptions:  # no class owns a description: concept alignment has nothing to align
        described = out.with_name(out.stem + "-no-descriptions.jsonl")
        described.write_text("")
    return build_concepts(ConceptsConfig(labels=str(root / "classes.txt"), descriptions=str(described),
                                         allow_missing=not descriptions, extra_sentences=str(world), out=str(out),
                                         model=model, pretrained=pretrained, device="cpu"))


def explain_loader_failure(videos: VideoList, error: LssError, timeout: float | None = 60.0) -> LssError:
    """The error to report when the training loader gave up with `error`: "none of the N training
    videos could be read" when no video of the list reads (checked in list order, stopping at the
    first readable one), else `error` itself without a DataLoader worker's traceback."""
    first_bad: tuple[str, str] | None = None
    for index in range(len(videos)):
        reason = check_video(videos.path(index), timeout)
        if reason is None:
            return _without_worker_traceback(error)
        first_bad = first_bad or (videos.path(index), reason)
    if first_bad is None:
        return _without_worker_traceback(error)
    path, reason = first_bad
    return LssError(f"none of the {len(videos)} training videos could be read (first: {path}: {reason})",
                    hint="run `lss data check` on the training list, and check data.root and data.list_file")


def _without_worker_traceback(error: LssError) -> LssError:
    """A DataLoader worker's exception reaches the main process re-created from its formatted
    traceback ("Caught LssError in DataLoader worker process 0. Original Traceback ..."), with
    the hint folded into the text: recover the message and hint from its last lines."""
    marker = f"{type(error).__module__}.{type(error).__qualname__}: "
    text = error.message
    if error.hint is not None or marker not in text:
        return error
    message, _, hint = text[text.rindex(marker) + len(marker):].partition("\nHint: ")
    return type(error)(message.strip(), hint=hint.strip() or None)
