"""Running an evaluation end to end, and writing what it found: results.json, table, plots.

results.json records the checkpoint, the model id, the resolved config, the protocol and views,
per-split numbers (top-1, top-5, direction accuracy when time-reversal class pairs are in effect,
per-class accuracy, confusion matrix, predictions), the number of videos listed / evaluated /
unreadable with every unreadable path and reason, versions and timing.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lss_cli.config import EvalConfig
from lss_cli.errors import LssError
from lss_cli.eval.features import Views
from lss_cli.eval.protocols import EvalContext, check_pairs, check_protocol, missing_videos, run_protocol
from lss_cli.models.artefact import load_video_model
from lss_cli.runtime.device import resolve_device
from lss_cli.runtime.dist import cleanup, init_distributed
from lss_cli.runtime.outputs import check_output, write_atomic, write_output, write_text_atomic
from lss_cli.runtime.progress import warn
from lss_cli.runtime.rundir import environment, make_run_dir

DEFAULT_CACHE_DIR = Path("runs") / "feature-cache"  # shared by every eval run started in this folder
# A list with more than this share of its videos missing is a wrong --root or --list-file, not a
# few lost files: evaluating it would report a meaningless accuracy.
MISSING_LIMIT = 0.5
MISSING_REPORT = "missing_videos.tsv"


def evaluate(cfg: EvalConfig, protocol: str, *, output_dir: str | Path | None = None,
             overwrite: bool = False) -> dict[str, Any]:
    """`lss eval zero-shot|linear-probe`: load the model, evaluate every split, write the results.

    Under `torchrun` every rank decodes and encodes its shard of each list, the features are
    gathered, and rank 0 alone writes results.json and the plots (`is_main` says which rank this is).
    """
    check_protocol(cfg, protocol)
    pairs = check_pairs(cfg)
    device = resolve_device(cfg.device)
    dist = init_distributed(device.type)
    if dist.distributed and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    try:
        out = Path(cfg.out) if cfg.out else None
        # An explicit --out without --output-dir makes its folder the run dir (other runs' results may share it).
        run_dir = make_run_dir(f"eval-{protocol}", output_dir or (out.parent if out else None),
                               overwrite=overwrite or (out is not None and output_dir is None))
        results_path = out or run_dir / "results.json"
        option = "--out" if out else "--output-dir"
        if dist.is_main:
            check_output(results_path, "results", option)  # a read-only folder fails now, not after the work
        refuse_missing_videos(cfg, protocol, run_dir, write=dist.is_main)
        model = load_video_model(cfg.checkpoint, model=cfg.model, pretrained=cfg.pretrained, device=device,
                                 seed=cfg.seed)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE_DIR
        ctx = EvalContext(cfg, model, device, cache_dir, Views(cfg.num_frames, cfg.num_clips, cfg.num_crops), pairs=pairs)
        results = run_protocol(ctx, protocol)
        results["environment"] = {**environment(str(device)), "world_size": dist.world_size}
        results["results_file"] = str(results_path)
        results["plots"] = []
        if dist.is_main:
            doc = json.dumps({k: v for k, v in results.items() if k not in ("results_file", "plots")}, indent=2) + "\n"
            # Unwritable now (disk full, permissions changed): saved in the run dir or a temp folder, and the error says where.
            write_output(results_path, partial(write_text_atomic, text=doc), what="results", option=option,
                         fallback_dir=run_dir)
            # Beside an explicit --out file, plots take its name so several results can share a folder.
            results["plots"] = write_plots(results, results_path.parent, prefix=f"{out.stem}-" if out else "")
        results["is_main"] = dist.is_main
        return results
    finally:
        cleanup()


def refuse_missing_videos(cfg: EvalConfig, protocol: str, run_dir: Path, write: bool) -> None:
    """Stop before any model is loaded or video decoded when a list misses most of its videos (a
    wrong --root or --list-file): an error with a short summary, every missing path in
    `run_dir/missing_videos.tsv` (written when `write`: rank 0). Fewer missing videos are evaluated
    as unreadable, as before."""
    checked = missing_videos(cfg, protocol)
    bad = [(what, videos, gone) for what, videos, gone in checked if len(gone) > MISSING_LIMIT * len(videos)]
    if not bad:
        return
    report = run_dir / MISSING_REPORT
    if write:
        write_text_atomic(report, "list\tpath\n" + "".join(f"{what}\t{videos.path(i)}\n"
                                                            for what, videos, gone in checked for i in gone))
    what, videos, gone = bad[0]
    first = ", ".join(videos.relpath(i) for i in gone[:3])
    more = f"; {len(bad) - 1} more list(s) likewise" if len(bad) > 1 else ""
    raise LssError(f"{what} ({videos.source}): {len(gone)} of {len(videos)} videos are missing under the root "
                   f"{cfg.root!r} (first: {first}){more}; nothing was evaluated. All missing paths: {report}",
                   hint="check --root (the folder the list's paths are relative to) and --list-file / --dataset; "
                        "`lss data check LIST --root ROOT` checks a list")


def write_plots(results: dict[str, Any], run_dir: Path, prefix: str = "") -> list[str]:
    """Per-class accuracy bars and a confusion matrix per split (needs the `plots` extra). A plot
    that cannot be written is a warning: the results file holds every number."""
    try:
        return _write_plots(results, run_dir, prefix)
    except OSError as e:
        warn(f"plots not written to {run_dir} ({e.strerror or e}); the results file holds every number")
        return []


# Beyond these many classes a plot shows a readable selection; results.json holds every number.
PER_CLASS_SHOWN = 25  # best and worst classes each, in the per-class chart
LABELLED_CONFUSION = 30  # classes up to which the confusion matrix is drawn with labels
TOP_CONFUSIONS = 20  # confusion pairs charted beyond that


def pyplot() -> Any:
    """matplotlib.pyplot on the file-only Agg backend, or None without the `plots` extra. The one
    import of matplotlib: evaluation's plots and `lss plot` (`lss_cli.train.plot`) draw with it."""
    try:  # matplotlib is an optional extra, so it is imported here and not at the top
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return None
    return plt


