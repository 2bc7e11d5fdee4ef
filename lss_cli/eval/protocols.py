"""Zero-shot and linear-probe evaluation protocols (docs/method.md §6).

Zero-shot: the classifier is built exactly like the category concept bank (same templates,
L2-normalise, average, re-normalise; readable class names); each view's softmax over CLIP's
logit scale x cosine is averaged over views; top-1/top-5 per split, mean ± std over splits.
Linear probe (CLIP's protocol by default, `lss_cli.eval.linear_probe`): frozen pre-projection
features, logistic regression with the L2 strength searched over [1e-6, 1e6] on a validation part
of each split's train set that keeps source groups together (`source_group`), then refit on all
of the train set. In both, an unreadable test video counts as an
error and is listed; nothing is dropped silently. Unreadable train videos cannot be fitted on:
they are left out of the fit and listed.
Direction accuracy, when time-reversal class pairs are in effect (`lss_cli.eval.pairs`): of the
test videos whose class has a mate, the share scoring their class strictly above the mate, with
the same scores as top-1 (zero-shot: view-averaged probabilities; probe: its logits).
Splits: UCF101, HMDB51 and the K600 zero-shot classes have official splits 1, 2, 3 (all three by
default); Kinetics-400/600 have CSV splits by name and are evaluated on val by default (a probe
trains on train); a split without labels (Kinetics' test CSV often has none) is refused.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lss_cli.concepts.templates import load_templates
from lss_cli.config import EvalConfig, to_dict
from lss_cli.data.datasets import VideoList, load_dataset, source_group
from lss_cli.errors import ConfigError, LssError
from lss_cli.eval.features import Features, Views, extract_features
from lss_cli.eval.linear_probe import COARSE_STEP, FINE_STEP, MAX_ITER, linear_probe
from lss_cli.eval.metrics import (
    confusion_matrix,
    direction_accuracy,
    mean_std,
    per_class_accuracy,
    topk_correct,
)
from lss_cli.eval.pairs import ClassPairs, mate_indices, pairs_path, read_pairs
from lss_cli.eval.zero_shot import class_classifier, logit_scale, zero_shot_probs
from lss_cli.models.artefact import VideoModel

NUMBERED_SPLITS = ("ucf101", "hmdb51", "kinetics600-zs")  # official splits 1, 2, 3
NAMED_SPLITS = ("kinetics400", "kinetics600")  # CSV splits by name: train, val, test
DEFAULT_SPLITS: dict[str, list[int | str]] = {**dict.fromkeys(NUMBERED_SPLITS, [1, 2, 3]),
                                              **dict.fromkeys(NAMED_SPLITS, ["val"])}


@dataclass
class EvalContext:
    cfg: EvalConfig
    model: VideoModel
    device: torch.device
    cache_dir: Path | None
    views: Views
    classifiers: dict[tuple[str, ...], torch.Tensor] = field(default_factory=dict)  # class names -> [K, D]
    pairs: ClassPairs | None = None  # time-reversal class pairs in effect (`check_pairs`); None = no direction accuracy


def split_names(cfg: EvalConfig) -> list[str]:
    """The splits evaluated: `cfg.splits`, else the dataset's (`DEFAULT_SPLITS`); one unnamed
    split ("-") for lists, folders and synthetic."""
    if cfg.dataset not in DEFAULT_SPLITS:
        return ["-"]
    return [str(k).strip().lower() for k in (cfg.splits or DEFAULT_SPLITS[cfg.dataset])]


def _check_splits(cfg: EvalConfig, protocol: str) -> None:
    """Every split named exists for the dataset (numbers for the official splits, names for Kinetics)."""
    names = split_names(cfg)
    if cfg.dataset in NUMBERED_SPLITS:
        bad = [k for k in names if k not in ("1", "2", "3")]
        if bad:
            raise ConfigError(f"{cfg.dataset}: split {bad[0]!r} does not exist",
                              hint="its official splits are 1, 2 and 3, e.g. --splits 1,2,3 (the default)")
    elif cfg.dataset in NAMED_SPLITS:
        bad = [k for k in names if k.isdigit()]
        if bad:
            raise ConfigError(f"{cfg.dataset}: split {bad[0]!r} does not exist: Kinetics splits have names",
                              hint="evaluate on the labelled validation split: --splits val (the default)")
        if protocol == "linear-probe" and cfg.train_list is None and "train" in names:
            raise ConfigError(f"{cfg.dataset}: the linear probe trains on the train split; it cannot also be "
                              "scored on it", hint="--splits val (the default)")
        for name in names:  # a split without labels is refused before anything is written
            load_split(cfg, name, "test")


def check_protocol(cfg: EvalConfig, protocol: str) -> None:
    """Usage errors found before any model is loaded or any file written."""
    if protocol not in ("zero-shot", "linear-probe"):
        raise ConfigError(f"unknown protocol {protocol!r}", hint="zero-shot or linear-probe")
    _check_splits(cfg, protocol)
    if cfg.dataset == "kinetics600-zs" and cfg.list_file is None:
        raise ConfigError("kinetics600-zs needs the video list of its classes: no Kinetics video list ships",
                          hint="pass --list-file: a Kinetics CSV, or a `path label` list with ids 0..159 per split")
    if protocol != "linear-probe" or cfg.dataset in ("ucf101", "hmdb51"):
        return
    if cfg.dataset == "kinetics600-zs":
        raise ConfigError("kinetics600-zs is a zero-shot protocol: it has no training part",
                          hint="linear-probe on ucf101, hmdb51 or your own lists")
    if cfg.train_list is None and (cfg.dataset == "folder" or cfg.list_file is not None):
        what = "dataset folder has one list of videos" if cfg.dataset == "folder" else \
            f"--list-file {cfg.list_file} gives the test videos"
        raise ConfigError(f"{what}; a linear probe also needs separate training videos",
                          hint="add --train-list TRAIN.txt (labelled with the same classes)")


def check_pairs(cfg: EvalConfig) -> ClassPairs | None:
    """The time-reversal pairs in effect (`EvalConfig.pairs`, else a synthetic root's pairs.txt),
    checked against every split's test classes before any model is loaded or video decoded."""
    path = pairs_path(cfg.dataset, cfg.root, cfg.pairs)
    if path is None:
        return None
    pairs = read_pairs(path)
    for split in split_names(cfg):
        mate_indices(pairs, load_split(cfg, split, "test").classes, f"split {split}")
    return pairs


def load_split(cfg: EvalConfig, split: str, part: str) -> VideoList:
    """The VideoList of one split's `part` ("train" or "test").

    Official datasets take both parts from their split files. Kinetics takes the test part from
    the split's CSV (`list_file` when given) and the train part from its train CSV (`train_list`
    when given); a test part without labels is refused here, before any model is loaded. Other
    datasets take the test part from `list_file` (else their own test list) and the train part
    from `train_list` (else their own train list); a linear probe never trains on the list it is
    scored on (`check_protocol`)."""
    if cfg.dataset == "kinetics600-zs":
        return load_dataset(cfg.dataset, cfg.root, int(split), cfg.list_file)
    if cfg.dataset in ("ucf101", "hmdb51"):
        return load_dataset(cfg.dataset, cfg.root, f"{part}{split}")
    if cfg.dataset in NAMED_SPLITS:
        if part == "train":
            return load_dataset(cfg.dataset, cfg.root, "train", cfg.train_list)
        videos = load_dataset(cfg.dataset, cfg.root, split, cfg.list_file)
        unlabelled = int((videos.labels < 0).sum())
        if unlabelled:
            raise ConfigError(f"{cfg.dataset} split {split!r} has no labels for {unlabelled} of its {len(videos)} "
                              f"videos ({videos.source}): accuracy cannot be scored on it",
                              hint="Kinetics' test annotations often come without labels: evaluate on the "
                                   "labelled validation split, --splits val (the default)")
        return videos
    if part == "train" and cfg.train_list is not None:
        return load_dataset("list" if cfg.dataset == "folder" else cfg.dataset, cfg.root, "train", cfg.train_list)
    return load_dataset(cfg.dataset, cfg.root, part, cfg.list_file)


def missing_videos(cfg: EvalConfig, protocol: str) -> list[tuple[str, VideoList, list[int]]]:
    """(name, videos, indices of the files not there) of every list `protocol` reads, by file
    existence only: nothing is decoded and no model is needed."""
    exists = functools.cache(os.path.isfile)  # UCF101's and HMDB51's splits share their videos: stat each once
    parts = ("train", "test") if protocol == "linear-probe" else ("test",)
    checked = []
    for split in split_names(cfg):
        for part in parts:
            videos = load_split(cfg, split, part)
            name = f"{part} list" if split == "-" else f"split {split} {part} list"
            checked.append((name, videos, [i for i in range(len(videos)) if not exists(videos.path(i))]))
    return checked


def _features(ctx: EvalContext, videos: VideoList, kind: str, desc: str) -> Features:
    return extract_features(ctx.model, videos, ctx.views, kind=kind, cache_dir=ctx.cache_dir,
                            batch_size=ctx.cfg.batch_size, num_workers=ctx.cfg.num_workers, device=ctx.device,
                            desc=desc, compile=_compile_on(ctx))


def _compile_on(ctx: EvalContext) -> bool:
    # On a GPU the compiled forward is markedly faster (benchmarks/eval_forward.py); on a CPU the
    # compile time would outweigh the gain for the lists people evaluate there.
    return ctx.cfg.compile if ctx.cfg.compile is not None else ctx.device.type == "cuda"


def _unreadable(videos: VideoList, feats: Features) -> list[dict[str, str]]:
    return [{"path": videos.relpath(i), "error": err} for i, err in sorted(feats.errors.items())]


def _require_labels(videos: VideoList, what: str) -> None:
    """Every listed video needs a class: an unlabelled one cannot be scored (nor silently skipped)."""
    if len(videos) == 0:
        raise ConfigError(f"{what} has no videos ({videos.source})", hint="check --root, --list-file and --splits")
    missing = np.flatnonzero(videos.labels < 0)
    if len(missing):
        raise ConfigError(f"{what}: {len(missing)} of {len(videos)} videos have no label (first: {videos.relpath(int(missing[0]))})",
                          hint="evaluation lists need `path label` lines")


def _split_record(split: str, videos: VideoList, feats: Features, pred: torch.Tensor, correct1: torch.Tensor,
                  extra: dict[str, Any]) -> dict[str, Any]:
    labels = torch.as_tensor(videos.labels)
    K = len(videos.classes)
    return {
        "split": split,
        "top1": float(correct1.double().mean()),  # unreadable videos count as errors
        **extra,
        "videos_listed": len(videos),
        "videos_evaluated": int(feats.ok.sum()),
        "videos_unreadable": len(feats.errors),
        "videos_decoded": feats.decoded,  # decoded in this run (the rest came from the feature cache)
        "unreadable": _unreadable(videos, feats),
        "per_class_top1": dict(zip(videos.classes, per_class_accuracy(correct1, labels, K), strict=True)),
        "confusion": confusion_matrix(pred, labels, K).tolist(),
        "classes": list(videos.classes),
    }


def _direction(ctx: EvalContext, videos: VideoList, scores: torch.Tensor, ok: torch.Tensor) -> dict[str, Any]:
    """direction_accuracy / direction_videos of one split from its test scores [N, K]; nothing
    when no pairs are in effect. The accuracy is None when no test video's class has a mate."""
    if ctx.pairs is None:
        return {}
    mates = mate_indices(ctx.pairs, videos.classes, videos.source)  # [K]
    acc, count = direction_accuracy(scores, torch.as_tensor(videos.labels), ok, mates)
    return {"direction_accuracy": acc if count else None, "direction_videos": count}


def zero_shot_split(ctx: EvalContext, split: str) -> dict[str, Any]:
    """Zero-shot on one split's test videos: view-averaged softmax over the class names."""
    videos = load_split(ctx.cfg, split, "test")
    _require_labels(videos, f"split {split} test list")
    feats = _features(ctx, videos, "proj", f"zero-shot split {split}")
    classes = tuple(videos.classes)
    if classes not in ctx.classifiers:  # UCF101's and HMDB51's splits share their classes: encode once
        ctx.classifiers[classes] = class_classifier(ctx.model, classes, load_templates(ctx.cfg.templates))
    probs = zero_shot_probs(ctx.model, feats.feats, ctx.classifiers[classes])  # [N, K]
    labels = torch.as_tensor(videos.labels)
    top1 = topk_correct(probs, labels, feats.ok, 1)
    top5 = topk_correct(probs, labels, feats.ok, 5)
    pred = torch.where(feats.ok, probs.argmax(1), torch.full_like(labels, -1))
    return _split_record(split, videos, feats, pred, top1,
                         {"top5": float(top5.double().mean()), **_direction(ctx, videos, probs, feats.ok),
                          "logit_scale": logit_scale(ctx.model), "predictions": pred.tolist()})


def linear_probe_split(ctx: EvalContext, split: str) -> dict[str, Any]:
    """Linear probe on one split: fit on its readable train videos, score every test video."""
    train, test = load_split(ctx.cfg, split, "train"), load_split(ctx.cfg, split, "test")
    if tuple(train.classes) != tuple(test.classes):
        raise ConfigError(f"split {split}: the train list's classes differ from the test list's",
                          hint="both lists must use the same classes file (same names, same order)")
    _require_labels(train, f"split {split} train list")
    _require_labels(test, f"split {split} test list")
    kind = ctx.cfg.features
    ftr = _features(ctx, train, kind, f"linear-probe train {split}")
    fte = _features(ctx, test, kind, f"linear-probe test {split}")
    # One feature per video: the mean over its views (the probe is fit on clip-level features).
    xtr, xte = ftr.feats.mean(1), fte.feats.mean(1)  # [N, D]
    ytr, yte = torch.as_tensor(train.labels), torch.as_tensor(test.labels)
    fit = ftr.ok
    if int(fit.sum()) < 2:
        raise LssError(f"split {split}: only {int(fit.sum())} of {len(train)} training videos are readable",
                       hint="check the training videos with `lss data check`")
    cfg = ctx.cfg
    groups = _group_ids(cfg.dataset, train)[fit]  # [N_fit]
    result = linear_probe(xtr[fit], ytr[fit], xte, yte, len(test.classes), groups=groups, seed=0,
                          val_split=cfg.probe_val_split, l2_range=cfg.probe_l2_range, standardize=cfg.probe_standardize)
    pred = torch.where(fte.ok, result.predictions, torch.full_like(yte, -1))
    correct = (pred == yte) & fte.ok
    return _split_record(split, test, fte, pred, correct, {
        **_direction(ctx, test, result.logits, fte.ok),
        "l2": result.l2, "val_curve": {str(k): v for k, v in result.val_curve.items()},
        "val_videos": result.val_videos, "val_groups": result.val_groups,
        "features": kind, "train_videos_listed": len(train), "train_videos_used": int(fit.sum()),
        "train_videos_decoded": ftr.decoded, "train_unreadable": _unreadable(train, ftr),
        "predictions": pred.tolist()})


def _group_ids(dataset: str, videos: VideoList) -> torch.Tensor:
    """[N] int64: one id per source group of `videos` (`source_group`), numbered in order of appearance."""
    ids: dict[str, int] = {}
    return torch.tensor([ids.setdefault(source_group(dataset, videos.relpath(i)), len(ids)) for i in range(len(videos))],
                        dtype=torch.int64)


PROBE_GROUPS = {  # dataset -> what a validation group is (`source_group`)
    "ucf101": "UCF101 group gNN (one source video), the same group numbers held out in every class",
    "hmdb51": "HMDB51 source title and action (the file name without its meta tags and clip index)",
    "synthetic": "clip index (a clip and its time-reversed mate stay together)",
}


def _probe_details(cfg: EvalConfig) -> dict[str, Any]:
    """How the linear probe was fitted, in words and values (results.json `protocol_details`)."""
    lo, hi = cfg.probe_l2_range
    if cfg.probe_val_split == "grouped":
        split = ("grouped: about 20% of each class's training videos held out as whole groups, so no group "
                 f"is on both sides; every class keeps training videos; seed 0; groups: "
                 f"{PROBE_GROUPS.get(cfg.dataset, 'each video its own group')}")
    else:
        split = "stratified: 20% of each class's training videos held out one by one (groups ignored); seed 0"
    return {
        "features": cfg.features,
        "features_meaning": "pre-projection: the image tower's pooled token after ln_post, averaged over frames "
                            "(CLIP's linear probes)" if cfg.features == "pre-proj"
                            else "projected: the L2-normalised embedding in CLIP's joint space",
        "standardize": cfg.probe_standardize,
        "standardization": "features z-scored with the training videos' mean and std" if cfg.probe_standardize
                           else "none (features as the encoder gives them, as in CLIP)",
        "val_split": split,
        "l2_range": [lo, hi],
        "l2_search": f"lambda (= 1/C: sum of cross-entropies + lambda/2 ||W||^2, bias unpenalised) at every "
                     f"{COARSE_STEP:g} decades from {lo:g} to {hi:g}, then the step around the best halved until "
                     f"{FINE_STEP:g} decade (CLIP's parametric search); ties go to the stronger lambda",
        "classifier": f"multinomial logistic regression, full-batch L-BFGS (at most {MAX_ITER} iterations); "
                      "refit on all training videos with the chosen lambda, scored once on the test videos",
    }


def _protocol_details(ctx: EvalContext, protocol: str) -> dict[str, Any]:
    """What defines the numbers besides the model: frames, views, templates or probe settings."""
    details: dict[str, Any] = {
        "frames": "num_frames frames per view at the centres of equal segments (clip k of K: offset (k + 0.5) / K)",
        "preprocessing": f"short side to {ctx.model.clip.image_size} px (bicubic, antialias), "
                         f"{'centre crop' if ctx.views.num_crops == 1 else '3 crops along the long side'}, "
                         "CLIP mean/std",
    }
    if protocol == "zero-shot":
        t = load_templates(ctx.cfg.templates)
        details.update(aggregation="softmax(logit_scale x cosine) averaged over views",
                       templates={"name": t.name, "version": t.version, "sha256": t.sha256, "path": t.path,
                                  "templates": list(t.templates)})
    else:
        details.update(aggregation="features averaged over views", **_probe_details(ctx.cfg))
    if ctx.pairs is not None:
        scores = "view-averaged probabilities" if protocol == "zero-shot" else "probe logits"
        details["direction"] = {
            "definition": "test videos whose class has a time-reversal mate; correct when the class scores "
                          f"strictly above its mate ({scores}); unreadable videos count as wrong",
            **ctx.pairs.to_dict()}
    return details


def run_protocol(ctx: EvalContext, protocol: str) -> dict[str, Any]:
    """Evaluate every split; returns the results document (see `results.py` for its fields)."""
    start = time.perf_counter()
    run = zero_shot_split if protocol == "zero-shot" else linear_probe_split
    splits = [run(ctx, s) for s in split_names(ctx.cfg)]
    summary = {}
    for metric in ("top1", "top5", "direction_accuracy"):
        values = [s[metric] for s in splits if s.get(metric) is not None]
        if values:
            mean, std = mean_std(values)
            summary[metric] = {"mean": mean, "std": std}
    return {
        "protocol": protocol,
        "dataset": ctx.cfg.dataset,
        "root": ctx.cfg.root,
        "checkpoint": ctx.model.source,
        "model_id": ctx.model.model_id,
        "views": {**ctx.views.__dict__, "count": ctx.views.count, "image_size": ctx.model.clip.image_size},
        "protocol_details": _protocol_details(ctx, protocol),
        "config": to_dict(ctx.cfg),
        "feature_cache": str(ctx.cache_dir) if ctx.cache_dir is not None else None,
        "splits": splits,
        "summary": summary,
        "videos_listed": sum(s["videos_listed"] for s in splits),
        "videos_evaluated": sum(s["videos_evaluated"] for s in splits),
        "videos_unreadable": sum(s["videos_unreadable"] for s in splits),
        "seconds": round(time.perf_counter() - start, 3),
    }
