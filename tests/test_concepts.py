"""Concept banks: open_clip-equivalent category vectors, the file format, consistency checks, the CLI.

This file imports open_clip directly: its zero-shot-classifier builder is the independent reference.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from conftest import run_lss

from lss_cli.concepts.bank import ConceptBank, ConceptBankMismatchError, load_concept_bank, save_concept_bank
from lss_cli.concepts.build import build_concepts, encode_inputs, plan_concepts
from lss_cli.concepts.encode import build_category_bank, encode_texts, truncated_mask
from lss_cli.concepts.inputs import gather_inputs
from lss_cli.concepts.templates import load_templates
from lss_cli.config import ConceptsConfig
from lss_cli.describe.records import DescriptionRecord, write_records
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.labels import load_label_set

NAMES = ["brush hair", "playing guitar", "moving left", "abseiling", "riding a bike"]


def _tiny_cfg(tmp_path, **kw) -> ConceptsConfig:
    return ConceptsConfig(model="lss-tiny", pretrained="none", device="cpu",
                          out=str(tmp_path / "concepts.safetensors"), **kw)


def _write(tmp_path, name: str, records: dict[str, list[str]]) -> str:
    path = tmp_path / name
    write_records(path, [DescriptionRecord(c, d, "test") for c, d in records.items()])
    return str(path)


def _labels(tmp_path, names) -> str:
    path = tmp_path / "labels.txt"
    path.write_text("".join(n + "\n" for n in names))
    return str(path)


# --------------------------------------------------------------------------------------------
# Encoding
# --------------------------------------------------------------------------------------------


def test_category_bank_equals_open_clip_zero_shot_classifier(tiny_clip):
    import open_clip

    templates = load_templates("action_templates_v1")
    assert 8 <= len(templates.templates) <= 16
    ours = build_category_bank(tiny_clip, NAMES, templates, batch_size=7)  # batches cut across names
    ref = open_clip.build_zero_shot_classifier(tiny_clip.model, tiny_clip.tokenizer, NAMES, list(templates.templates),
                                               num_classes_per_batch=2, device="cpu")  # [D, K]
    assert ours.shape == (len(NAMES), tiny_clip.embed_dim) and ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref.T, rtol=0, atol=1e-5)
    # The comparison can tell conventions apart: averaging unnormalised embeddings gives other vectors.
    raw = torch.stack([tiny_clip.model.encode_text(tiny_clip.tokenizer(templates.render(n))).mean(0) for n in NAMES])
    assert (torch.nn.functional.normalize(raw, dim=-1) - ours).abs().max() > 1e-3
    assert not ours.is_inference() and (ours @ ours.T).fill_diagonal_(0).max() < 0.9999


def test_encode_texts_batches_progress_and_units(tiny_clip):
    texts = [f"a person {n}" for n in NAMES] * 3
    seen = []
    a = encode_texts(tiny_clip, texts, batch_size=4, progress=seen.append)
    b = encode_texts(tiny_clip, texts, batch_size=64)
    assert seen == [4, 4, 4, 3] and a.shape == (15, tiny_clip.embed_dim)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    torch.testing.assert_close(a.norm(dim=1), torch.ones(15))
    loss = (torch.zeros(tiny_clip.embed_dim, requires_grad=True) @ a.T).sum()  # usable as a constant in autograd
    loss.backward()


def test_truncation_is_detected_at_the_exact_context_boundary(tiny_clip):
    ctx = tiny_clip.context_length  # 77: sot + 75 words "a" + eot fit; one more word is cut
    texts = ["a " * (ctx - 2), "a " * (ctx - 1), "a short text", "a " * 200]
    assert truncated_mask(tiny_clip, texts, batch_size=3).tolist() == [False, True, False, True]


# --------------------------------------------------------------------------------------------
# Inputs and consistency
# --------------------------------------------------------------------------------------------


def test_synthetic_descriptions_order_and_owners(synth_dataset, tmp_path):
    cfg = _tiny_cfg(tmp_path, labels=str(synth_dataset / "classes.txt"),
                    descriptions=str(synth_dataset / "descriptions.jsonl"))
    inputs = gather_inputs(cfg)
    assert inputs.label_names == (synth_dataset / "classes.txt").read_text().split("\n")[:-1]
    assert inputs.description_owner == sorted(inputs.description_owner) and set(inputs.description_owner) == {0, 1, 2, 3}
    assert inputs.counts()["category_prompts"] == 4 * len(inputs.templates.templates)
    assert plan_concepts(cfg)["weights_id"] == "random-init"
    with pytest.raises(ConfigError, match="unknown open_clip model 'ViT-B-61'"):
        plan_concepts(replace(cfg, model="ViT-B-61"))
    assert not (tmp_path / "concepts.safetensors").exists()  # a dry run writes nothing


def test_missing_descriptions_listed_or_allowed(tmp_path):
    labels = _labels(tmp_path, ["waving", "jumping", "running", "sitting"])
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a hand moves side to side"], "running": ["legs move fast"]})
    with pytest.raises(InputFileError, match=r"2 of 4 categories have no descriptions.*'jumping', 'sitting'") as e:
        gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc))
    assert "--allow-missing" in e.value.hint
    inputs = gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc, allow_missing=True))
    assert inputs.missing == ["jumping", "sitting"] and inputs.description_owner == [0, 2]


def test_unknown_category_duplicates_and_empty_texts(tmp_path):
    labels = _labels(tmp_path, ["waving", "jumping"])
    desc = _write(tmp_path, "d.jsonl", {"waving": ["x"], "jumpin": ["y"]})
    with pytest.raises(InputFileError, match=r"not in the label set: 'jumpin'") as e:
        gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc))
    assert "'jumping'" in e.value.hint
    desc = _write(tmp_path, "d.jsonl", {"waving": ["same text"], "jumping": ["same text"]})
    with pytest.raises(InputFileError, match=r"given for both 'waving' and 'jumping'"):
        gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc))
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a", " a ", "b"], "jumping": ["c"]})
    inputs = gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc))
    assert inputs.description_texts == ["a", "b", "c"] and inputs.dropped_duplicates == 1
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a", "  "], "jumping": ["c"]})
    with pytest.raises(InputFileError, match="empty description for 'waving'"):
        gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc))
    words = tmp_path / "words.txt"
    words.write_text("# extra\nclimbing\nwaving\n")
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a"], "jumping": ["c"]})
    with pytest.raises(InputFileError, match=r"extra word 'waving' duplicates a category name \(the label set\)"):
        gather_inputs(_tiny_cfg(tmp_path, labels=labels, descriptions=desc, extra_words=str(words)))
    with pytest.raises(ConfigError, match="no descriptions file given"):
        gather_inputs(_tiny_cfg(tmp_path, labels=labels))


def test_template_files_are_checked(tmp_path):
    bad = tmp_path / "t.yaml"
    for body, message in [("name: t\n", "no `templates:` list"),
                          ("templates: ['a {} and {}']\n", "exactly one {}"),
                          ("templates: ['a {0}']\n", "exactly one {}"),
                          ("templates: ['a {}.', 'a {}.']\n", "appears more than once")]:
        bad.write_text(body)
        with pytest.raises(InputFileError, match=message):
            load_templates(str(bad))
    with pytest.raises(ConfigError, match="not found"):
        load_templates("action_templates_v9")


# --------------------------------------------------------------------------------------------
# The bank: vocabulary expansion, round trip, validation
# --------------------------------------------------------------------------------------------


@pytest.fixture
def expanded(tmp_path, tiny_clip):
    """A bank with a category lacking descriptions, two extra words and two extra sentences."""
    labels = _labels(tmp_path, ["waving", "jumping", "running"])
    desc = _write(tmp_path, "d.jsonl", {"running": ["legs move fast", "a jogger on a track"],
                                        "waving": ["a hand moves side to side"]})
    words, sentences = tmp_path / "words.txt", tmp_path / "sentences.txt"
    words.write_text("climbing\nswimming\n")
    sentences.write_text("a crowd in a stadium\nlegs move fast\na dog runs on grass\n")  # one repeats a description
    cfg = _tiny_cfg(tmp_path, labels=labels, descriptions=desc, allow_missing=True,
                    extra_words=str(words), extra_sentences=str(sentences))
    inputs = gather_inputs(cfg)
    bank = encode_inputs(tiny_clip, inputs, batch_size=5)
    bank.metadata = {"model": tiny_clip.name, "pretrained": None, "weights_id": tiny_clip.weights_id,
                     "templates": list(inputs.templates.templates), "sources": inputs.sources}
    return bank, inputs


def test_vocabulary_expansion_masks_and_ca_indices(expanded):
    bank, inputs = expanded
    assert bank.category_names == ["waving", "jumping", "running", "climbing", "swimming"]
    assert bank.description_texts == ["a hand moves side to side", "legs move fast", "a jogger on a track",
                                      "a crowd in a stadium", "a dog runs on grass"]
    assert bank.description_owner.tolist() == [0, 2, 2, -1, -1] and inputs.dropped_duplicates == 1
    assert bank.category_ca_mask.tolist() == [True, False, True, False, False]
    assert bank.description_ca_mask.tolist() == [True, True, True, False, False]
    # The loss derives the aligned subset from description_owner alone (one implementation, in
    # lss_cli.train.losses); it must agree with the masks stored in the file.
    from lss_cli.train.losses import LSSLoss

    loss = LSSLoss(bank.category, bank.description, bank.description_owner)
    assert loss.ca_category_index.tolist() == bank.category_ca_mask.nonzero().flatten().tolist() == [0, 2]
    assert loss.ca_description_index.tolist() == bank.description_ca_mask.nonzero().flatten().tolist() == [0, 1, 2]
    owner = loss.ca_owner  # positions in ca_category_index
    assert owner.tolist() == [0, 1, 1]
    names = [bank.category_names[loss.ca_category_index[o]] for o in owner]
    assert names == [bank.category_names[bank.description_owner[m]] for m in loss.ca_description_index]


def test_round_trip_and_model_mismatch(expanded, tmp_path, tiny_clip):
    bank, _ = expanded
    path = save_concept_bank(bank, tmp_path / "sub" / "bank.safetensors")
    assert [p.name for p in path.parent.iterdir()] == ["bank.safetensors"]  # no temporary left behind
    loaded = load_concept_bank(path, expect_model="lss-tiny", expect_weights=tiny_clip.weights_id, expect_dim=64)
    for key in ("category", "description", "description_owner"):
        assert torch.equal(getattr(loaded, key), getattr(bank, key))
    assert loaded.category_names == bank.category_names and loaded.description_texts == bank.description_texts
    assert loaded.num_label_categories == 3
    assert {k: v for k, v in loaded.metadata.items() if k not in ("format", "format_version")} == bank.metadata
    with pytest.raises(ConceptBankMismatchError, match=r"built with CLIP model 'lss-tiny', but it is used with 'ViT-B-16'"):
        load_concept_bank(path, expect_model="ViT-B-16")
    with pytest.raises(ConceptBankMismatchError, match=r"weights 'weights-sha256:[0-9a-f]{64}', but it is used with 'openai'"):
        load_concept_bank(path, expect_model="lss-tiny", expect_weights="openai")
    with pytest.raises(ConceptBankMismatchError, match="D=64, but the model embeds to D=512"):
        load_concept_bank(path, expect_dim=512)


def _corrupt(bank: ConceptBank, path, **tensors):
    """Write a bank file bypassing save's checks, with some tensors replaced."""
    from safetensors.torch import save_file

    good = tmp = path.with_name("good.safetensors")
    save_concept_bank(bank, good)
    from safetensors import safe_open

    with safe_open(str(tmp), framework="pt") as f:
        meta = f.metadata()
        data = {k: f.get_tensor(k) for k in f.keys()}
    save_file({**data, **tensors}, str(path), metadata=meta)


