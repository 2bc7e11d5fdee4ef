"""`lss demo` (what `make demo` runs): the whole LSS pipeline on the built-in synthetic benchmark
with the tiny model, on CPU, in a few minutes.

The benchmark: 8 motion classes in 4 time-reversal pairs (moving left / right, up / down, rotating
clockwise / counterclockwise, growing / shrinking). Clip i of a pair's second class is clip i of
the first, played backwards, so a model that ignores frame order (the frame-average CLIP the
method starts from) is at chance on the *direction accuracy* (is the right member of the pair
scored above its mate?) by construction. The "CLIP" is `lss-tiny` pretrained on captioned stills
of the same world (`--pretrained synthetic-world`, made by `lss pretrain-tiny`), so its concept
spaces mean something: it knows where an object is and how large it is.

Stages, each writing into the demo's run dir:

1. `data/`: synthetic motion-class videos (train/test lists, class names, time-reversal pairs,
   hand-written descriptions).
2. `concepts.safetensors`: category and description banks from the shipped descriptions and the
   world's attribute sentences ("a shape on the left", "a large shape", ...: concept-space
   expansion), encoded by the tiny model's text tower (what `lss build-concepts` does).
3. `eval/baseline-zero-shot/`, `eval/baseline-linear-probe/`: the untrained model. At step 0 the
   video model is exactly its image tower applied per frame and averaged (docs/method.md §1), so this is
   the plain-CLIP baseline, measured under the same protocol as the trained model.
4. `train/`: LSS self-distillation with the settings of `examples/synthetic_tiny.yaml`.
5. `model.safetensors`: the exported teacher (what `lss export` writes).
6. `eval/trained-zero-shot/`, `eval/trained-linear-probe/`: the trained teacher.
7. `summary.json`: baseline vs trained (the table `lss results compare` prints for the four
   results files), stage timings and every path written.

All evaluations share one feature cache (`feature-cache/`). `benchmarks/learning.py` runs this
for several seeds and ablations (`DemoSettings.overrides`) and prints mean +- std.
"""

from __future__ import annotations

import json
import shlex
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from lss_cli.config import EvalConfig, TrainConfig, load_config
from lss_cli.data.synth import benchmark_spec, generate
from lss_cli.errors import ConfigError
from lss_cli.eval.compare import Comparison, compare, header, row_name, text_rows
from lss_cli.eval.results import evaluate
from lss_cli.models.artefact import export_teacher
from lss_cli.resources import example_path
from lss_cli.runtime.outputs import write_text_atomic
from lss_cli.runtime.progress import log
from lss_cli.runtime.rundir import make_run_dir
from lss_cli.train.inputs import build_synthetic_concepts
from lss_cli.train.loop import train

PROTOCOLS = ("zero-shot", "linear-probe")
TINY_WEIGHTS = "synthetic-world"  # the shipped pretrained weights of lss-tiny (lss_cli.models.clip.BUILTIN_WEIGHTS)


@dataclass(frozen=True)
class DemoSettings:
    """What `lss demo` may change; the defaults are the documented demo."""

    classes: int = 8  # motion classes of the synthetic set (2..10; the first 8 are 4 time-reversal pairs)
    videos_per_class: int = 24  # clips per class (a quarter of them are test clips)
    epochs: int | None = None  # training epochs; None = the example config's
    seed: int = 0  # data, model initialisation and training seed
    overrides: tuple[str, ...] = ()  # dotted train-config overrides on top of the example (ablations)
    descriptions: bool = True  # build the description bank from the class descriptions (ablation: off)


def tiny_train_config(data_root: str | Path, concepts: str | Path, output_dir: str | Path, *,
                      epochs: int | None = None, seed: int = 0, overrides: tuple[str, ...] = ()) -> TrainConfig:
    """`examples/synthetic_tiny.yaml` (+ `overrides`) as a TrainConfig, pointed at the demo's data,
    bank and run dir."""
    # The same file the README's train command uses; the demo's own settings win over the overrides.
    return load_config(TrainConfig, example_path("synthetic_tiny"), list(overrides),
                       flags={"data.root": str(data_root), "loss.concepts": str(concepts),
                              "run.output_dir": str(output_dir), "run.seed": seed, "optim.epochs": epochs})


def demo_eval_config(data_root: Path, checkpoint: str, cache_dir: Path, seed: int) -> EvalConfig:
    """The demo's eval protocol: the synthetic test list, one centre view of 8 frames, on CPU."""
    return EvalConfig(dataset="synthetic", root=str(data_root), checkpoint=checkpoint, model="lss-tiny",
                      pretrained=TINY_WEIGHTS, seed=seed, num_frames=8, num_clips=1, num_crops=1, batch_size=16,
                      num_workers=2, cache_dir=str(cache_dir), device="cpu")


