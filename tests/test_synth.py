"""The synthetic action dataset: real files, exact shapes, motion-only classes, determinism."""

from __future__ import annotations

import pytest
import torch

from lss_cli.data.synth import MOTIONS, SynthSpec, clip_generator, generate, render_clip
from lss_cli.data.video_io import decode_all
from lss_cli.descriptions import read_records
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


def test_frame0_does_not_depend_on_class():
    """Same random draws, different class: frame 0 is identical, later frames differ.

    So the class is carried by motion alone; the distractors (shape, colour, background, position,
    size, orientation, speed) are drawn from one distribution for every class."""
    spec = SynthSpec(frames=8, size=64)
    for seed in range(5):
        clips = [render_clip(m, spec, torch.Generator().manual_seed(seed)) for m in MOTIONS]
        for clip in clips[1:]:
            assert torch.equal(clip[0], clips[0][0])
        last = [c[-1] for c in clips[:-1]]  # every class but "standing still" moves by the end
        moved = [int(((a.int() - clips[-1][-1].int()).abs() > 30).any(0).sum()) > 10 for a in last]
        assert all(moved), moved


def test_frame0_statistics_do_not_separate_classes(tmp_path):
    """On the written files: nearest-class-mean on frame-0 colour statistics is near chance, while
    the same classifier on the first-to-last difference is far above it (motion carries the class)."""
    generate(tmp_path, SynthSpec(classes=4, videos_per_class=24, frames=8, size=48, seed=1))
    feats0, featsd, labels = [], [], []
    for line in (tmp_path / "train.txt").read_text().splitlines() + (tmp_path / "test.txt").read_text().splitlines():
        rel, y = line.rsplit(" ", 1)
        v = decode_all(tmp_path / rel).float() / 255
        feats0.append(torch.cat([v[0].mean((1, 2)), v[0].std((1, 2))]))
        d = (v[-1] - v[0]).abs().mean(0)  # [H, W] where things changed
        ys, xs = torch.meshgrid(torch.linspace(-1, 1, 48), torch.linspace(-1, 1, 48), indexing="ij")
        w = d / d.sum().clamp_min(1e-6)
        signed = (v[-1] - v[0]).mean(0)
        featsd.append(torch.stack([(w * xs).sum(), (w * ys).sum(), (signed * xs).sum(), (signed * ys).sum()]))
        labels.append(int(y))
    y = torch.tensor(labels)

    def loo_accuracy(x):  # leave-one-out nearest class mean on standardised features
        x = (x - x.mean(0)) / x.std(0).clamp_min(1e-6)
        correct = 0
        for i in range(len(y)):
            keep = torch.arange(len(y)) != i
            means = torch.stack([x[keep & (y == c)].mean(0) for c in range(4)])
            correct += int((means - x[i]).norm(dim=1).argmin() == y[i])
        return correct / len(y)

    acc0, accd = loo_accuracy(torch.stack(feats0)), loo_accuracy(torch.stack(featsd))
    assert acc0 < 0.45, f"frame 0 alone tells the class ({acc0:.2f}); distractors leak the label"
    assert accd > 0.6, f"motion features should tell the class ({accd:.2f})"


def test_deterministic_for_a_seed(tmp_path):
    """What we generate is a function of the seed: the rendered clips are bit-identical, and so are
    the lists. The files go through x264, which here is not always byte-stable (rarely, under load,
    a re-encode of the same frames differed in a few pixels), so decoded files are compared with a
    tolerance far below the difference between two seeds."""
    spec = SynthSpec(classes=2, videos_per_class=2, frames=4, size=32, seed=7)
    for c, motion in enumerate(MOTIONS[:2]):
        for i in range(2):
            a = render_clip(motion, spec, clip_generator(spec, c, i))
            assert torch.equal(a, render_clip(motion, spec, clip_generator(spec, c, i)))
    a, b = generate(tmp_path / "a", spec), generate(tmp_path / "b", spec)
    assert a == {**b, "root": a["root"]}
    assert (tmp_path / "a" / "train.txt").read_text() == (tmp_path / "b" / "train.txt").read_text()
    other = generate(tmp_path / "c", SynthSpec(classes=2, videos_per_class=2, frames=4, size=32, seed=8))
    assert other["train"] == a["train"]
    for line in (tmp_path / "a" / "train.txt").read_text().splitlines():
        rel = line.rsplit(" ", 1)[0]
        va, vb, vc = (decode_all(tmp_path / d / rel).float() for d in "abc")
        same, different = (va - vb).abs().mean(), (va - vc).abs().mean()
        assert same < 0.5 and different > 10 * max(float(same), 0.5), (float(same), float(different))


@pytest.mark.parametrize("kwargs", [dict(classes=1), dict(classes=11), dict(size=33), dict(frames=1),
                                    dict(videos_per_class=1)])
def test_bad_specs(kwargs):
    with pytest.raises(ConfigError):
        SynthSpec(**kwargs).validate()


def test_cli_synth_and_refuses_non_empty(tmp_path):
    from conftest import run_lss

    out = tmp_path / "ds"
    r = run_lss("data", "synth", out, "--classes", "3", "--videos-per-class", "2", "--frames", "4", "--size", "32", "--json")
    assert r.returncode == 0, r.stderr
    assert (out / "classes.txt").read_text().count("\n") == 3
    r = run_lss("data", "synth", out, "--classes", "3")
    assert r.returncode == 2 and "not empty" in r.stderr