@pytest.mark.parametrize("change, message", [
    (lambda b: {"category": b.category * 2}, "category rows are not unit length"),
    (lambda b: {"description": b.description.double()}, "description is torch.float64"),
    (lambda b: {"category": b.category.clone().index_fill_(0, torch.tensor([1]), float("nan"))}, "non-finite"),
    (lambda b: {"description_owner": b.description_owner.clone().fill_(4)}, "description_owner values"),
    (lambda b: {"description_owner": b.description_owner.int()}, "description_owner must be int64"),
    (lambda b: {"category": b.category[:4]}, "5 names / 5 texts for K=4"),
    (lambda b: {"description_ca_mask": torch.ones(5, dtype=torch.bool)}, "description_ca_mask disagrees"),
])
def test_load_rejects_invalid_banks(expanded, tmp_path, change, message):
    bank, _ = expanded
    path = tmp_path / "bad.safetensors"
    _corrupt(bank, path, **change(bank))
    with pytest.raises(InputFileError, match=message):
        load_concept_bank(path)


def test_save_refuses_invalid_bank_and_load_refuses_other_files(expanded, tmp_path):
    bank, _ = expanded
    with pytest.raises(InputFileError, match="not unit length"):
        save_concept_bank(replace(bank, category=bank.category * 3), tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(InputFileError, match="cannot read it as safetensors"):
        load_concept_bank(tmp_path / "junk.safetensors")
    with pytest.raises(InputFileError, match="concept bank not found"):
        load_concept_bank(tmp_path / "nope.safetensors")


def test_build_concepts_counts_truncated_descriptions(tmp_path):
    labels = _labels(tmp_path, ["waving", "jumping"])
    long_text = "a person waves a hand " * 30
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a hand moves", long_text], "jumping": ["feet leave the ground"]})
    cfg = _tiny_cfg(tmp_path, labels=labels, descriptions=desc)
    summary = build_concepts(cfg)
    assert summary["truncated_descriptions"] == 1 and summary["truncated_category_prompts"] == 0
    bank = load_concept_bank(cfg.out)
    assert bank.metadata["truncated_descriptions"] == [1] and bank.description_texts[1] == long_text.strip()
    assert bank.metadata["sources"]["descriptions"]["sha256"] == summary["sources"]["descriptions"]["sha256"]
    with pytest.raises(ConfigError, match="exists"):
        build_concepts(cfg)



def test_build_concepts_tokenises_each_text_once_for_the_check_and_the_encoding(tmp_path, tiny_clip, monkeypatch):
    """The truncation check's tokens are the ones encoded: each text is tokenised at the context
    length once (plus once at ctx + 1 for the check), and the bank is what plain encoding gives."""
    import dataclasses

    import lss_cli.concepts.build as build_mod

    counts = {"ctx": 0, "ctx+1": 0}

    class CountingTokenizer:
        context_length = tiny_clip.tokenizer.context_length

        def __call__(self, texts, context_length=None):
            counts["ctx" if context_length in (None, self.context_length) else "ctx+1"] += len(texts)
            return tiny_clip.tokenizer(texts) if context_length is None else tiny_clip.tokenizer(texts, context_length)

    monkeypatch.setattr(build_mod, "load_clip", lambda *a, **k: dataclasses.replace(tiny_clip, tokenizer=CountingTokenizer()))
    labels = _labels(tmp_path, ["waving", "jumping"])
    desc = _write(tmp_path, "d.jsonl", {"waving": ["a hand moves", "an arm swings"], "jumping": ["feet leave the ground"]})
    cfg = _tiny_cfg(tmp_path, labels=labels, descriptions=desc)
    build_concepts(cfg)
    n_texts = 2 * len(load_templates("action_templates_v1").templates) + 3
    assert counts == {"ctx": n_texts, "ctx+1": n_texts}
    bank = load_concept_bank(cfg.out)
    plain = encode_inputs(tiny_clip, gather_inputs(cfg), batch_size=cfg.batch_size)
    assert torch.equal(bank.category, plain.category) and torch.equal(bank.description, plain.description)

# --------------------------------------------------------------------------------------------
# The CLI, end to end
# --------------------------------------------------------------------------------------------


def test_cli_build_and_info_on_synthetic_descriptions(synth_dataset, tmp_path, tiny_clip):
    out = tmp_path / "c.safetensors"
    args = ["build-concepts", "--labels", synth_dataset / "classes.txt", "--descriptions",
            synth_dataset / "descriptions.jsonl", "--model", "lss-tiny", "--pretrained", "none", "--out", out]
    r = run_lss(*args, "--json", "--device", "cpu")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["K"], summary["M"], summary["D"]) == (4, 12, 64) and summary["model"] == "lss-tiny"
    bank = load_concept_bank(out, expect_model="lss-tiny", expect_weights=tiny_clip.weights_id)
    ref = build_category_bank(tiny_clip, bank.category_names, load_templates("action_templates_v1"))
    torch.testing.assert_close(bank.category, ref, rtol=0, atol=1e-5)
    r = run_lss("concepts", "info", out)
    assert r.returncode == 0 and "12 (12 owned + 0 extra sentences)" in r.stdout and "random-init" in r.stdout
    r = run_lss(*args)  # exists: refused before any model is loaded
    assert r.returncode == 2 and "--overwrite" in r.stderr


@pytest.mark.slow
def test_cli_builds_the_lss530_bank(tmp_path):
    names = load_label_set("lss530").names
    desc = _write(tmp_path, "d.jsonl", {n: [f"a person {n}, seen from the side", f"someone {n} outdoors"] for n in names})
    words = tmp_path / "words.txt"
    words.write_text("juggling torches\nunicycling\n")
    out = tmp_path / "lss530.safetensors"
    cfg = tmp_path / "concepts.yaml"
    cfg.write_text(f"labels: lss530\ndescriptions: {desc}\nmodel: lss-tiny\npretrained: none\nout: {out}\n")
    r = run_lss("build-concepts", cfg, "batch_size=1024", "--extra-words", words, "--json")
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert (summary["K"], summary["M"], summary["extra_words"]) == (532, 1060, 2)
    assert (summary["ca_categories"], summary["ca_descriptions"]) == (530, 1060)
    r = run_lss("concepts", "info", out, "--json")
    assert r.returncode == 0 and json.loads(r.stdout)["sources"]["labels"]["source"].startswith("builtin:lss530")
