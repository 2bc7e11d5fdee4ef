"""Inputs of a training run, checked before any heavy work.

For the built-in synthetic dataset the inputs are made when missing (the dataset itself, then its
concept bank from the shipped hand-written descriptions), so `lss train examples/synthetic_tiny.yaml`
works from a fresh clone with no other step. Real datasets and banks are never made implicitly.
"""

from __future__ import annotations

from pathlib import Path

from lss_cli.config import ConceptsConfig, TrainConfig
from lss_cli.errors import ConfigError
from lss_cli.runtime.progress import log


def _synthetic(cfg: TrainConfig) -> bool:
    return cfg.data.dataset == "synthetic"


def check_inputs(cfg: TrainConfig) -> None:
    """Fail fast, naming the missing input and how to make it."""
    if cfg.log.tensorboard:
        from lss_cli.runtime.metrics import tensorboard_writer_class

        tensorboard_writer_class()
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
        from lss_cli.data.synth import SynthSpec, generate

        log(f"generating the synthetic dataset in {root}")
        generate(root, SynthSpec(seed=cfg.run.seed))
    if not Path(cfg.loss.concepts).is_file():
        from lss_cli.concepts import build_concepts

        log(f"building the concept bank {cfg.loss.concepts} from {root / 'descriptions.jsonl'}")
        build_concepts(ConceptsConfig(labels=str(root / "classes.txt"), descriptions=str(root / "descriptions.jsonl"),
                                      out=cfg.loss.concepts, model=cfg.model.name, pretrained=cfg.model.pretrained,
                                      device="cpu"))
