"""`lss eval` on Kinetics-400 as its annotations come: a labelled val split evaluated by default
(and by `--splits val`), an unlabelled test split refused before anything is written."""

from __future__ import annotations

import json
import shutil

import pytest
from conftest import run_lss

from lss_cli.labels import load_label_set

CLASSES = ("abseiling", "air drumming", "archery", "arm wrestling")  # Kinetics-400 names
HEADER = "label,youtube_id,time_start,time_end,split\n"


@pytest.fixture(scope="module")
def k400(tmp_path_factory, synth_dataset):
    """A Kinetics-400 root as the annotations ship: annotations/val.csv (labelled) and test.csv
    (no labels), videos at <split>/<youtube_id>_<start:06d>_<end:06d>.mp4 (synthetic clips)."""
    root = tmp_path_factory.mktemp("k400")
    clips = sorted((synth_dataset / "videos").rglob("*.mp4"))[:8]
    rows = {"val": [], "test": []}
    for i, clip in enumerate(clips):
        split = "val" if i < 6 else "test"
        yid, start = f"yt{i:09d}", 10 * i
        (root / split).mkdir(exist_ok=True)
        shutil.copy(clip, root / split / f"{yid}_{start:06d}_{start + 10:06d}.mp4")
        label = CLASSES[i % len(CLASSES)] if split == "val" else ""  # the test rows carry no label
        rows[split].append(f'{label},{yid},{start}.0,{start + 10}.0,{split}\n')
    (root / "annotations").mkdir()
    for split, lines in rows.items():
        (root / "annotations" / f"{split}.csv").write_text(HEADER + "".join(lines))
    # One prompt template: the classifier then encodes 400 prompts, not 4,800 (seconds on a CPU).
    (root / "one_template.yaml").write_text("name: one\nversion: 1\ntemplates: ['a video of a person {}.']\n")
    return root


def _args(k400, tmp_path, *extra: str) -> list[str]:
    return ["eval", "zero-shot", "--dataset", "kinetics400", "--root", str(k400), "--checkpoint", "none",
            "--model", "lss-tiny", "--pretrained", "none", "--device", "cpu", "--num-frames", "2",
            "--templates", str(k400 / "one_template.yaml"), "--output-dir", str(tmp_path / "run"), "--json",
            "num_workers=0", f"cache_dir={tmp_path / 'cache'}", *extra]


def _in_process(args: list[str], capsys) -> tuple[int, str, str]:
    """`lss ARGS` run by the CLI's entry point in this process (no second torch import): (code, out, err)."""
    from lss_cli.cli import main

    with pytest.raises(SystemExit) as e:
        main(args)
    out, err = capsys.readouterr()
    return e.value.code, out, err


def _check_summary(summary: dict) -> None:
    assert summary["dataset"] == "kinetics400"
    assert [s["split"] for s in summary["splits"]] == ["val"]
    split = summary["splits"][0]
    assert (split["videos_listed"], split["videos_evaluated"], split["videos_unreadable"]) == (6, 6, 0)


def test_zero_shot_on_the_val_split_by_name_and_by_default(k400, tmp_path, capsys):
    # `--splits val` used to crash with "unexpected ValueError"; the real CLI, in a subprocess.
    r = run_lss(*_args(k400, tmp_path, "--splits", "val"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    _check_summary(json.loads(r.stdout))
    # No --splits: the labelled val split too (it was the unlabelled test split).
    code, out, err = _in_process(_args(k400, tmp_path, "--overwrite"), capsys)
    assert code == 0, err
    _check_summary(json.loads(out))
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    split = results["splits"][0]
    assert split["classes"] == list(load_label_set("kinetics400").names)  # all 400 classes, labelled by name
    assert len(split["predictions"]) == 6 and split["videos_decoded"] == 0  # the first run's features
    assert results["config"]["splits"] is None


def test_unlabelled_test_split_is_refused_before_anything_is_written(k400, tmp_path, capsys):
    code, _, err = _in_process(_args(k400, tmp_path, "--splits", "test"), capsys)
    assert code == 2, err
    assert "has no labels for 2 of its 2 videos" in err and "--splits val" in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("args, message", [
    (["--splits", "1"], "Kinetics splits have names"),
    (["--dataset", "ucf101", "--splits", "val"], "split 'val' does not exist"),
])
def test_splits_of_the_wrong_kind_are_usage_errors(k400, tmp_path, capsys, args, message):
    code, _, err = _in_process(_args(k400, tmp_path, *args), capsys)
    assert code == 2 and message in err, err


def test_linear_probe_is_not_scored_on_its_training_split(k400, tmp_path, capsys):
    code, _, err = _in_process(["eval", "linear-probe", "--dataset", "kinetics400", "--root", str(k400),
                                "--splits", "train", "--output-dir", str(tmp_path / "run")], capsys)
    assert code == 2 and "trains on the train split" in err, err


def test_training_held_out_list_on_kinetics_is_the_val_split(k400):
    """`eval.every` during training on Kinetics: the held-out list defaults to the labelled val split
    (it was split 1, which Kinetics does not have), `eval.split=val` names it, and the unlabelled
    test split is refused before training starts."""
    from lss_cli.config import TrainConfig, load_config
    from lss_cli.errors import ConfigError
    from lss_cli.train.periodic_eval import held_out_videos

    def held_out(*extra: str):
        return held_out_videos(load_config(TrainConfig, None, ["eval.every=10", "eval.dataset=kinetics400",
                                                               f"eval.root={k400}", *extra]))

    for videos in (held_out(), held_out("eval.split=val")):
        assert len(videos) == 6 and (videos.labels >= 0).all()
    with pytest.raises(ConfigError, match="no labels"):
        held_out("eval.split=test")
