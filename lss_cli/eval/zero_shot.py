"""Zero-shot scoring, the one definition `lss eval zero-shot` and `lss predict` share.

A class is the mean of its name written into every prompt template, encoded by the frozen text
tower; a video's probabilities are the softmax of the model's logit scale x cosine, averaged over
its views (CLIP's protocol, applied per view).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lss_cli.concepts.encode import build_category_bank
from lss_cli.concepts.templates import TemplateSet
from lss_cli.eval.metrics import view_averaged_probs
from lss_cli.models.artefact import VideoModel


def class_classifier(model: VideoModel, names: Sequence[str], templates: TemplateSet) -> torch.Tensor:
    """[K, D] unit rows, one per class name, on the model's device."""
    return build_category_bank(model.clip, names, templates)


def logit_scale(model: VideoModel) -> float:
    """The trained temperature of the CLIP the model came from (exp of the stored log scale)."""
    return float(model.clip.model.logit_scale.detach().exp())


def zero_shot_probs(model: VideoModel, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """features [N, V, D] (unit rows per view), classifier [K, D] -> view-averaged probabilities [N, K]."""
    return view_averaged_probs(features, classifier, logit_scale(model))
