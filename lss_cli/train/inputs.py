"""Inputs of a training run, checked before any heavy work.

For the built-in synthetic dataset the inputs are made when missing (the demo's benchmark, then
its concept bank from the shipped hand-written descriptions and the world's attribute sentences:
`build_synthetic_concepts`, which `lss demo` uses too), so `lss train examples/synthetic_tiny.yaml`
works from a fresh clone with no other step. Real datasets and banks are never made implicitly.
"""

from __future__ import annotations

from pathlib import Path

from lss_cli.concepts.build import build_concepts
from lss_cli.config import ConceptsConfig, TrainConfig
from lss_cli.data.stills import attribute_prompts
from lss_cli.data.synth import benchmark_spec, generate
from lss_cli.errors import ConfigError
from lss_cli.runtime.metrics import tensorboard_writer_class
from lss_cli.runtime.progress import log


def _synthetic(cfg: TrainConfig) -> bool:
    return cfg.data.dataset == "synthetic"


def check_inputs(cfg: TrainConfig) -> None:
    """Fail fast, naming the missing input and how to make it."""
    if cfg.log.tensorboard:
        tensorboard_writer_class()  # raises, saying how to install it, when tensorboard is missing
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
