"""`lss demo` (what `make demo` runs): the whole LSS pipeline on the built-in synthetic dataset with
the tiny model, on CPU, in a few minutes.

Stages, each writing into the demo's run dir:

1. `data/`: synthetic motion-class videos (train/test lists, class names, hand-written descriptions).
2. `concepts.safetensors`: category and description banks from the shipped descriptions, encoded
   by the tiny model's text tower (what `lss build-concepts` does).
3. `eval/baseline-zero-shot/`, `eval/baseline-linear-probe/`: the untrained model. At step 0 the
   video model is exactly its image tower applied per frame and averaged (SPEC §3.1), so this is
   the plain-CLIP baseline, measured under the same protocol as the trained model.
4. `train/`: LSS self-distillation with the settings of `examples/synthetic_tiny.yaml`.
5. `model.safetensors`: the exported teacher (what `lss export` writes).
6. `eval/trained-zero-shot/`, `eval/trained-linear-probe/`: the trained teacher.
7. `summary.json`: baseline vs trained, stage timings and every path written.

All evaluations share one feature cache (`feature-cache/`). The tiny model starts from random
weights (no downloads), so its zero-shot numbers show the pipeline working, not CLIP's zero-shot
skill; the synthetic classes differ only in motion, which a frame average cannot see.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lss_cli.config import EvalConfig, TrainConfig, from_dict
from lss_cli.errors import ConfigError
from lss_cli.runtime.progress import log
from lss_cli.runtime.rundir import default_run_dir, prepare_run_dir, write_text_atomic

# The values of examples/synthetic_tiny.yaml (data root and concepts are set per demo run). Kept in
# code so an installed package runs the demo without the repository; a test checks both agree.
PROTOCOLS = ("zero-shot", "linear-probe")


@dataclass(frozen=True)
class DemoSettings:
    """What `lss demo` may change; the defaults are the documented demo."""

    classes: int = 8  # motion classes of the synthetic set (2..10)
    videos_per_class: int = 12  # clips per class (a quarter of them are test clips)
    epochs: int | None = None  # training epochs; None = the example config's
    seed: int = 0  # data, model initialisation and training seed


def tiny_train_config(data_root: str | Path, concepts: str | Path, output_dir: str | Path, *,
                      epochs: int | None = None, seed: int = 0) -> TrainConfig:
    """`examples/synthetic_tiny.yaml` as a TrainConfig, pointed at the demo's data, bank and run dir."""
    from lss_cli.config import read_yaml
    from lss_cli.resources import example_path

    data = read_yaml(example_path("synthetic_tiny"))  # the same file the README's train command uses
    data["data"]["root"] = str(data_root)
    data["loss"]["concepts"] = str(concepts)
    data["run"].update(output_dir=str(output_dir), seed=seed)
    if epochs is not None:
        data["optim"]["epochs"] = epochs
    return from_dict(TrainConfig, data)


def demo_eval_config(data_root: Path, checkpoint: str, cache_dir: Path, seed: int) -> EvalConfig:
    """The demo's eval protocol: the synthetic test list, one centre view of 8 frames, on CPU."""
    return EvalConfig(dataset="synthetic", root=str(data_root), checkpoint=checkpoint, model="lss-tiny",
                      pretrained=None, seed=seed, num_frames=8, num_clips=1, num_crops=1, batch_size=16,
                      num_workers=2, cache_dir=str(cache_dir), device="cpu")


class _Stages:
    """Runs named stages, logging each and recording its wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        log(f"[bold]demo[/bold] {len(self.seconds) + 1}. {name}")
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return out


def _evaluate_model(stages: _Stages, run: Path, tag: str, checkpoint: str, data_root: Path,
                    seed: int) -> dict[str, dict[str, Any]]:
    from lss_cli.eval.results import evaluate

    cfg = demo_eval_config(data_root, checkpoint, run / "feature-cache", seed)
    return {p: stages.run(f"{p} of the {tag} model", evaluate, cfg, p, output_dir=run / "eval" / f"{tag}-{p}")
            for p in PROTOCOLS}


def _comparison(baseline: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows of the summary table: metric, baseline, trained (accuracies in [0, 1])."""
    rows = []
    for protocol, metric in (("zero-shot", "top1"), ("zero-shot", "top5"), ("linear-probe", "top1")):
        b, t = baseline[protocol]["summary"][metric]["mean"], trained[protocol]["summary"][metric]["mean"]
        rows.append({"metric": f"{protocol} {metric.replace('top', 'top-')}", "baseline": b, "trained": t,
                     "change": t - b})
    return rows


