"""The synthetic action dataset: real files, exact shapes, motion-only classes, time-reversal
pairs, backgrounds, determinism."""

from __future__ import annotations

import json

import pytest
import torch

from lss_cli.data.synth import MOTION_INDEX, MOTIONS, PAIRS, SynthSpec, clip_generator, generate, render_clip
from lss_cli.data.video_io import decode_all
from lss_cli.describe.records import read_records
from lss_cli.errors import ConfigError


def test_files_decode_with_requested_shape(synth_dataset):
    lines = (synth_dataset / "train.txt").read_text().splitlines()
    test_lines = (synth_dataset / "test.txt").read_text().splitlines()
    assert len(lines) == 4 * 3 and len(test_lines) == 4 * 1
    classes = (synth_dataset / "classes.txt").read_text().splitlines()
    assert classes == [m.name for m in MOTIONS[:4]]
    rel, label = lines[0].rsplit(" ", 1)
    frames = decode_all(synth_dataset / rel)
    assert frames.shape == (8, 3, 64, 64) and frames.dtype == torch.uint8
    assert 0 <= int(label) < 4


def test_descriptions_file_has_every_class(synth_dataset):
    records, bad = read_records(synth_dataset / "descriptions.jsonl")
    assert bad == 0
    assert [r.category for r in records] == [m.name for m in MOTIONS[:4]]
    assert all(len(r.descriptions) >= 3 and r.model == "hand-written" for r in records)


def test_frame0_does_not_depend_on_forward_class():
    """Same random draws, different forward class: frame 0 is identical, later frames differ.

    So the class is carried by motion alone; the distractors (shape, colour, background, position,
    size, orientation, speed) are drawn from one distribution for every forward class. (A reversed
    class starts where its mate ends: see test_reversed_class_is_its_mate_backwards.)"""
    spec = SynthSpec(frames=8, size=64)
    for seed in range(5):
        clips = {m.name: render_clip(m, spec, torch.Generator().manual_seed(seed)) for m in MOTIONS}
        forward = [clips[m.name] for m in MOTIONS if m.reverse_of is None]
        for clip in forward[1:]:
            assert torch.equal(clip[0], forward[0][0])
        # Every class but "standing still" moves: some frame differs from the still clip's by more than noise.
        still = clips["standing still"].int()
        moved = {name: int(((c.int() - still).abs() > 30).any(1).flatten(1).sum(1).max()) > 10
                 for name, c in clips.items()}
        assert moved == {m.name: m.name != "standing still" for m in MOTIONS}, moved


def test_pairs_are_explicit_and_complete():
    assert PAIRS == (("moving left", "moving right"), ("moving up", "moving down"),
                     ("rotating clockwise", "rotating counterclockwise"), ("growing", "shrinking"))
    unpaired = {m.name for m in MOTIONS} - {name for pair in PAIRS for name in pair}
    assert unpaired == {"shaking", "standing still"}
    for first, _ in PAIRS:  # a reversal is of a forward class, never of another reversal
        assert MOTIONS[MOTION_INDEX[first]].reverse_of is None


@pytest.mark.parametrize("background", ["texture", "plain"])
def test_reversed_class_is_its_mate_backwards(background):
    """Clip i of a pair's second member is clip i of the first member, frames in reverse order,
    bit for bit (sensor noise included): the per-clip generator is the first member's."""
    spec = SynthSpec(frames=6, size=32, seed=3, background=background)
    for first, second in PAIRS:
        a, b = MOTION_INDEX[first], MOTION_INDEX[second]
        for i in range(3):
            assert clip_generator(spec, b, i).initial_seed() == clip_generator(spec, a, i).initial_seed()
            fwd = render_clip(MOTIONS[a], spec, clip_generator(spec, a, i))  # [T, 3, S, S]
            rev = render_clip(MOTIONS[b], spec, clip_generator(spec, b, i))
            assert torch.equal(rev, fwd.flip(0))
            assert not torch.equal(rev, fwd)  # the clip changes over time: the check can fail
    # Other clips (and unpaired classes) still get generators of their own.
    seeds = {clip_generator(spec, c, i).initial_seed() for c in range(len(MOTIONS)) for i in range(3)}
    assert len(seeds) == 3 * (len(MOTIONS) - len(PAIRS))


