"""Zero-shot accuracy of the teacher on a held-out list while training runs (`eval.every`).

Every `eval.every` optimizer steps, and at the last step, the teacher is scored on the held-out
list; the numbers join that step's metrics.jsonl line (`eval_top1`, `eval_top5`, `eval_videos`,
`eval_unreadable`, `eval_best_step`, `eval_s`; a step evaluated off the log.every cadence is
logged too), so every line stays one logged step with its loss.
When the kept metric (`eval.metric`) beats the best so far (strictly), rank 0 writes the whole
checkpoint as `checkpoints/best` (`save_best_checkpoint`); its meta.json says metric, value and
step, and a resumed run reads the best so far back from it, so a worse later evaluation never
replaces it.

Why the teacher: it is what `lss export` writes and `lss eval` scores, so the curve is the accuracy
the exported model would have on this list; the student only serves to train it.

The scoring is evaluation's own: `lss_cli.eval.features.extract_features` decodes and encodes the
videos (without the feature cache: the weights change between evaluations) and
`lss_cli.eval.zero_shot` scores them. The class vectors are encoded once, when the run starts: the
text tower is frozen in training, so they never change. As in `lss eval`, an unreadable video
counts as an error and is reported, never dropped.

Under torch.distributed every rank evaluates its shard of the list and the features are gathered,
so all ranks compute the same numbers. That is what `extract_features` does inside a process group
anyway (its gather and barrier are collectives every rank must join, so "rank 0 evaluates, the
others wait" could not call it), and the decoding is spread over the ranks instead of idling them.

The evaluation must not change the training: its loader draws a seed from torch's global
generator, so it runs inside a fork of every RNG training uses (torch's CPU and this device's CUDA
generator, numpy's, Python's), and the losses of a run with evaluations equal those without, bit
for bit (tests/test_periodic_eval.py). The teacher's train/eval mode is restored afterwards.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lss_cli.concepts.templates import load_templates
from lss_cli.config import EvalConfig, TrainConfig, to_dict
from lss_cli.data.datasets import VideoList
from lss_cli.errors import ConfigError, LssError
from lss_cli.eval.features import Features, Views, extract_features
from lss_cli.eval.metrics import topk_correct
from lss_cli.eval.protocols import load_split, split_names
from lss_cli.eval.results import MISSING_LIMIT
from lss_cli.eval.zero_shot import class_classifier, zero_shot_probs
from lss_cli.models.artefact import VideoModel
from lss_cli.models.clip import Clip
from lss_cli.runtime.checkpoint import BEST, best_meta, save_best_checkpoint
from lss_cli.runtime.progress import log, warn
from lss_cli.train.build import Components


@dataclass
class PeriodicEval:
    """The held-out list, the model view of the teacher and the best value so far."""

    every: int  # steps between evaluations (> 0)
    metric: str  # "top1" or "top5": what checkpoints/best is kept by
    videos: VideoList  # labelled, capped to eval.max_videos
    model: VideoModel  # encoder = the run's teacher (the same module: it sees every update)
    classifier: torch.Tensor  # [K, D] class vectors, CPU
    views: Views
    batch_size: int
    num_workers: int
    ckpt_dir: Path  # the run's checkpoints/ (best is written there)
    best: float | None = None  # best value of `metric` so far
    best_step: int | None = None  # the step it was reached at (= checkpoints/best's step)

    def due(self, step: int, total: int) -> bool:
        """Evaluate after optimizer step `step` (1-based) of `total`?"""
        return step % self.every == 0 or step == total

    def evaluate(self, c: Components, step: int, epoch: int) -> dict[str, Any] | None:
        """Score the teacher after `step` (every rank calls this); returns the metrics fields, or
        None when a stop signal cut the evaluation short. A new best is saved by rank 0 as
        checkpoints/best (`epoch`: the epoch the next step belongs to, as in every checkpoint)."""
        tic = time.perf_counter()
        try:
            with _rngs_kept(c.device), _eval_mode(self.model.encoder):
                feats = extract_features(self.model, self.videos, self.views, kind="proj", cache_dir=None,
                                         batch_size=self.batch_size, num_workers=self.num_workers, device=c.device,
                                         desc=f"eval at step {step}")
        except KeyboardInterrupt:
            # extract_features turns SIGTERM into KeyboardInterrupt (its Ctrl-C path). During training
            # a stop signal means "finish the step, save, exit 130" (loop.py's handlers, which get
            # SIGINT and SIGUSR1 directly): give SIGTERM back to them and skip this evaluation.
            signal.raise_signal(signal.SIGTERM)
            return None
        scores = self._scores(feats)
        value = scores[f"eval_{self.metric}"]
        improved = self.improves(value)
        if improved:
            self.best, self.best_step = value, step
            if c.dist.is_main:
                save_best_checkpoint(self.ckpt_dir, step=step, epoch=epoch, student=c.student_raw, teacher=c.teacher,
                                     state=c.loss_fn.state_dict(), optimizer=c.optimizer,
                                     meta={"config": to_dict(c.cfg), "header": c.header,
                                           "best": {"metric": self.metric, "value": value, "step": step,
                                                    "videos": len(self.videos)}})
        fields = {**scores, "eval_best_step": self.best_step, "eval_s": time.perf_counter() - tic}
        if c.dist.is_main:
            self._report(step, fields, feats, improved)
        return fields

    def improves(self, value: float) -> bool:
        """Does `value` of the kept metric beat the best so far? Strictly: a tie keeps the earlier step."""
        return self.best is None or value > self.best

    def _scores(self, feats: Features) -> dict[str, Any]:
        probs = zero_shot_probs(self.model, feats.feats, self.classifier)  # [N, K]
        labels = torch.as_tensor(self.videos.labels)
        return {"eval_top1": float(topk_correct(probs, labels, feats.ok, 1).double().mean()),
                "eval_top5": float(topk_correct(probs, labels, feats.ok, 5).double().mean()),
                "eval_videos": len(self.videos), "eval_unreadable": len(feats.errors)}

    def _report(self, step: int, fields: dict[str, Any], feats: Features, improved: bool) -> None:
        best = f"new best, saved as {self.ckpt_dir / BEST}" if improved else \
            f"best {self.metric} {self.best:.4f} at step {self.best_step}"
        log(f"eval at step {step}: top-1 {fields['eval_top1']:.4f}, top-5 {fields['eval_top5']:.4f} on "
            f"{fields['eval_videos']} held-out videos ({fields['eval_s']:.1f} s); {best}")
        if feats.errors:
            i, why = next(iter(sorted(feats.errors.items())))
            warn(f"eval at step {step}: {len(feats.errors)} of {len(self.videos)} held-out videos are unreadable and "
                 f"count as errors (first: {self.videos.relpath(i)}: {why})")

    def summary(self) -> dict[str, Any]:
        """The training summary's lines about the best evaluation (none before the first)."""
        if self.best_step is None:
            return {}
        return {"best_eval": f"{self.metric} {self.best:.4f} at step {self.best_step}",
                "best_checkpoint": str(self.ckpt_dir / BEST)}


