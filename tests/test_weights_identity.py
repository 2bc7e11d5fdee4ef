"""CLIP weights are identified by their content: a tag, a .safetensors, a .bin and a local-dir:
folder of the same tensors get one id, so a concept bank built from one form is accepted by
training with another (the offline-node case: bank built with `--pretrained openai`, training
from a local file of those weights). Different weights are still refused, and banks written
before content ids (source-form ids) still load."""

from __future__ import annotations

import json

import pytest
import torch

from lss_cli.concepts.bank import ConceptBank, ConceptBankMismatchError, load_concept_bank, save_concept_bank
from lss_cli.concepts.build import build_concepts
from lss_cli.config import ConceptsConfig, TrainConfig, load_config
from lss_cli.models.clip import BUILTIN_WEIGHTS, CONFIG_DIR, load_clip, save_weights
from lss_cli.train.build import load_clip_and_bank


def _files(tmp_path, clip):
    """The weights of `clip` as a .safetensors file, a state-dict .bin and a local-dir: folder."""
    safetensors, bin_file, folder = tmp_path / "w.safetensors", tmp_path / "w.bin", tmp_path / "w-dir"
    save_weights(clip.model, safetensors)
    torch.save(clip.model.state_dict(), bin_file)
    folder.mkdir()
    cfg = json.loads((CONFIG_DIR / "lss-tiny.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    save_weights(clip.model, folder / "open_clip_model.safetensors")
    return str(safetensors), str(bin_file), f"local-dir:{folder}"


def test_same_tensors_get_one_id_in_every_form(tmp_path, tiny_clip):
    forms = _files(tmp_path, tiny_clip)
    loaded = [load_clip("lss-tiny", form, seed=7) for form in forms]  # the seed must not matter with weights
    assert {c.weights_id for c in loaded} == {tiny_clip.weights_id}
    assert tiny_clip.weights_id.startswith("weights-sha256:")
    # The provenance still says how each was named: three different sources.
    assert len({tiny_clip.weights_source, *(c.weights_source for c in loaded)}) == 4
    assert load_clip("lss-tiny", None, seed=1).weights_id != tiny_clip.weights_id


def test_builtin_tag_and_its_file_get_one_id(tmp_path):
    # The shipped `synthetic-world` weights load by tag (like `openai`) or from their (compact) file;
    # a full re-save of them as .bin is a third form of the same tensors.
    tag = load_clip("lss-tiny", "synthetic-world")
    from_file = load_clip("lss-tiny", str(BUILTIN_WEIGHTS["lss-tiny", "synthetic-world"]))
    torch.save(tag.model.state_dict(), tmp_path / "world.bin")
    from_bin = load_clip("lss-tiny", str(tmp_path / "world.bin"))
    assert tag.weights_id == from_file.weights_id == from_bin.weights_id
    assert tag.weights_source.startswith("synthetic-world:") and from_bin.weights_source.startswith("sha256:")


def test_content_id_sees_one_changed_value(tiny_clip):
    from lss_cli.models.clip import weights_content_id

    model = load_clip("lss-tiny", None, seed=0).model
    assert weights_content_id(model) == tiny_clip.weights_id
    with torch.no_grad():
        model.logit_scale.add_(1e-6)
    assert weights_content_id(model) != tiny_clip.weights_id


def test_bank_built_from_one_file_trains_with_the_other(tmp_path, synth_dataset, tiny_clip):
    safetensors, bin_file, _ = _files(tmp_path, tiny_clip)
    bank = tmp_path / "concepts.safetensors"
    build_concepts(ConceptsConfig(labels=str(synth_dataset / "classes.txt"), out=str(bank),
                                  descriptions=str(synth_dataset / "descriptions.jsonl"), model="lss-tiny",
                                  pretrained=safetensors, device="cpu"))

    def train_inputs(*overrides: str):
        cfg = load_config(TrainConfig, None, ["model.name=lss-tiny", f"loss.concepts={bank}", *overrides])
        return load_clip_and_bank(cfg)  # what `lss train` runs before anything else

    clip, tensors = train_inputs(f"model.pretrained={bin_file}")
    assert clip.weights_source != load_concept_bank(bank).weights_source  # another file, the same weights
    assert tensors["category"].shape == (4, 64)
    train_inputs("model.pretrained=null")  # random init with seed 0: the same tensors again
    with pytest.raises(ConceptBankMismatchError, match="different weights"):
        train_inputs("model.pretrained=null", "run.seed=1")  # other weights are still refused


def test_bank_from_before_content_ids_is_still_accepted(tmp_path, tiny_clip, capsys, monkeypatch):
    from lss_cli.runtime import progress

    monkeypatch.setattr(progress, "_quiet", False)  # the note is an info line; another test may have set --quiet
    # Banks written before content ids recorded the source form as their id and no weights_source.
    bank = ConceptBank(torch.eye(2, 64), torch.eye(3, 64)[1:], torch.tensor([0, 1]), ["a", "b"], ["x", "y"], 2,
                       metadata={"model": "lss-tiny", "pretrained": None, "weights_id": "random-init(seed=0)"})
    path = save_concept_bank(bank, tmp_path / "old.safetensors")
    load_concept_bank(path, expect_model="lss-tiny", expect_weights=tiny_clip.weights_id,
                      expect_weights_source=tiny_clip.weights_source)
    assert "predates weights ids by content" in capsys.readouterr().err
    other = load_clip("lss-tiny", None, seed=1)
    with pytest.raises(ConceptBankMismatchError, match="random-init") as e:
        load_concept_bank(path, expect_model="lss-tiny", expect_weights=other.weights_id,
                          expect_weights_source=other.weights_source)
    assert "rebuild it once" in e.value.hint
