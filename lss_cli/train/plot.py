"""`lss plot RUN`: a training run's metrics.jsonl as one PNG, a panel per kind of curve against steps.

Panels (each only when the run logged its values): the loss and its parts; the collapse
diagnostics, the teacher's entropies (a teacher collapsing onto one concept drives both its
per-clip and its batch-mean entropy towards 0; a teacher collapsing to uniform scores drives its
per-clip entropy up to the batch-mean one); the gradient norm before clipping; and, with
`eval.every`, the held-out zero-shot accuracy with the step of checkpoints/best marked. It reads
the file as it is, so it also plots a run that is still going.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lss_cli.errors import ConfigError, InputFileError, LssError
from lss_cli.eval.results import finish_figure, pyplot
from lss_cli.runtime.metrics import read_metrics
from lss_cli.runtime.outputs import check_output, os_reason
from lss_cli.train.loop import SHOWN_PARTS

METRICS = "metrics.jsonl"
DEFAULT_OUT = "metrics.png"  # in the run dir

# Panel titles (what the tests look for) and the keys each draws.
LOSS = "loss and its parts"
COLLAPSE = "collapse diagnostics: teacher entropy (nats)"
GRAD = "gradient norm (before clipping)"
EVAL = "held-out zero-shot accuracy (teacher)"
LOSS_KEYS = ("loss", *SHOWN_PARTS)
EVAL_KEYS = ("eval_top1", "eval_top5")


def _entropy_keys(records: list[dict[str, Any]]) -> list[str]:
    """teacher_entropy_category, teacher_mean_entropy_description, ...: whatever the run logged."""
    return sorted({k for r in records for k in r if k.startswith("teacher_") and "entropy" in k})


def panels(records: list[dict[str, Any]]) -> list[tuple[str, list[str]]]:
    """(title, keys) of every panel the records have values for, in drawing order."""
    present = {k for r in records for k, v in r.items() if isinstance(v, int | float) and not isinstance(v, bool)}
    wanted = [(LOSS, list(LOSS_KEYS)), (COLLAPSE, _entropy_keys(records)), (GRAD, ["grad_norm"]),
              (EVAL, list(EVAL_KEYS))]
    return [(title, [k for k in keys if k in present]) for title, keys in wanted if any(k in present for k in keys)]


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of `key`; a null (a non-finite value, as metrics.jsonl writes it) is left out."""
    rows = [(r["step"], float(r[key])) for r in records
            if isinstance(r.get(key), int | float) and isinstance(r.get("step"), int)]
    return [s for s, _ in rows], [v for _, v in rows]


def training_figure(records: list[dict[str, Any]], title: str, plt: Any) -> Any:
    """The figure of a run's records (one panel per `panels()` entry, sharing the step axis)."""
    shown = panels(records)
    if not shown:
        raise InputFileError(f"{title}: no step records with numeric values to plot",
                             hint="a training run writes one line per logged step (log.every)")
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.8 * len(shown)), sharex=True, squeeze=False)
    for ax, (name, keys) in zip(axes[:, 0], shown, strict=True):
        for key in keys:
            steps, values = _series(records, key)
            marker = "o" if name == EVAL else None
            ax.plot(steps, values, label=key, marker=marker, markersize=3,
                    linewidth=1.8 if key == "loss" else 1.0)
        if name == LOSS and all(v > 0 for k in keys for v in _series(records, k)[1]):
            ax.set_yscale("log")  # the uniform prior is ~1000x smaller than the loss: a linear axis hides it
        if name == EVAL:
            _mark_best(ax, records)
            ax.set_ylim(0, 1.02)
        ax.set_title(name, fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[-1, 0].set_xlabel("optimizer step")
    fig.suptitle(title, fontsize=11)
    return fig


def _mark_best(ax: Any, records: list[dict[str, Any]]) -> None:
    """A dashed line at the step of checkpoints/best (the newest record's `eval_best_step`)."""
    best = next((r["eval_best_step"] for r in reversed(records) if r.get("eval_best_step") is not None), None)
    if best is not None:
        ax.axvline(best, color="grey", linestyle="--", linewidth=1, label=f"checkpoints/best (step {best})")


def metrics_file(run: str | Path) -> Path:
    """RUN's metrics.jsonl (RUN: a run dir or the file itself)."""
    run = Path(run)
    path = run / METRICS if run.is_dir() else run
    if not path.is_file():
        raise InputFileError(f"{path} not found" if run.is_dir() or not run.exists() else f"{run} is not a metrics file",
                             hint=f"give a training run dir (it holds {METRICS}) or its {METRICS}")
    return path


def plot_run(run: str | Path, out: str | Path | None = None) -> dict[str, Any]:
    """Draw RUN's metrics.jsonl to `out` (default RUN/metrics.png); returns what was drawn."""
    path = metrics_file(run)
    plt = pyplot()
    if plt is None:
        raise ConfigError("lss plot needs matplotlib", hint="pip install 'lss-cli[plots]'")
    out = check_output(Path(out) if out is not None else path.parent / DEFAULT_OUT, "plot", "--out")
    records = [r for r in read_metrics(path) if isinstance(r, dict)]
    fig = training_figure(records, str(path.parent), plt)
    shown = [title for title, _ in panels(records)]
    try:
        finish_figure(plt, fig, out)
    except OSError as e:
        plt.close(fig)
        raise LssError(f"could not write the plot to {out}: {os_reason(e)}",
                       hint="choose another --out") from None
    steps = [r["step"] for r in records if isinstance(r.get("step"), int)]
    return {"out": str(out), "metrics": str(path), "panels": shown, "records": len(records),
            "last_step": max(steps, default=None),
            "evaluations": sum(1 for r in records if isinstance(r.get("eval_top1"), int | float))}