def build_periodic_eval(cfg: TrainConfig, clip: Clip, teacher: torch.nn.Module, device: torch.device,
                        ckpt_dir: Path) -> PeriodicEval | None:
    """The run's periodic evaluation (None when `eval.every` is 0): the held-out list checked, the
    class vectors encoded, and the best so far read from `ckpt_dir/best` (a resumed run). Keeps
    `clip` (on the CPU) for its logit scale and preprocessing."""
    e = cfg.eval
    if e.every == 0:
        return None
    videos = held_out_videos(cfg)
    model = VideoModel(encoder=teacher, clip=clip, source="the training teacher", model_id="training-teacher", meta={})
    ev = PeriodicEval(every=e.every, metric=e.metric, videos=videos, model=model,
                      classifier=_class_vectors(model, videos.classes, e.templates, device),
                      views=Views(num_frames=e.num_frames), batch_size=e.batch_size, num_workers=e.num_workers,
                      ckpt_dir=ckpt_dir)
    ev.best, ev.best_step = _best_so_far(ckpt_dir, e.metric)
    return ev


def _best_so_far(ckpt_dir: Path, metric: str) -> tuple[float | None, int | None]:
    """(value, step) recorded in checkpoints/best's meta.json; (None, None) when there is none, it
    was kept by another metric, or its record is unreadable (the next evaluation replaces it then)."""
    best = (best_meta(ckpt_dir) or {}).get("best")
    try:
        if best["metric"] == metric:
            return float(best["value"]), int(best["step"])
    except (KeyError, TypeError, ValueError):
        pass
    return None, None


