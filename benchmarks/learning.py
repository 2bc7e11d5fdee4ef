"""Does LSS training help? The demo's benchmark over several seeds, and its ablations.

For each variant and seed this runs the whole `lss demo` pipeline (`lss_cli.demo.run_demo`: new
synthetic data for the seed, baseline eval, LSS training, trained eval) and prints, per metric,
baseline and trained mean +- std over seeds and the gain. The gain counts as real when it exceeds
3x the std over seeds of the gain itself (the issue's bar); the table says which do.

    python benchmarks/learning.py                       # the recipe, seeds 0 1 2
    python benchmarks/learning.py --ablations           # + the README's ablation table
    python benchmarks/learning.py --variants recipe flip-on --seeds 0 1 2 3 4
    python benchmarks/learning.py --variants prior-view prior-step   # loss.prior_scope's two values

Results go to runs/bench/learning/<variant>/seed<S>/ (every stage's output) and to
runs/bench/learning/results.json; the markdown table is printed on stdout.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lss_cli.demo import DemoSettings, run_demo  # noqa: E402

# name -> (demo settings changes, what the variant removes). "recipe" is examples/synthetic_tiny.yaml.
VARIANTS: dict[str, tuple[dict, str]] = {
    "recipe": ({}, "examples/synthetic_tiny.yaml as is"),
    "temporal-mean": ({"overrides": ("model.temporal=mean",)}, "no temporal attention (frame average)"),
    "no-ca": ({"overrides": ("loss.w_ca=0",)}, "no concept alignment (w_ca = 0)"),
    "no-descriptions": ({"descriptions": False, "overrides": ("loss.w_ca=0",)},
                        "no class descriptions (description space = world sentences; no alignment possible)"),
    "no-local": ({"overrides": ("views.local_views=0",)}, "no local views (global views only)"),
    "flip-on": ({"overrides": ("views.flip_p=0.5",)}, "horizontal flip on (p = 0.5)"),
    "clip-temps": ({"overrides": ("loss.student_temp=0.015", "loss.teacher_temp=0.006", "loss.warmup_teacher_temp=0.006")},
                   "temperatures at the tiny CLIP's own scale (1 / logit_scale = 0.015; teacher 0.4x)"),
    "long": ({"overrides": ("optim.epochs=100",)}, "5x longer training (100 epochs, 900 steps)"),
    "prior-view": ({"overrides": ("loss.prior_scope=view",)},
                   "uniform prior per student view and micro-batch (KL of each view's batch mean)"),
    "prior-step": ({"overrides": ("loss.prior_scope=step",)},
                   "uniform prior pooled over the optimizer step (all views, micro-batches, ranks)"),
}
ABLATIONS = ("recipe", "temporal-mean", "no-ca", "no-descriptions", "no-local", "flip-on")


def run_variant(name: str, seeds: list[int], out: Path, epochs: int | None) -> list[dict]:
    changes, _ = VARIANTS[name]
    rows = []
    for seed in seeds:
        settings = DemoSettings(seed=seed, epochs=epochs, **changes)
        summary = run_demo(out / name / f"seed{seed}", settings)
        rows.append({"seed": seed, "seconds": summary["seconds"], "steps": summary["training"]["steps"],
                     "metrics": {r["metric"]: {"baseline": r["baseline"], "trained": r["trained"]}
                                 for r in summary["comparison"]}})
    return rows


def _ms(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: list[dict]) -> dict[str, dict]:
    """Per metric: baseline / trained / gain mean and std over seeds (in %), and whether the gain
    exceeds 3x its std over seeds."""
    out = {}
    for metric in rows[0]["metrics"]:
        b = [100 * r["metrics"][metric]["baseline"] for r in rows]
        t = [100 * r["metrics"][metric]["trained"] for r in rows]
        g = [ti - bi for ti, bi in zip(t, b, strict=True)]
        gm, gs = _ms(g)
        out[metric] = {"baseline": _ms(b), "trained": _ms(t), "gain": (gm, gs),
                       "beyond_noise": len(rows) > 1 and gm > 3 * gs}
    return out


def table(results: dict[str, dict]) -> str:
    metrics = list(next(iter(results.values()))["aggregate"])
    head = "| variant | " + " | ".join(metrics) + " |"
    lines = [head, "|" + " --- |" * (len(metrics) + 1)]
    first = next(iter(results.values()))["aggregate"]
    lines.append("| baseline (frame-average CLIP) | " + " | ".join(
        f"{first[m]['baseline'][0]:.1f} ± {first[m]['baseline'][1]:.1f}" for m in metrics) + " |")
    for name, r in results.items():
        cells = []
        for m in metrics:
            a = r["aggregate"][m]
            mark = " ✓" if a["beyond_noise"] else ""
            cells.append(f"{a['trained'][0]:.1f} ± {a['trained'][1]:.1f} ({a['gain'][0]:+.1f}{mark})")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--variants", nargs="+", default=["recipe"], choices=list(VARIANTS))
    p.add_argument("--ablations", action="store_true", help="run every variant (the README's ablation table)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs (default: the example config's)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench" / "learning")
    args = p.parse_args()
    variants = list(ABLATIONS) if args.ablations else args.variants
    start = time.perf_counter()
    results = {}
    for name in variants:
        rows = run_variant(name, args.seeds, args.out, args.epochs)
        results[name] = {"what": VARIANTS[name][1], "seeds": rows, "aggregate": aggregate(rows)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nseeds {args.seeds}; accuracies in %, trained mean ± std over seeds (gain over the baseline; "
          "✓ = gain > 3x its std over seeds); {:.0f} s in all\n".format(time.perf_counter() - start))
    print(table(results))
    for name in variants:
        print(f"- {name}: {VARIANTS[name][1]}")


if __name__ == "__main__":
    main()