def test_written_reversed_clip_decodes_to_its_mate_reversed(synth_dataset):
    """Through the files (x264 at crf 18): the reversal holds up to codec noise, far below the
    difference to the same clip unreversed or to the neighbouring clip reversed."""
    def clip(name: str, i: int) -> torch.Tensor:
        folder = name.replace(" ", "_")
        return decode_all(synth_dataset / f"videos/{folder}/{folder}_{i:03d}.mp4").float()

    def off(a: torch.Tensor, b: torch.Tensor) -> float:  # share of values more than 40 grey levels apart
        return float(((a - b).abs() > 40).double().mean())

    for first, second in PAIRS[:2]:  # the fixture has moving left/right/up/down
        for i in range(4):
            fwd, rev = clip(first, i), clip(second, i)
            # Codec noise stays within ~40 levels (measured: <= 0.001% of values beyond); the moving
            # object alone puts 2-4% of the values of the unreversed clip beyond that.
            assert off(rev, fwd.flip(0)) < 1e-3, (first, i)
            assert off(rev, fwd) > 5e-3, (first, i)
            assert off(rev, clip(first, (i + 1) % 4).flip(0)) > 0.1, (first, i)


def test_pair_members_share_a_split(synth_dataset):
    for part in ("train", "test"):
        listed = {line.rsplit(" ", 1)[0] for line in (synth_dataset / f"{part}.txt").read_text().splitlines()}
        for first, second in PAIRS[:2]:
            f, s = first.replace(" ", "_"), second.replace(" ", "_")
            mine = {p.replace(f, s) for p in listed if f"/{f}/" in p}
            assert mine and mine <= listed, (part, first)


def test_pairs_file_holds_the_generated_pairs(tmp_path):
    # Five classes: left/right and up/down are complete pairs; "rotating clockwise" has no mate here.
    summary = generate(tmp_path, SynthSpec(classes=5, videos_per_class=2, frames=2, size=16, background="plain"))
    assert (tmp_path / "pairs.txt").read_text() == "moving left\tmoving right\nmoving up\tmoving down\n"
    assert summary["pairs"] == [["moving left", "moving right"], ["moving up", "moving down"]]
    assert summary["background"] == "plain"
    assert json.loads((tmp_path / "synth.json").read_text()) == summary


def test_plain_background_is_uniform():
    """A plain clip's background is one colour (up to sensor noise, std 0.02 * 255 = 5.1 levels) in
    every corner; a textured one varies across the frame."""
    still = MOTIONS[MOTION_INDEX["standing still"]]  # the object stays within 0.19..0.81 of the frame

    def corners(background: str, seed: int) -> torch.Tensor:  # [T, 3, 4 * 8 * 8] the four 8x8 corners
        clip = render_clip(still, SynthSpec(frames=4, size=64, background=background),
                           torch.Generator().manual_seed(seed)).float()
        return torch.cat([clip[..., :8, :8], clip[..., :8, -8:], clip[..., -8:, :8], clip[..., -8:, -8:]], -1).flatten(2)

    for seed in range(4):
        plain = corners("plain", seed)
        assert plain.std(-1).max() < 7, float(plain.std(-1).max())
    assert max(float(corners("texture", seed).std(-1).max()) for seed in range(4)) > 15


