"""Direction accuracy: the metric, the pairs file, and the frame-average baseline at chance on the
synthetic set's time-reversal pairs, end to end through `lss eval`."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import run_lss

from lss_cli.data.datasets import load_dataset
from lss_cli.data.synth import SynthSpec, generate
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.eval.features import Views, extract_features
from lss_cli.eval.metrics import direction_accuracy
from lss_cli.eval.pairs import mate_indices, pairs_path, read_pairs
from lss_cli.models.artefact import load_video_model

# --------------------------------------------------------------------------------------------
# The metric
# --------------------------------------------------------------------------------------------

MATES = torch.tensor([1, 0, -1])  # classes 0 and 1 are mates; class 2 has none
SCORES = torch.tensor([
    [0.6, 0.3, 0.1],  # class 0 above its mate: correct
    [0.5, 0.4, 0.1],  # class 1 below its mate: wrong
    [0.4, 0.4, 0.2],  # a tie is not a decision: wrong
    [0.1, 0.2, 0.7],  # class 1 above its mate, though class 2 wins top-1: correct
    [0.9, 0.05, 0.05],  # class 2 has no mate: not counted
])
LABELS = torch.tensor([0, 1, 0, 1, 2])


def test_direction_accuracy_needs_a_strict_win_over_the_mate():
    ok = torch.ones(5, dtype=torch.bool)
    assert direction_accuracy(SCORES, LABELS, ok, MATES) == (0.5, 4)


def test_unreadable_videos_count_as_wrong_not_dropped():
    ok = torch.tensor([False, True, True, True, True])  # video 0 would be correct, but is unreadable
    assert direction_accuracy(SCORES, LABELS, ok, MATES) == (0.25, 4)


def test_no_video_with_a_mate_gives_no_accuracy():
    acc, count = direction_accuracy(SCORES[4:], LABELS[4:], torch.ones(1, dtype=torch.bool), MATES)
    assert count == 0 and math.isnan(acc)


def test_identical_scores_for_a_clip_and_its_mate_give_exactly_half():
    """Why an order-invariant model is at chance: a clip and its reversal get the same scores, so
    exactly one of the two ranks its own class above the other (barring exact ties)."""
    scores = torch.rand(6, 4, generator=torch.Generator().manual_seed(0)).repeat(2, 1)  # video i+6 = video i
    labels = torch.tensor([0, 0, 0, 2, 2, 2, 1, 1, 1, 3, 3, 3])  # ... labelled with its mate class
    mates = torch.tensor([1, 0, 3, 2])
    assert direction_accuracy(scores, labels, torch.ones(12, dtype=torch.bool), mates) == (0.5, 12)


# --------------------------------------------------------------------------------------------
# The pairs file
# --------------------------------------------------------------------------------------------

CLASSES = ["moving left", "moving right", "moving up", "moving down", "shaking"]


def test_pairs_file_is_read_and_mapped_to_class_indices(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("# time-reversal pairs\nmoving up\tmoving down\n\nmoving left\tmoving right\n")
    pairs = read_pairs(path)
    assert pairs.pairs == (("moving up", "moving down"), ("moving left", "moving right")) and pairs.lines == (2, 4)
    assert mate_indices(pairs, CLASSES, "the test list").tolist() == [1, 0, 3, 2, -1]
    assert pairs.to_dict() == {"path": str(path), "pairs": [["moving up", "moving down"], ["moving left", "moving right"]]}


@pytest.mark.parametrize(("text", "message"), [
    ("moving left\tmoving right\nmoving up moving down\n", r"pairs.txt:2: expected two class names separated by a TAB"),
    ("moving left\tmoving right\tmoving up\n", r"pairs.txt:1: expected two class names"),
    ("moving left\tmoving left\n", r"pairs.txt:1: 'moving left' is paired with itself"),
    ("moving left\tmoving right\nmoving up\tmoving left\n", r"pairs.txt:2: 'moving left' is already in the pair on line 1"),
])
def test_bad_pairs_files_name_the_line(tmp_path, text, message):
    (tmp_path / "pairs.txt").write_text(text)
    with pytest.raises(ConfigError, match=message) as info:
        read_pairs(tmp_path / "pairs.txt")
    assert info.value.hint


def test_unknown_class_names_the_line_and_the_fix(tmp_path):
    (tmp_path / "pairs.txt").write_text("moving left\tmoving right\nmoving up\tMoving Down\n")
    with pytest.raises(ConfigError, match=r"pairs.txt:2: 'Moving Down' is not a class of split -") as info:
        mate_indices(read_pairs(tmp_path / "pairs.txt"), CLASSES, "split -")
    assert "exactly" in info.value.hint
    with pytest.raises(InputFileError, match="pairs file not found"):
        read_pairs(tmp_path / "nothing.txt")


def test_which_pairs_file_is_in_effect(tmp_path):
    assert pairs_path("synthetic", str(tmp_path), None) is None  # no pairs.txt: no direction accuracy
    (tmp_path / "pairs.txt").write_text("")
    assert pairs_path("synthetic", str(tmp_path), None) == tmp_path / "pairs.txt"
    assert pairs_path("list", str(tmp_path), None) is None  # only the synthetic set's own file is implied
    assert pairs_path("list", str(tmp_path), "mine.txt") == pairs_path("synthetic", str(tmp_path), "mine.txt")


def test_cli_refuses_a_bad_pairs_file_before_any_work(synth_dataset, tmp_path):
    (tmp_path / "pairs.txt").write_text("moving left\tmoving sideways\n")
    r = run_lss("eval", "zero-shot", "--dataset", "synthetic", "--root", synth_dataset, "--pairs", tmp_path / "pairs.txt",
                "--checkpoint", "none", "--model", "lss-tiny", "--pretrained", "none", "--device", "cpu",
                "--output-dir", tmp_path / "run")
    assert r.returncode == 2, r.stderr
    assert "pairs.txt:1: 'moving sideways' is not a class of split -" in r.stderr
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------------------------
# End to end: the frame-average baseline cannot tell a clip from its reversal
# --------------------------------------------------------------------------------------------


def test_frame_average_baseline_is_at_chance_on_direction(tmp_path):
    """`lss eval zero-shot` and `lss eval linear-probe` of the untrained model (per-frame CLIP,
    averaged over frames: blind to frame order) on a synthetic set of time-reversal pairs.

    Eval takes frame floor((i + 1/2) * n / T); with n = T = 8 that set is its own reversal, so a
    reversed clip's view holds exactly its mate's frames, and the baseline's features for the two
    differ only by video-codec noise. Then a clip and its mate get the same class scores, and of
    the two exactly one ranks its own class above the other: direction accuracy is 1/2 up to a few
    near-ties flipped by the codec noise. A 3-sigma binomial band around 1/2 for the number of
    direction videos is a generous bound on that. The feature check is what fails if a mate were
    not its clip reversed: every clip's mate must be far closer to it than any other clip."""
    root = tmp_path / "data"
    generate(root, SynthSpec(classes=4, videos_per_class=16, test_fraction=0.5, frames=8, size=48, background="plain"))
    common = ["--dataset", "synthetic", "--root", root, "--checkpoint", "none", "--model", "lss-tiny", "--pretrained",
              "none", "--device", "cpu", "--num-frames", "8", f"cache_dir={tmp_path / 'cache'}", "num_workers=0"]
    results = {}
    for protocol in ("zero-shot", "linear-probe"):
        features = ["--features", "proj"] if protocol == "linear-probe" else []  # the check below reads projected features
        r = run_lss("eval", protocol, *common, *features, "--output-dir", tmp_path / protocol)
        assert r.returncode == 0, r.stderr
        results[protocol] = json.loads((tmp_path / protocol / "results.json").read_text())
        assert "direction" in r.stdout  # the table's column

    # The features both runs used (from their cache): a clip and its mate coincide, other clips do not.
    model = load_video_model("none", model="lss-tiny", pretrained=None, seed=0)
    for part in ("train", "test"):
        videos = load_dataset("synthetic", root, part)
        feats = extract_features(model, videos, Views(num_frames=8), cache_dir=tmp_path / "cache", num_workers=0)
        assert feats.decoded == 0 and feats.ok.all()  # the very features the CLI runs computed
        f = feats.feats[:, 0]  # [N, D] unit vectors, one view
        index = {videos.relpath(i): i for i in range(len(videos))}
        dist = torch.cdist(f, f)  # [N, N]
        pairs = [(index[p], index[p.replace(a, b)]) for p in index
                 for a, b in (("moving_left", "moving_right"), ("moving_up", "moving_down")) if f"/{a}/" in p]
        assert len(pairs) == len(videos) // 2
        for i, j in pairs:
            others = torch.ones(len(videos), dtype=torch.bool)
            others[[i, j]] = False
            mate, nearest = float(dist[i, j]), float(dist[i][others].min())
            assert mate < 0.01, (videos.relpath(i), mate)  # unit vectors: near-identical
            # ... and by far the clip's nearest neighbour (measured: >= 6x closer than any other clip).
            assert 3 * mate < nearest, (videos.relpath(i), mate, nearest)

    n = 32  # 4 classes x 8 test clips, every class has a mate
    band = 3 * math.sqrt(0.25 / n)
    for protocol, res in results.items():
        split = res["splits"][0]
        assert split["direction_videos"] == n, protocol
        assert abs(split["direction_accuracy"] - 0.5) <= band, (protocol, split["direction_accuracy"])
        assert res["summary"]["direction_accuracy"] == {"mean": split["direction_accuracy"], "std": 0.0}
        assert res["protocol_details"]["direction"]["pairs"] == [["moving left", "moving right"],
                                                                 ["moving up", "moving down"]]
        assert res["protocol_details"]["direction"]["path"] == str(root / "pairs.txt")
