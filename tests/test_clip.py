"""CLIP loading: the tiny shipped config, local weight files, local-dir folders, clear errors."""

from __future__ import annotations

import json

import pytest
import torch

from lss_cli.errors import ConfigError, LssError
from lss_cli.models.clip import load_clip, save_weights


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_tiny_model_loads_and_encodes(tiny_clip):
    assert tiny_clip.embed_dim == 64 and tiny_clip.image_size == 64
    img = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        z = tiny_clip.model.encode_image(img)
        t = tiny_clip.model.encode_text(tiny_clip.tokenizer(["a video of a person waving."]))
    assert z.shape == (2, 64) and t.shape == (1, 64)
    assert tiny_clip.weights_source == "random-init(seed=0)"
    assert tiny_clip.weights_id.startswith("weights-sha256:") and len(tiny_clip.weights_id) == 15 + 64


def test_random_init_is_seeded():
    a = load_clip("lss-tiny", None, seed=1).model
    b = load_clip("lss-tiny", None, seed=1).model
    c = load_clip("lss-tiny", None, seed=2).model
    assert _same_weights(a, b) and not _same_weights(a, c)


def test_local_safetensors_round_trip(tmp_path, tiny_clip):
    path = tmp_path / "tiny.safetensors"
    save_weights(tiny_clip.model, path)
    loaded = load_clip("lss-tiny", str(path), seed=123)  # the seed must not matter with weights
    assert _same_weights(loaded.model, tiny_clip.model)
    assert loaded.weights_source.startswith("sha256:") and len(loaded.weights_source) == 7 + 64
    assert loaded.weights_id == tiny_clip.weights_id  # the same tensors: the same id


def test_local_dir(tmp_path, tiny_clip):
    from lss_cli.models.clip import CONFIG_DIR

    folder = tmp_path / "tiny-dir"
    folder.mkdir()
    cfg = json.loads((CONFIG_DIR / "lss-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_weights(tiny_clip.model, folder / "open_clip_model.safetensors")
    loaded = load_clip("lss-tiny", f"local-dir:{folder}")
    assert _same_weights(loaded.model, tiny_clip.model)
    assert loaded.weights_source.startswith("local-dir-sha256:") and loaded.weights_id == tiny_clip.weights_id


def test_clear_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-61'") as e:
        load_clip("ViT-B-61", None)
    assert "ViT-B-16" in e.value.hint
    with pytest.raises(ConfigError, match="no pretrained tag 'opnai'"):
        load_clip("ViT-B-16", "opnai")
    with pytest.raises(ConfigError, match="weights file not found"):
        load_clip("lss-tiny", str(tmp_path / "missing.safetensors"))
    with pytest.raises(ConfigError, match="open_clip_config.json not found"):
        load_clip("lss-tiny", f"local-dir:{tmp_path}")


def test_offline_tag_fails_fast_with_hint(monkeypatch):
    import time

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(LssError) as e:
        load_clip("ViT-B-32", "openai")
    assert "--pretrained /path/to" in e.value.hint
    assert time.perf_counter() - t < 30