def test_frame0_statistics_do_not_separate_classes(tmp_path):
    """On the written files: nearest-class-mean on frame-0 colour statistics is near chance, while
    the same classifier on the object's first-to-last displacement is far above it (motion carries
    the class).

    The displacement has to be taken in time order: moving left and moving right hold the same
    frames, so an order-free statistic of where things changed cannot tell them apart."""
    generate(tmp_path, SynthSpec(classes=4, videos_per_class=24, frames=8, size=48, seed=1))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")

    def centre(frame: torch.Tensor, bg: torch.Tensor) -> torch.Tensor:  # [2]: centroid of where frame differs from bg
        w = (frame - bg).abs().mean(0)  # [H, W]
        w = w / w.sum().clamp_min(1e-6)
        return torch.stack([(w * xs).sum(), (w * ys).sum()])

    feats0, featsd, labels, groups = [], [], [], []
    for line in (tmp_path / "train.txt").read_text().splitlines() + (tmp_path / "test.txt").read_text().splitlines():
        rel, y = line.rsplit(" ", 1)
        v = decode_all(tmp_path / rel).float() / 255  # [T, 3, H, W]
        feats0.append(torch.cat([v[0].mean((1, 2)), v[0].std((1, 2))]))
        bg = v.median(0).values  # the object moves, so most pixels show the background in most frames
        featsd.append(centre(v[-1], bg) - centre(v[0], bg))
        labels.append(int(y))
        # A clip and its reversal (same pair, same index) are one group: the same frames.
        motion = MOTIONS[int(y)]
        groups.append((motion.reverse_of or motion.name, rel.rsplit("_", 1)[1]))
    y = torch.tensor(labels)

    def loo_accuracy(x):  # leave-one-group-out nearest class mean on standardised features
        # Leaving the reversed twin in would put a copy of the held-out clip's frames in its mate's
        # class and pull that mean toward it: frame-0 colour statistics would score near 0, not chance.
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
        correct = 0
        for i in range(len(y)):
            keep = torch.tensor([g != groups[i] for g in groups])
            means = torch.stack([x[keep & (y == c)].mean(0) for c in range(4)])
            correct += int((means - x[i]).norm(dim=1).argmin() == y[i])
        return correct / len(y)

    acc0, accd = loo_accuracy(torch.stack(feats0)), loo_accuracy(torch.stack(featsd))
    assert acc0 < 0.45, f"frame 0 alone tells the class ({acc0:.2f}); distractors leak the label"
    assert acc0 > 0.1, f"far below chance ({acc0:.2f}): held-out clips leak into another class's mean"
    assert accd > 0.8, f"motion features should tell the class ({accd:.2f})"


def test_deterministic_for_a_seed(tmp_path):
    """What we generate is a function of the seed: the rendered clips, the lists and the video files
    are identical. The files were not, with x264's lossy encoding: two generations of this set in
    one process differed in 10-20 of its 24 clips (the demo's set: 161 of 192), even with x264 on
    one thread; synthetic clips are encoded lossless now (`generate`)."""
    spec = SynthSpec(classes=2, videos_per_class=12, seed=7)  # the demo's frames and size
    for c, motion in enumerate(MOTIONS[:2]):
        for i in range(2):
            a = render_clip(motion, spec, clip_generator(spec, c, i))
            assert torch.equal(a, render_clip(motion, spec, clip_generator(spec, c, i)))
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    assert a == {**b, "root": a["root"]}
    assert (tmp_path / "a" / "train.txt").read_text() == (tmp_path / "b" / "train.txt").read_text()
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.mp4"))
    assert len(files) == 24
    differ = [str(f) for f in files if (tmp_path / "a" / f).read_bytes() != (tmp_path / "b" / f).read_bytes()]
    assert differ == []
    other = generate(tmp_path / "c", SynthSpec(classes=2, videos_per_class=12, seed=8))
    assert other["train"] == a["train"]
    for f in files[:4]:
        va, vc = (decode_all(tmp_path / d / f).float() for d in "ac")
        assert (va - vc).abs().mean() > 10, f  # another seed: other clips


@pytest.mark.parametrize("kwargs", [dict(classes=1), dict(classes=11), dict(size=33), dict(frames=1),
                                    dict(videos_per_class=1), dict(background="marble")])
def test_bad_specs(kwargs):
    with pytest.raises(ConfigError):
        SynthSpec(**kwargs).validate()


def test_bad_background_names_the_choices():
    with pytest.raises(ConfigError, match="--background must be one of texture, plain, got 'Plain'"):
        SynthSpec(background="Plain").validate()


def test_cli_synth_and_refuses_non_empty(tmp_path):
    from conftest import run_lss

    out = tmp_path / "ds"
    r = run_lss("data", "synth", out, "--classes", "3", "--videos-per-class", "2", "--frames", "4", "--size", "32",
                "--background", "plain", "--json")
    assert r.returncode == 0, r.stderr
    assert (out / "classes.txt").read_text().count("\n") == 3
    summary = json.loads(r.stdout)
    assert summary["background"] == "plain" and summary["pairs"] == [["moving left", "moving right"]]
    r = run_lss("data", "synth", out, "--classes", "3")
    assert r.returncode == 2 and "not empty" in r.stderr
    r = run_lss("data", "synth", tmp_path / "other", "--background", "marble")
    assert r.returncode == 2 and "--background must be one of texture, plain" in r.stderr
