"""Tiny-CLIP pretraining on captioned stills: the world, the compact weights, the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from lss_cli.data.stills import attribute_prompts, attribute_values, draw_stills
from lss_cli.models.clip import BUILTIN_WEIGHTS, load_clip
from lss_cli.train.pretrain import PretrainSettings, attribute_accuracy, pretrain, pretrain_to_file
from tests.conftest import run_lss

SHORT = PretrainSettings(steps=3, batch_size=8, warmup=1, eval_images=16)


def test_stills_are_seeded_and_captions_name_their_attributes():
    a = draw_stills(32, 32, torch.Generator().manual_seed(5))
    b = draw_stills(32, 32, torch.Generator().manual_seed(5))
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert a.images.shape == (32, 3, 32, 32) and a.images.dtype == torch.uint8
    values = attribute_values()
    for i, caption in enumerate(a.captions):
        words = caption.split()
        assert words[0] == "a"
        # Whatever a caption names is the still's true value: no attribute is ever named wrongly.
        truth = {k: values[k][int(a.attributes[k][i])] for k in values}
        assert not {*values["size"], *values["colour"]} & set(words) - {truth["size"], truth["colour"]}
        named_positions = [p for p in values["position"] if caption.endswith(" " + p)]
        assert named_positions in ([], [truth["position"]])
        if "pointing" in words:
            assert words[words.index("pointing") + 1] == truth["pointing"]


def test_attribute_prompts_cover_every_value():
    prompts, values = attribute_prompts(), attribute_values()
    assert prompts.keys() == values.keys()
    assert all(len(prompts[k]) == len(values[k]) for k in values)


def test_pretraining_is_deterministic_and_restricts_the_vocabulary():
    clip_a, report_a = pretrain(SHORT, log=lambda _: None)
    clip_b, _ = pretrain(SHORT, log=lambda _: None)
    for (k, va), vb in zip(clip_a.model.state_dict().items(), clip_b.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    table = clip_a.model.token_embedding.weight
    known = (table.abs().sum(1) > 0).sum()
    assert int(known) == report_a["known_tokens"] < table.shape[0] // 100  # unknown words stayed at zero
    assert set(report_a["attributes"]) == set(attribute_values())


def test_compact_file_reloads_the_exact_model(tmp_path):
    out = tmp_path / "tiny.safetensors"
    report = pretrain_to_file(SHORT, out, argv=["lss", "pretrain-tiny"])
    assert out.stat().st_size < 2_000_000  # the full 49,408-row token table alone would be 12.6 MB
    loaded = load_clip("lss-tiny", str(out))
    clip, _ = pretrain(SHORT, log=lambda _: None)
    for (k, va), vb in zip(clip.model.state_dict().items(), loaded.model.state_dict().values(), strict=True):
        assert torch.equal(va, vb), k
    assert loaded.weights_source.startswith("sha256:")
    assert json.loads((tmp_path / "tiny.json").read_text())["command"] == "lss pretrain-tiny"
    assert attribute_accuracy(loaded, 16, seed=1) == report["attributes"]


def test_builtin_weights_know_their_world():
    """The shipped weights (made by `lss pretrain-tiny` with its defaults) ground the world's words:
    zero-shot on held-out stills far above chance for the attributes motion changes."""
    path = BUILTIN_WEIGHTS["lss-tiny", "synthetic-world"]
    if not path.exists():
        pytest.fail(f"{path} is missing: remake it with `lss pretrain-tiny --out {path}`")
    clip = load_clip("lss-tiny", "synthetic-world")
    assert clip.weights_source.startswith("synthetic-world:sha256:")
    acc = attribute_accuracy(clip, 600, seed=123)
    for name in ("position", "size", "colour"):
        assert acc[name]["accuracy"] > 3 * acc[name]["chance"] or acc[name]["accuracy"] > 0.8, (name, acc)


def test_cli_refuses_to_overwrite_and_validates(tmp_path):
    out = tmp_path / "w.safetensors"
    out.write_bytes(b"x")
    r = run_lss("pretrain-tiny", "--out", out, "--steps", "3")
    assert r.returncode == 2 and "--overwrite" in r.stderr
    r = run_lss("pretrain-tiny", "--out", tmp_path / "v.safetensors", "--steps", "0")
    assert r.returncode == 2 and "steps must be >= 2" in r.stderr
