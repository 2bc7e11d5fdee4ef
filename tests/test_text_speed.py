"""The CPU-side speed-ups of the text paths, and that they change no result.

- `lss build-concepts`: a causal text tower read at the end-of-text token gives the same
  embeddings when a batch is run only up to its longest text (`encode_text_trimmed`), and texts
  are encoded shortest first; the bank must equal open_clip's full-context encoding, in order.
  Towers where trimming is not exact must be refused and keep the whole context.
- `lss describe`: CLIP's BPE reimplemented without torch (`describe/bpe.py`) must give
  open_clip's tokens, and counting must not import torch.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import ROOT
from open_clip.tokenizer import SimpleTokenizer

from lss_cli.concepts.encode import build_category_bank, encode_texts
from lss_cli.concepts.templates import load_templates, render_prompts
from lss_cli.describe.bpe import ClipBPE, clip_token_counts, vocabulary_path
from lss_cli.labels import load_label_set
from lss_cli.models.clip import encode_text_trimmed, text_pool_positions, text_trim_refusal

TEXTS = [
    "a photo of a dog",
    "",
    "a person riding a bike in a park, using both hands while the body stays mostly upright",
    "jumping",
    "a video of a person juggling soccer ball, the camera close enough to see the face and hands 7",
    "word " * 100,  # cut at the context: its end-of-text token is the 77th
    "Ünïcödé café — naïve 😀 résumé",
    "a person playing the violin",
]


def full_context(model, tokens: torch.Tensor) -> torch.Tensor:
    """The reference: open_clip's own encode_text over the whole context, unit rows."""
    with torch.inference_mode():
        return F.normalize(model.encode_text(tokens).float(), dim=-1)


def tiny_vision() -> dict:
    return {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16}


def small_text_cfg(**overrides) -> dict:
    return {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2, **overrides}


def make_clip(text_cfg: dict, custom: bool = False, embed_dim: int = 32, seed: int = 0):
    torch.manual_seed(seed)
    cls = open_clip.CustomTextCLIP if custom else open_clip.CLIP
    return cls(embed_dim=embed_dim, vision_cfg=tiny_vision(), text_cfg=text_cfg).eval()