class _Stages:
    """Runs named stages, logging each and recording its wall time."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        log(f"{len(self.seconds) + 1}. {name}", lead="demo ")
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = round(time.perf_counter() - start, 2)
        return out


def _evaluate_model(stages: _Stages, run: Path, tag: str, checkpoint: str, data_root: Path,
                    seed: int) -> dict[str, dict[str, Any]]:
    cfg = demo_eval_config(data_root, checkpoint, run / "feature-cache", seed)
    return {p: stages.run(f"{p} of the {tag} model", evaluate, cfg, p, output_dir=run / "eval" / f"{tag}-{p}")
            for p in PROTOCOLS}


LABELS = ("baseline (untrained)", "trained")  # the table's columns


def _comparison(baseline: dict[str, dict[str, Any]], trained: dict[str, dict[str, Any]]) -> Comparison:
    """Baseline vs trained, as `lss results compare` tabulates them: top-1 and, when the classes
    include a time-reversal pair, the direction accuracy, for each protocol (accuracies in [0, 1])."""
    return compare([baseline[p] for p in PROTOCOLS] + [trained[p] for p in PROTOCOLS], labels=list(LABELS))


def _comparison_rows(c: Comparison) -> list[dict[str, Any]]:
    """summary.json's `comparison`: metric, baseline, trained, change per row."""
    return [{"metric": row_name(c, row), "baseline": row.values[0], "trained": row.values[1],
             "change": row.changes[0]} for row in c.rows]


def _check_settings(settings: DemoSettings) -> None:
    """Bad settings fail before anything is written (overrides included)."""
    spec = _synth_spec(settings)
    spec.validate()
    if settings.epochs is not None and settings.epochs < 1:
        raise ConfigError(f"--epochs must be >= 1, got {settings.epochs}")
    cfg = tiny_train_config(".", "concepts.safetensors", ".", epochs=settings.epochs, overrides=settings.overrides)
    n_train = spec.classes * (spec.videos_per_class - spec.test_count)
    if n_train < cfg.data.batch_size:
        raise ConfigError(f"{spec.classes} classes x {spec.videos_per_class} clips leave {n_train} training clips, "
                          f"fewer than one batch of {cfg.data.batch_size}",
                          hint="raise --videos-per-class or --classes")


def _make_data(run: Path, settings: DemoSettings) -> tuple[Path, dict[str, Any]]:
    root = run / "data"
    return root, generate(root, _synth_spec(settings))


def _synth_spec(settings: DemoSettings):
    return benchmark_spec(classes=settings.classes, videos_per_class=settings.videos_per_class, seed=settings.seed)


def _make_concepts(run: Path, data_root: Path, settings: DemoSettings) -> dict[str, Any]:
    return build_synthetic_concepts(data_root, run / "concepts.safetensors", "lss-tiny", TINY_WEIGHTS,
                                    descriptions=settings.descriptions)


def run_demo(output_dir: str | Path | None = None, settings: DemoSettings | None = None) -> dict[str, Any]:
    """Run every stage (see the module docstring); returns the summary also written to summary.json."""
    settings = settings or DemoSettings()
    _check_settings(settings)
    run = make_run_dir("demo", output_dir)
    log(f"demo: writing to {run}")
    start = time.perf_counter()
    stages = _Stages()
    data_root, data = stages.run("generate the synthetic dataset", _make_data, run, settings)
    stages.run("build the concept banks", _make_concepts, run, data_root, settings)
    baseline = _evaluate_model(stages, run, "baseline", "none", data_root, settings.seed)
    train_cfg = tiny_train_config(data_root, run / "concepts.safetensors", run / "train", epochs=settings.epochs,
                                  seed=settings.seed, overrides=settings.overrides)
    trained_run = stages.run("train (LSS self-distillation)", train, train_cfg)
    model_file = run / "model.safetensors"
    stages.run("export the teacher", export_teacher, trained_run["run_dir"], model_file)
    trained = _evaluate_model(stages, run, "trained", str(model_file), data_root, settings.seed)
    comparison = _comparison(baseline, trained)
    summary = {
        "run_dir": str(run),
        "settings": asdict(settings),
        "dataset": {k: data[k] for k in ("classes", "train", "test", "frames", "size", "pairs")},
        "training": {"steps": trained_run["steps"], "epochs": train_cfg.optim.epochs,
                     "skipped_videos": trained_run["skipped_videos"]},
        "comparison": _comparison_rows(comparison),
        "table": {"header": header(comparison), "rows": text_rows(comparison)},
        "compare_command": shlex.join(["lss", "results", "compare", str(run / "eval"), "--label", LABELS[0],
                                       "--label", LABELS[1]]),
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
