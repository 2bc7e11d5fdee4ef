"""The linear probe follows CLIP's protocol by default: pre-projection features, no standardisation,
L2 searched over [1e-6, 1e6], a validation split that keeps source videos together; the old
behaviour stays reachable with options."""

from __future__ import annotations

import json
import math
import typing
from collections import defaultdict

import pytest
import torch
from conftest import run_lss

from lss_cli.config import EvalConfig, load_config
from lss_cli.data.datasets import load_dataset, source_group
from lss_cli.eval.linear_probe import grouped_holdout, linear_probe

# --------------------------------------------------------------------------------------------
# Group keys
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("dataset", "path", "group"), [
    ("ucf101", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "g08"),
    ("ucf101", "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c05.avi", "g08"),
    ("ucf101", "HandstandPushups/v_HandStandPushups_g25_c04.avi", "g25"),  # folder and file spell the class differently
    ("ucf101", "Mine/my_clip.avi", "Mine/my_clip.avi"),  # not a UCF101 name: its own group
    ("hmdb51", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_0.avi", "April_09_brush_hair"),
    ("hmdb51", "brush_hair/April_09_brush_hair_u_nm_np1_ba_goo_2.avi", "April_09_brush_hair"),
    ("hmdb51", "shake_hands/2008-2009_Folk_Song_Singing_Competition_Prize_Giving_Ceremony_shake_hands_f_cm_np2_le_bad_0.avi",
     "2008-2009_Folk_Song_Singing_Competition_Prize_Giving_Ceremony_shake_hands"),
    ("hmdb51", "wave/prelinger_LetsBeGo1953_wave_u_cm_np10_ba_med_2.avi", "prelinger_LetsBeGo1953_wave"),  # ten people
    ("hmdb51", "jump/#20_Rhythm_clap_u_nm_np1_fr_goo_0.avi", "#20_Rhythm_clap"),
    ("hmdb51", "jump/untagged_clip_3.avi", "untagged_clip"),  # no tags: only the clip index goes
    ("synthetic", "videos/moving_left/moving_left_003.mp4", "clip 3"),
    ("synthetic", "videos/moving_right/moving_right_003.mp4", "clip 3"),  # its time-reversed mate
    ("list", "v/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi", "v/ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi"),
    ("folder", "cat/a_1.mp4", "cat/a_1.mp4"),
])
def test_source_group_of_real_looking_names(dataset, path, group):
    assert source_group(dataset, path) == group


@pytest.mark.parametrize("dataset", ["ucf101", "hmdb51"])
@pytest.mark.parametrize("split", [1, 2, 3])
def test_official_splits_never_put_one_group_on_both_sides(tmp_path, dataset, split):
    # The keys mirror how the datasets' own splits keep sources apart: checked on the shipped split files.
    train = load_dataset(dataset, tmp_path, f"train{split}")
    test = load_dataset(dataset, tmp_path, f"test{split}")
    train_groups = {source_group(dataset, train.relpath(i)) for i in range(len(train))}
    test_groups = {source_group(dataset, test.relpath(i)) for i in range(len(test))}
    assert not train_groups & test_groups
    assert len(train_groups) < len(train) / 2  # and they do group clips


def test_hmdb51_group_is_coarser_than_the_clip_index_alone(tmp_path):
    # Clips of one film differing in their tags (camera view here) are one group.
    videos = load_dataset("hmdb51", tmp_path, "train3")
    names = [videos.relpath(i) for i in range(len(videos))]
    a = "shake_hands/2008-2009_Folk_Song_Singing_Competition_Prize_Giving_Ceremony_shake_hands_f_cm_np2_ba_bad_1.avi"
    b = "shake_hands/2008-2009_Folk_Song_Singing_Competition_Prize_Giving_Ceremony_shake_hands_f_cm_np2_le_bad_0.avi"
    assert a in names and b in names
    assert source_group("hmdb51", a) == source_group("hmdb51", b)


# --------------------------------------------------------------------------------------------
# The grouped validation split
# --------------------------------------------------------------------------------------------