class SeenLengths:
    """Records the sequence lengths the text transformer is run over."""

    def __init__(self, transformer: torch.nn.Module):
        self.lengths: list[int] = []
        self._hook = transformer.register_forward_pre_hook(lambda _m, args: self.lengths.append(args[0].shape[1]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._hook.remove()


# --- the trimmed text forward ---------------------------------------------------------------


def test_tiny_model_trimmed_equals_full_context_and_reads_fewer_positions(tiny_clip):
    model, tokens = tiny_clip.model, tiny_clip.tokenizer(TEXTS)
    assert text_trim_refusal(model) is None
    short = tokens[[0, 3, 7]]  # at most 7 tokens each
    with torch.inference_mode(), SeenLengths(model.transformer) as seen:
        trimmed = F.normalize(encode_text_trimmed(model, short), dim=-1)
    assert seen.lengths == [int(text_pool_positions(model, short).max()) + 1] and seen.lengths[0] <= 8
    torch.testing.assert_close(trimmed, full_context(model, short), rtol=0, atol=1e-5)
    with SeenLengths(model.transformer) as seen:
        ours = encode_texts(tiny_clip, TEXTS, batch_size=3)
    torch.testing.assert_close(ours, full_context(model, tokens), rtol=0, atol=1e-5)
    assert max(seen.lengths) == 77 and min(seen.lengths) < 10  # the cut text needs all 77; short batches don't


def test_vit_b16_text_tower_trimmed_equals_full_context():
    """ViT-B-16's text tower (width 512, 12 layers, 8 heads; random init), a tiny image tower."""
    text_cfg = open_clip.get_model_config("ViT-B-16")["text_cfg"]
    model = make_clip(text_cfg, embed_dim=512)
    tokens = SimpleTokenizer()(TEXTS)
    assert text_trim_refusal(model) is None
    with torch.inference_mode():
        trimmed = F.normalize(encode_text_trimmed(model, tokens[:5]), dim=-1)  # up to the longest of five
    torch.testing.assert_close(trimmed, full_context(model, tokens[:5]), rtol=0, atol=1e-5)


def test_custom_text_clip_with_a_causal_tower_is_trimmed_exactly():
    model = make_clip(small_text_cfg(), custom=True)
    tokens = SimpleTokenizer()(TEXTS)
    assert text_trim_refusal(model) is None
    with torch.inference_mode():
        trimmed = F.normalize(encode_text_trimmed(model, tokens[[0, 1, 3]]), dim=-1)
    torch.testing.assert_close(trimmed, full_context(model, tokens[[0, 1, 3]]), rtol=0, atol=1e-5)


@pytest.mark.parametrize(("custom", "cfg", "why"), [
    (False, {"no_causal_mask": True}, "both ways"),  # a bidirectional tower: padding changes every position
    (True, {"no_causal_mask": True, "pool_type": "last"}, "'last'"),  # SigLIP-style
    (False, {"pool_type": "first"}, "'first'"),
    (True, {"embed_cls": True}, "class token"),  # CoCa-style: read at an appended class token
])
def test_towers_where_trimming_is_not_exact_keep_the_full_context(tiny_clip, custom, cfg, why):
    model = make_clip(small_text_cfg(**cfg), custom=custom)
    assert why in text_trim_refusal(model)
    tokens = SimpleTokenizer()(TEXTS[:4])
    with pytest.raises(ValueError, match="cannot be trimmed"):
        encode_text_trimmed(model, tokens)
    clip = dataclasses.replace(tiny_clip, model=model)
    transformer = model.text.transformer if custom else model.transformer
    with SeenLengths(transformer) as seen:
        ours = encode_texts(clip, TEXTS[:4], batch_size=2, tokens=tokens)
    assert set(seen.lengths) == {77 + bool(cfg.get("embed_cls"))}
    torch.testing.assert_close(ours, full_context(model, tokens), rtol=0, atol=1e-6)


def test_a_mask_that_is_not_causal_is_refused():
    model = make_clip(small_text_cfg())
    model.attn_mask.zero_()  # attends both ways although a mask is there
    assert "not the causal mask" in text_trim_refusal(model)


def test_sorted_batches_keep_the_order_and_the_bank(tiny_clip):
    """Shortest-first batching must put every embedding back at its text's row."""
    texts = TEXTS * 3
    reference = full_context(tiny_clip.model, tiny_clip.tokenizer(texts))
    for batch_size in (1, 4, 64):
        seen = []
        ours = encode_texts(tiny_clip, texts, batch_size=batch_size, progress=seen.append)
        torch.testing.assert_close(ours, reference, rtol=0, atol=1e-5)
        assert sum(seen) == len(texts)
    assert not ours.is_inference()
    torch.testing.assert_close(encode_texts(tiny_clip, texts, trim=False), reference, rtol=0, atol=1e-6)

    names = list(load_label_set("lss530").names[:40])
    templates = load_templates("action_templates_v1").templates
    prompts = render_prompts(names, templates)
    full = full_context(tiny_clip.model, tiny_clip.tokenizer(prompts)).view(len(names), len(templates), -1)
    bank = build_category_bank(tiny_clip, names, templates, batch_size=32)
    torch.testing.assert_close(bank, F.normalize(full.mean(1), dim=-1), rtol=0, atol=1e-5)


# --- token counts without torch -------------------------------------------------------------

EDGE_CASES = [
    "", " ", "\t\n  \u00a0", "a", "A", "Héllo   wörld!!", "café naïve résumé Straße İstanbul ǅ",
    "😀👍🏽 family: 👨‍👩‍👧‍👦", "ﬁ ligature ﬀ", "ｆｕｌｌｗｉｄｔｈ ＡＢＣ １２３", "مرحبا بالعالم", "你好，世界", "こんにちは",
    "Привет мир", "Ελληνικά", "e\u0301 combining accent", "zero\u200bwidth", "soft\u00adhyphen",
    "&amp;amp; &lt;b&gt; &quot;html&quot;", "<start_of_text> and <END_of_text> inside",
    "don't it's they'll we've I'm she'd you're DON'T", "3.14159 2024-01-01 1,000,000", "—––‐ …",
    "mojibake: cafÃ©", "tab\tseparated\twords", "line\nbreaks\r\nhere", "a" * 300, "antidisestablishmentarianism",
    "...!!!???", "\x00\x01control\x7f", "🏳️‍🌈 flags 🇫🇷", "A person is doing a cartwheel on the beach, seen from angle 3.",
]


def long_texts() -> list[str]:
    return ["a person " * 40, "the quick brown fox jumps over the lazy dog, " * 8, "é " * 120]


def descriptions() -> list[str]:
    places = ("in a park", "at home", "on a wet street at night", "in a crowded gym")
    return [f"A person {name} {places[i % 4]}, with both arms moving in a steady rhythm ({i})."
            for i, name in enumerate(load_label_set("lss530").names)]


def test_bpe_matches_open_clip_tokens_exactly():
    reference = SimpleTokenizer()
    ours = ClipBPE()
    names = [n for s in ("lss530", "kinetics400", "kinetics600", "ucf101", "hmdb51") for n in load_label_set(s).names]
    texts = names + descriptions() + EDGE_CASES + long_texts()
    texts += render_prompts(load_label_set("lss530").names[:50], load_templates("action_templates_v1").templates)
    assert [ours.ids(t) for t in texts] == [reference.encode(t) for t in texts]
    counts = clip_token_counts(texts)
    assert counts == [len(reference.encode(t)) + 2 for t in texts]
    assert max(counts) > 77 and min(counts) == 2  # both sides of the context, and the empty text


def test_token_counting_does_not_import_torch():
    """`lss describe` loads its modules and counts a long non-ASCII reply without torch."""
    text = "Une personne fait du vélo dans un parc, " * 10  # ~100 tokens, not ASCII: counted
    code = (
        "import json, sys\n"
        "import lss_cli.describe.run\n"
        "from lss_cli.describe.replies import ClipLengthCheck\n"
        "from lss_cli.describe.bpe import clip_token_counts\n"
        f"text = {text!r}\n"
        "print(json.dumps([ClipLengthCheck().too_long([text, 'a dog']), clip_token_counts([text]),\n"
        "                  sorted(m for m in ('torch', 'open_clip') if m in sys.modules)]))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr
    flags, counts, heavy = json.loads(r.stdout)
    assert heavy == []
    assert flags == [True, False] and counts == [len(SimpleTokenizer().encode(text)) + 2]


def test_the_vocabulary_file_is_open_clips():
    assert vocabulary_path().parent.resolve() == Path(open_clip.__file__).parent.resolve()