def _write_plots(results: dict[str, Any], run_dir: Path, prefix: str) -> list[str]:
    plt = pyplot()
    if plt is None:
        return []
    written = []
    for s in results["splits"]:
        tag = results["protocol"] if s["split"] == "-" else f"{results['protocol']}-split{s['split']}"
        tag = f"{prefix}{tag}"
        title = f"{results['dataset']} {tag}"
        written.append(_per_class_plot(plt, s, title, run_dir / f"per_class_{tag}.png"))
        if len(s["classes"]) <= LABELLED_CONFUSION:
            written.append(_confusion_plot(plt, s, title, run_dir / f"confusion_{tag}.png"))
        else:
            written.append(_top_confusions_plot(plt, s, title, run_dir / f"top_confusions_{tag}.png"))
    return written


def per_class_rows(per_class: dict[str, float | None], shown: int = PER_CLASS_SHOWN) -> list[tuple[str, float]]:
    """(class, top-1) best first; with more than 2 x `shown` classes only the `shown` best and the
    `shown` worst, so 101 or 600 classes still give a chart whose labels can be read."""
    rows = sorted(((name, acc if acc is not None else 0.0) for name, acc in per_class.items()),
                  key=lambda r: (-r[1], r[0]))
    return rows if len(rows) <= 2 * shown else rows[:shown] + rows[-shown:]


def top_confusions(confusion: list[list[int]], classes: list[str], n: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The `n` largest off-diagonal cells of a [K, K+1] confusion matrix (last column: unreadable),
    as {true, predicted, count, share of the true class's videos}, largest first."""
    cm = np.array(confusion, dtype=float)
    totals = np.maximum(cm.sum(1), 1)
    labels = [*classes, "unreadable"]
    cells = [(cm[i, j], i, j) for i in range(cm.shape[0]) for j in range(cm.shape[1]) if i != j and cm[i, j] > 0]
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [{"true": labels[i], "predicted": labels[j], "count": int(c), "share": float(c / totals[i])}
            for c, i, j in cells[:n]]


def _per_class_plot(plt, s: dict[str, Any], title: str, path: Path) -> str:
    rows = per_class_rows(s["per_class_top1"])
    k = len(s["per_class_top1"])
    shown = f"best and worst {len(rows) // 2} of {k} classes" if len(rows) < k else f"{k} classes"
    return _bar_chart(plt, [name for name, _ in rows], [acc for _, acc in rows], path, xlabel="top-1",
                      title=f"{title}: mean {s['top1']:.3f} ({shown})", row_height=0.22,
                      gap_after=len(rows) // 2 if len(rows) < k else None)


def _top_confusions_plot(plt, s: dict[str, Any], title: str, path: Path) -> str:
    pairs = top_confusions(s["confusion"], s["classes"])
    return _bar_chart(plt, [f"{p['true']} \u2192 {p['predicted']} ({p['count']})" for p in pairs],
                      [p["share"] for p in pairs], path, xlabel="share of the true class's videos",
                      title=f"{title}: the {len(pairs)} largest confusions of {len(s['classes'])} classes",
                      row_height=0.3)


def _bar_chart(plt, labels: list[str], values: list[float], path: Path, *, xlabel: str, title: str,
               row_height: float, gap_after: int | None = None) -> str:
    """Horizontal bars, first row at the top, one readable label per row; `gap_after` draws a
    dashed line after that many rows (between the best and the worst classes)."""
    fig, ax = plt.subplots(figsize=(7, max(3, row_height * len(labels) + 1)))
    ax.barh(range(len(labels)), values)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    if gap_after is not None:
        ax.axhline(gap_after - 0.5, color="grey", linestyle="--", linewidth=0.8)
    ax.set_xlim(0, 1)
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=10)
    return finish_figure(plt, fig, path)


def _confusion_plot(plt, s: dict[str, Any], title: str, path: Path) -> str:
    cm = np.array(s["confusion"], dtype=float)  # [K, K+1], last column = unreadable
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(max(5, 0.25 * k + 2), max(4, 0.25 * k + 1.5)))
    im = ax.imshow(cm, vmin=0, vmax=1, cmap="viridis")
    ax.set_yticks(range(k), s["classes"], fontsize=7)
    ax.set_xticks(range(k + 1), [*s["classes"], "unreadable"], rotation=90, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{title} confusion")
    fig.colorbar(im, ax=ax, fraction=0.046)
    return finish_figure(plt, fig, path)


def finish_figure(plt, fig, path: Path) -> str:
    """Lay out `fig`, write it to `path` as a PNG (atomically) and free it; returns the path."""
    fig.tight_layout()
    _save_figure(fig, path)
    plt.close(fig)
    return str(path)


def _save_figure(fig, path: Path) -> None:
    write_atomic(path, lambda f: fig.savefig(f, format="png", dpi=120))