def _random_groups(seed: int, classes: int = 6, spanning: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels and group ids [N]: each class has 1-7 groups of 1-6 videos; with `spanning`, a group
    id is shared by several classes (as UCF101's gNN)."""
    g = torch.Generator().manual_seed(seed)
    y, groups = [], []
    for c in range(classes):
        for k in range(int(torch.randint(1, 8, (1,), generator=g))):
            n = int(torch.randint(1, 7, (1,), generator=g))
            y += [c] * n
            groups += [k if spanning else 100 * c + k] * n
    order = torch.randperm(len(y), generator=g)
    return torch.tensor(y)[order], torch.tensor(groups)[order]


@pytest.mark.parametrize("spanning", [False, True])
@pytest.mark.parametrize("seed", range(8))
def test_grouped_split_keeps_groups_whole_and_every_class_in_train(seed, spanning):
    y, groups = _random_groups(seed, spanning=spanning)
    train, val = grouped_holdout(y, groups, 0.2, seed=seed)
    train_set, val_set = set(train.tolist()), set(val.tolist())
    assert not train_set & val_set and len(train_set) + len(val_set) == len(y)
    side = {}
    for i in range(len(y)):
        side.setdefault(int(groups[i]), set()).add(i in val_set)
    assert all(len(s) == 1 for s in side.values()), "a group on both sides"
    for c in set(y.tolist()):
        assert any(int(y[i]) == c for i in train_set), f"class {c} has no training video"
    assert val_set, "nothing held out"


def test_grouped_split_is_seeded_and_holds_out_about_the_fraction():
    y = torch.arange(5).repeat_interleave(40)  # 5 classes x 10 groups of 4
    groups = torch.arange(50).repeat_interleave(4)
    first = grouped_holdout(y, groups, 0.2, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(first, grouped_holdout(y, groups, 0.2, seed=3), strict=True))
    assert not torch.equal(first[1], grouped_holdout(y, groups, 0.2, seed=4)[1])
    per_class = defaultdict(int)
    for i in first[1].tolist():
        per_class[int(y[i])] += 1
    assert dict(per_class) == {c: 8 for c in range(5)}  # two groups of four per class: 20%


def test_grouped_validation_is_not_inflated_by_clips_of_one_source():
    # Each source video gives 4 near-identical clips and sources carry no class signal: only a
    # split that keeps sources together sees that the probe cannot generalise (chance: 25%).
    g = torch.Generator().manual_seed(0)
    sources, clips, dim = 48, 3, 64
    centres = torch.randn(sources, dim, generator=g)
    source_class = torch.arange(sources) % 4
    groups = torch.arange(sources).repeat_interleave(clips)
    x = centres[groups] + 0.05 * torch.randn(len(groups), dim, generator=g)
    y = source_class[groups]
    test_x, test_y = torch.randn(40, dim, generator=g), torch.arange(40) % 4
    leaky = linear_probe(x, y, test_x, test_y, 4, val_split="stratified")
    grouped = linear_probe(x, y, test_x, test_y, 4, groups=groups)
    assert max(leaky.val_curve.values()) > 0.8
    assert max(grouped.val_curve.values()) < 0.45
    assert grouped.val_groups * clips == grouped.val_videos


# --------------------------------------------------------------------------------------------
# Defaults, results.json and the old behaviour
# --------------------------------------------------------------------------------------------


def test_default_features_are_pre_projection_and_supported_by_the_extractor():
    cfg = EvalConfig()
    assert cfg.features == "pre-proj"
    assert set(typing.get_args(typing.get_type_hints(EvalConfig)["features"])) == {"pre-proj", "proj"}
    assert (cfg.probe_standardize, cfg.probe_val_split, tuple(cfg.probe_l2_range)) == (False, "grouped", (1e-6, 1e6))


def test_l2_range_is_checked():
    from lss_cli.errors import ConfigError

    with pytest.raises(ConfigError, match="probe_l2_range"):
        load_config(EvalConfig, overrides=["probe_l2_range=[1e2,1e-2]"])
    assert load_config(EvalConfig, overrides=["probe_l2_range=[1e-2,1e2]"]).probe_l2_range == (1e-2, 1e2)


def _probe(synth_dataset, tmp_path, *extra: str) -> dict:
    run = tmp_path / f"run{len(list(tmp_path.iterdir()))}"
    r = run_lss("eval", "linear-probe", "--dataset", "synthetic", "--root", synth_dataset, "--checkpoint", "none",
                "--model", "lss-tiny", "--pretrained", "none", "--device", "cpu", "--num-frames", "4",
                "--output-dir", run, f"cache_dir={tmp_path / 'cache'}", *extra)
    assert r.returncode == 0, r.stderr
    return json.loads((run / "results.json").read_text())


def test_results_json_describes_clips_protocol_and_old_behaviour_is_reachable(synth_dataset, tmp_path):
    results = _probe(synth_dataset, tmp_path)
    details, split = results["protocol_details"], results["splits"][0]
    assert details["features"] == "pre-proj" and "pre-projection" in details["features_meaning"]
    assert details["standardize"] is False and details["standardization"].startswith("none")
    assert details["val_split"].startswith("grouped") and "clip index" in details["val_split"]
    assert details["l2_range"] == [1e-6, 1e6] and "1e-06" in details["l2_search"] and "0.125 decade" in details["l2_search"]
    assert split["features"] == "pre-proj"
    exponents = sorted(math.log10(float(k)) for k in split["val_curve"])
    for e in range(-6, 7, 2):  # CLIP's first points ...
        assert any(abs(f - e) < 1e-6 for f in exponents)
    best = math.log10(split["l2"])  # ... then refined to 1/8 decade around the chosen strength
    assert any(abs(abs(f - best) - 0.125) < 1e-6 for f in exponents)
    # The synthetic set's groups are clip indices: 3 training clips per class, one index held out.
    assert split["val_videos"] == 4 and split["val_groups"] == 1

    old = _probe(synth_dataset, tmp_path, "--features", "proj", "--standardize", "--val-split", "stratified",
                 "probe_l2_range=[1e-6,1e2]")
    details, split = old["protocol_details"], old["splits"][0]
    assert details["features"] == "proj" and details["standardize"] is True
    assert details["val_split"].startswith("stratified") and details["l2_range"] == [1e-6, 1e2]
    assert split["features"] == "proj" and max(float(k) for k in split["val_curve"]) == pytest.approx(1e2)
    assert split["val_videos"] == 4 and split["val_groups"] == 4