def held_out_config(cfg: TrainConfig) -> EvalConfig:
    """The held-out list as `lss eval` would read it (`eval.dataset` / `eval.root` default to the
    training data's)."""
    e = cfg.eval
    return EvalConfig(dataset=e.dataset or cfg.data.dataset, root=e.root or cfg.data.root, list_file=e.list_file,
                      splits=None if e.split is None else [e.split], templates=e.templates, num_frames=e.num_frames, batch_size=e.batch_size,
                      num_workers=e.num_workers)


def held_out_videos(cfg: TrainConfig) -> VideoList:
    """The labelled held-out list, capped to `eval.max_videos` evenly spaced videos (a list sorted
    by class keeps every class). Refused before training starts when it has no videos, an
    unlabelled video, or more than `MISSING_LIMIT` of its files missing (a wrong eval.root)."""
    off = "or set eval.every=0 to train without held-out evaluations"
    try:
        held_out = held_out_config(cfg)
        videos = load_split(held_out, split_names(held_out)[0], "test")
    except LssError as e:
        raise ConfigError(f"eval: the held-out list cannot be read: {e.message}",
                          hint=f"{e.hint}; {off}" if e.hint else off) from None
    what = f"eval: the held-out list {videos.source}"
    keys = f"check eval.dataset, eval.root and eval.list_file, {off}"
    if len(videos) == 0:
        raise ConfigError(f"{what} has no videos", hint=keys)
    unlabelled = np.flatnonzero(videos.labels < 0)
    if len(unlabelled):
        raise ConfigError(f"{what}: {len(unlabelled)} of {len(videos)} videos have no label "
                          f"(first: {videos.relpath(int(unlabelled[0]))})",
                          hint=f"zero-shot accuracy needs a labelled list (`path label` lines): {keys}")
    cap = cfg.eval.max_videos
    if cap is not None and len(videos) > cap:
        videos = videos.subset(np.unique(np.linspace(0, len(videos) - 1, cap).round().astype(np.int64)))
    missing = [i for i in range(len(videos)) if not os.path.isfile(videos.path(i))]
    if len(missing) > MISSING_LIMIT * len(videos):
        raise LssError(f"{what}: {len(missing)} of {len(videos)} videos are missing under {videos.root!r} "
                       f"(first: {videos.relpath(missing[0])}); training was not started",
                       hint=f"eval.root is the folder the list's paths are relative to: {keys}")
    return videos


def _class_vectors(model: VideoModel, classes: tuple[str, ...], templates: str, device: torch.device) -> torch.Tensor:
    """[K, D] on the CPU, encoded on `device` (thousands of prompts are slow on a CPU); CLIP goes back
    to the CPU afterwards, where the run keeps it."""
    model.clip.model.to(device)
    try:
        return class_classifier(model, classes, load_templates(templates))
    finally:
        model.clip.model.to("cpu")
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the text tower's blocks: the training needs the memory more


@contextmanager
def _rngs_kept(device: torch.device) -> Iterator[None]:
    """Every RNG training draws from is, afterwards, as it was before."""
    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


@contextmanager
def _eval_mode(module: torch.nn.Module) -> Iterator[None]:
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)
