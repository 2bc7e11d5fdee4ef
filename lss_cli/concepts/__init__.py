"""Concept banks: the frozen CLIP text tower's vectors LSS trains in (docs/method.md §3).

Two banks, both float32 with unit rows:

- `category` `[K, D]`: each category name rendered through every template of a template set,
  encoded, L2-normalised, averaged over the templates and normalised again (open_clip's
  zero-shot-classifier convention, stored `[K, D]`).
- `description` `[M, D]`: each description encoded and normalised; `description_owner` `[M]`
  (int64) is the index of the category it describes, or -1 for an unowned extra sentence.

Row order is fixed: categories `[0, num_label_categories)` are the label set in its own order
(row i = label id i), then the extra words in file order. Descriptions are grouped by owner in
category order (within a category, in file order), then the extra sentences in file order.

Vocabulary expansion and the losses (our definition; the paper leaves expansion open):
**concept distillation** uses the full banks (all K categories, all M descriptions; the uniform
prior acts on the full category distribution). **Concept alignment** needs the category <->
description relation, so it uses only the categories that own at least one description
(`ConceptBank.category_ca_mask`, `[K]`) and the descriptions that have an owner
(`description_ca_mask`, `[M]`); description probabilities are aggregated to categories through
`description_owner` (`lss_cli.train.losses.LSSLoss` derives the sub-bank indices from it alone).
Without extra words/sentences and missing categories this is exactly the paper's concept alignment.

Modules, in build order:

- `templates`: template sets (`load_templates`, `TemplateSet`) and `render_prompts`; no torch.
- `inputs`: reads and checks labels, descriptions, extra words/sentences (`gather_inputs`).
- `encode`: the text tower: `tokenize_checked` (truncation check), `encode_texts`,
  `build_category_bank` (also zero-shot evaluation's classifier).
- `bank`: `ConceptBank`, the `concepts.safetensors` format, `save_concept_bank` /
  `load_concept_bank` with their validation, `bank_summary`.
- `build`: the whole command: `plan_concepts` (`--dry-run`), `build_concepts`, `encode_inputs`.
"""
