"""`lss plot RUN`: a training run's metrics.jsonl as one PNG (loss, collapse diagnostics, held-out
accuracy against steps)."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image as mpimg
import pytest
from conftest import ROOT, make_train_data, run_lss

import lss_cli.train.plot as plot
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.eval.results import pyplot

EXAMPLE = ROOT / "examples" / "synthetic_tiny.yaml"
ALL_PANELS = [plot.LOSS, plot.COLLAPSE, plot.GRAD, plot.EVAL]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A 12-step run evaluated every 4 steps on its synthetic test list."""
    data = make_train_data(tmp_path_factory.mktemp("train-data"))
    run = tmp_path_factory.mktemp("plot") / "run"
    r = run_lss("train", EXAMPLE, f"data.root={data}", f"loss.concepts={data / 'concepts.safetensors'}",
                "data.batch_size=4", "data.num_workers=0", "views.global_frames=4", "views.local_views=2",
                "views.local_frames=[2]", "model.num_frames=4", "optim.epochs=3", "log.every=2", "run.device=cpu",
                "model.pretrained=none", "eval.every=4", "eval.num_workers=0", "eval.num_frames=4",
                "--output-dir", run, env={"OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def test_plot_writes_a_png_of_every_panel(trained, tmp_path):
    out = tmp_path / "figs" / "run.png"
    r = run_lss("plot", trained, "-o", out, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["panels"] == ALL_PANELS and summary["evaluations"] == 3 and summary["last_step"] == 12
    height, width = mpimg.imread(out).shape[:2]
    assert (width, height) == (9 * 120, round(4 * 2.8 * 120))  # figsize x dpi: 4 panels
    r = run_lss("plot", trained / "metrics.jsonl")  # the file itself; the default output is in the run dir
    assert r.returncode == 0, r.stderr
    assert (trained / "metrics.png").stat().st_size > 0 and "Plotted" in r.stdout


def test_the_figure_has_a_panel_per_kind_of_curve(trained):
    records = [json.loads(x) for x in (trained / "metrics.jsonl").read_text().splitlines()]
    plt = pyplot()
    fig = plot.training_figure(records, "run", plt)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ALL_PANELS
    loss, collapse, grad, acc = axes
    assert {line.get_label() for line in loss.get_lines()} == {"loss", "cd_category", "cd_description", "ca", "uniform"}
    assert loss.get_yscale() == "log"
    assert {line.get_label() for line in collapse.get_lines()} >= {"teacher_entropy_category",
                                                                   "teacher_mean_entropy_category"}
    best = records[-1]["eval_best_step"]
    labels = {line.get_label(): line for line in acc.get_lines()}
    assert {"eval_top1", "eval_top5", f"checkpoints/best (step {best})"} == set(labels)
    assert list(labels["eval_top1"].get_xdata()) == [4, 8, 12]
    assert list(labels[f"checkpoints/best (step {best})"].get_xdata()) == [best, best]
    plt.close(fig)
    # A run without evaluations, logged before entropies existed: only the panels it has values for.
    old = [{k: v for k, v in r.items() if not k.startswith(("eval_", "teacher_"))} for r in records]
    fig = plot.training_figure(old, "old run", plt)
    assert [ax.get_title() for ax in fig.axes] == [plot.LOSS, plot.GRAD]
    plt.close(fig)


def test_plot_says_what_is_missing(tmp_path, monkeypatch):
    r = run_lss("plot", tmp_path)
    assert r.returncode == 2 and "metrics.jsonl not found" in r.stderr and "training run dir" in r.stderr
    empty = tmp_path / "metrics.jsonl"
    empty.write_text("")
    with pytest.raises(InputFileError, match="no step records"):
        plot.plot_run(tmp_path)
    empty.write_text(json.dumps({"step": 1, "loss": 2.0}) + "\n")
    monkeypatch.setattr(plot, "pyplot", lambda: None)  # matplotlib not installed
    with pytest.raises(ConfigError, match="needs matplotlib") as e:
        plot.plot_run(tmp_path)
    assert "lss-cli[plots]" in e.value.hint
    assert not (tmp_path / "metrics.png").exists()


def test_plot_help_has_an_example():
    r = run_lss("plot", "--help")
    assert r.returncode == 0 and "Example: lss plot runs/train/tiny -o tiny.png" in r.stdout
