"""`lss demo`: the whole pipeline end to end (small settings), and its config staying the example's."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_lss

from lss_cli.config import TrainConfig, load_config, to_dict
from lss_cli.demo import DemoSettings, run_demo, tiny_train_config
from lss_cli.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_demo_trains_with_the_example_config(tmp_path):
    # The demo reads examples/synthetic_tiny.yaml through the package (lss_cli/examples links to it).
    data, concepts, out = tmp_path / "data", tmp_path / "c.safetensors", tmp_path / "train"
    ours = tiny_train_config(data, concepts, out)
    example = load_config(TrainConfig, ROOT / "examples" / "synthetic_tiny.yaml",
                          [f"data.root={data}", f"loss.concepts={concepts}", f"run.output_dir={out}"])
    assert to_dict(ours) == to_dict(example)
    assert tiny_train_config(data, concepts, out, epochs=1).optim.epochs == 1


def test_bad_settings_fail_before_writing(tmp_path):
    with pytest.raises(ConfigError, match="classes"):
        run_demo(tmp_path / "demo", DemoSettings(classes=1))
    with pytest.raises(ConfigError, match="epochs"):
        run_demo(tmp_path / "demo", DemoSettings(epochs=0))
    with pytest.raises(ConfigError, match="fewer than one batch"):
        run_demo(tmp_path / "demo", DemoSettings(classes=2, videos_per_class=4))
    with pytest.raises(ConfigError, match="temporal"):
        run_demo(tmp_path / "demo", DemoSettings(overrides=("model.temporal=sideways",)))
    assert not (tmp_path / "demo").exists()


@pytest.mark.slow
def test_demo_runs_the_whole_pipeline(tmp_path):
    out = tmp_path / "demo"
    r = run_lss("demo", "-o", out, "--classes", "3", "--videos-per-class", "8", "--epochs", "1")
    assert r.returncode == 0, r.stderr
    for text in ("baseline (untrained)", "trained", "zero-shot top-1", "zero-shot direction", "linear-probe top-1",
                 "Does not show"):
        assert text in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    # 3 classes hold one time-reversal pair (moving left / right): direction rows are reported.
    assert [row["metric"] for row in summary["comparison"]] == ["zero-shot top-1", "zero-shot direction",
                                                                "linear-probe top-1", "linear-probe direction"]
    assert summary["dataset"]["pairs"] == [["moving left", "moving right"]]
    for key, path in summary["paths"].items():
        assert Path(path).exists(), key
        assert str(path) in r.stdout.replace("\n", "")  # every path written is printed, whole
    results = {name: json.loads(Path(summary["paths"][name]).read_text())
               for name in ("baseline zero-shot", "trained zero-shot", "baseline linear-probe", "trained linear-probe")}
    row = summary["comparison"][0]
    assert row["baseline"] == results["baseline zero-shot"]["summary"]["top1"]["mean"]
    assert row["trained"] == results["trained zero-shot"]["summary"]["top1"]["mean"]
    assert results["trained zero-shot"]["checkpoint"] == summary["paths"]["exported model"]
    assert results["baseline zero-shot"]["checkpoint"] == "baseline"
    assert summary["training"]["steps"] >= 1 and summary["dataset"]["test"] == 6
    # The probe follows CLIP's protocol (pre-projection features, so it encodes its own videos);
    # zero-shot uses the joint embedding.
    for tag in ("baseline", "trained"):
        assert results[f"{tag} linear-probe"]["splits"][0]["features"] == "pre-proj"
        assert results[f"{tag} linear-probe"]["splits"][0]["videos_decoded"] == 6
    assert (out / "train" / "config.yaml").is_file() and (out / "concepts.safetensors").is_file()