def _check_settings(settings: DemoSettings) -> None:
    """Bad settings fail before anything is written."""
    from lss_cli.data.synth import SynthSpec

    SynthSpec(classes=settings.classes, videos_per_class=settings.videos_per_class, seed=settings.seed).validate()
    if settings.epochs is not None and settings.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {settings.epochs}")


def _make_data(run: Path, settings: DemoSettings) -> tuple[Path, dict[str, Any]]:
    from lss_cli.data.synth import SynthSpec, generate

    root = run / "data"
    return root, generate(root, SynthSpec(classes=settings.classes, videos_per_class=settings.videos_per_class,
                                          seed=settings.seed))


def _make_concepts(run: Path, data_root: Path) -> dict[str, Any]:
    from lss_cli.concepts import build_concepts
    from lss_cli.config import ConceptsConfig

    return build_concepts(ConceptsConfig(labels=str(data_root / "classes.txt"),
                                         descriptions=str(data_root / "descriptions.jsonl"),
                                         out=str(run / "concepts.safetensors"), model="lss-tiny", pretrained=None,
                                         device="cpu"))


def run_demo(output_dir: str | Path | None = None, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run every stage (see the module docstring); returns the summary also written to summary.json."""
    from lss_cli.models.export import export_teacher
    from lss_cli.train.loop import train

    settings = settings or DemoSettings()
    _check_settings(settings)
    run = prepare_run_dir(output_dir or default_run_dir("demo"))
    log(f"demo: writing to {run}")
    start = time.perf_counter()
    stages = _Stages()
    data_root, data = stages.run("generate the synthetic dataset", _make_data, run, settings)
    stages.run("build the concept banks from the shipped descriptions", _make_concepts, run, data_root)
    baseline = _evaluate_model(stages, run, "baseline", "none", data_root, settings.seed)
    train_cfg = tiny_train_config(data_root, run / "concepts.safetensors", run / "train", epochs=settings.epochs,
                                  seed=settings.seed)
    trained_run = stages.run("train (LSS self-distillation)", train, train_cfg)
    model_file = run / "model.safetensors"
    stages.run("export the teacher", export_teacher, trained_run["run_dir"], model_file)
    trained = _evaluate_model(stages, run, "trained", str(model_file), data_root, settings.seed)
    summary = {
        "run_dir": str(run),
        "settings": asdict(settings),
        "dataset": {k: data[k] for k in ("classes", "train", "test", "frames", "size")},
        "training": {"steps": trained_run["steps"], "epochs": train_cfg.optim.epochs,
                     "skipped_videos": trained_run["skipped_videos"]},
        "comparison": _comparison(baseline, trained),
        "views": baseline["zero-shot"]["views"],
        "paths": _paths(run, data_root, trained_run, model_file, baseline, trained),
        "stage_seconds": stages.seconds,
        "seconds": round(time.perf_counter() - start, 2),
    }
    summary["paths"]["summary"] = str(run / "summary.json")
    write_text_atomic(run / "summary.json", json.dumps(summary, indent=2) + "\n")
    return summary


def _paths(run: Path, data_root: Path, trained_run: dict[str, Any], model_file: Path,
           baseline: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> dict[str, str]:
    paths = {"dataset": str(data_root), "concepts": str(run / "concepts.safetensors"),
             "train run": trained_run["run_dir"], "checkpoint": trained_run["checkpoint"],
             "exported model": str(model_file), "feature cache": str(run / "feature-cache")}
    for tag, results in (("baseline", baseline), ("trained", trained)):
        for protocol, r in results.items():
            paths[f"{tag} {protocol}"] = r["results_file"]
    return paths
