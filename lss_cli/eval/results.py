"""Running an evaluation end to end, and writing what it found: results.json, table, plots.

results.json records the checkpoint, the model id, the resolved config, the protocol and views,
per-split numbers (top-1, top-5, direction accuracy when time-reversal class pairs are in effect,
per-class accuracy, confusion matrix, predictions), the number of videos listed / evaluated /
unreadable with every unreadable path and reason, versions and timing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lss_cli.config import EvalConfig
from lss_cli.eval.features import Views
from lss_cli.eval.protocols import EvalContext, check_pairs, check_protocol, run_protocol
from lss_cli.models.artefact import load_video_model
from lss_cli.runtime.device import resolve_device
from lss_cli.runtime.dist import barrier, cleanup, init_distributed
from lss_cli.runtime.rundir import default_run_dir, environment, prepare_run_dir, write_text_atomic

DEFAULT_CACHE_DIR = Path("runs") / "feature-cache"  # shared by every eval run started in this folder


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
        run_dir = Path(output_dir) if output_dir else (out.parent if out else default_run_dir(f"eval-{protocol}"))
        if dist.is_main:
            prepare_run_dir(run_dir, overwrite=overwrite or (out is not None and output_dir is None))
        barrier()
        model = load_video_model(cfg.checkpoint, model=cfg.model, pretrained=cfg.pretrained, device=device,
                                 seed=cfg.seed)
        cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else DEFAULT_CACHE_DIR
        ctx = EvalContext(cfg, model, device, cache_dir, Views(cfg.num_frames, cfg.num_clips, cfg.num_crops), pairs=pairs)
        results = run_protocol(ctx, protocol)
        results["environment"] = {**environment(str(device)), "world_size": dist.world_size}
        results_path = out or run_dir / "results.json"
        results["results_file"] = str(results_path)
        results["plots"] = []
        if dist.is_main:
            write_text_atomic(results_path, json.dumps({k: v for k, v in results.items() if k not in ("results_file", "plots")},
                                                       indent=2) + "\n")
            # Beside an explicit --out file, plots take its name so several results can share a folder.
            results["plots"] = write_plots(results, results_path.parent, prefix=f"{out.stem}-" if out else "")
        results["is_main"] = dist.is_main
        return results
    finally:
        cleanup()


def write_plots(results: dict[str, Any], run_dir: Path, prefix: str = "") -> list[str]:
    """Per-class accuracy bars and a confusion matrix per split (needs the `plots` extra)."""
    try:  # matplotlib is an optional extra, so it is imported here and not at the top
        import matplotlib  # noqa: PLC0415

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
    except ImportError:
        return []
    written = []
    for s in results["splits"]:
        tag = results["protocol"] if s["split"] == "-" else f"{results['protocol']}-split{s['split']}"
        tag = f"{prefix}{tag}"
        names = list(s["per_class_top1"])
        acc = [v if v is not None else 0.0 for v in s["per_class_top1"].values()]
        fig, ax = plt.subplots(figsize=(max(6, 0.18 * len(names)), 4))
        ax.bar(range(len(names)), acc)
        ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6 if len(names) > 30 else 8)
        ax.set_ylim(0, 1)
        ax.set_ylabel("top-1")
        ax.set_title(f"{results['dataset']} {tag}: mean {s['top1']:.3f}")
        fig.tight_layout()
        path = run_dir / f"per_class_{tag}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(str(path))
        written.append(_confusion_plot(plt, s, results["dataset"], tag, run_dir))
    return written


def _confusion_plot(plt, s: dict[str, Any], dataset: str, tag: str, run_dir: Path) -> str:
    cm = np.array(s["confusion"], dtype=float)  # [K, K+1], last column = unreadable
    cm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    k = cm.shape[0]
    fig, ax = plt.subplots(figsize=(max(5, 0.12 * k), max(4, 0.12 * k)))
    im = ax.imshow(cm, vmin=0, vmax=1, cmap="viridis")
    if k <= 30:
        ax.set_yticks(range(k), s["classes"], fontsize=7)
        ax.set_xticks(range(k + 1), [*s["classes"], "unreadable"], rotation=90, fontsize=7)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(f"{dataset} {tag} confusion")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    path = run_dir / f"confusion_{tag}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return str(path)
