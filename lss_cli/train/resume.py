"""Continuing a run (`--resume`) and starting one over (`--overwrite`).

Which checkpoint: the newest `checkpoints/step_*` whose every file loads. Newer ones that are
missing, damaged or tampered with are skipped with a warning naming each and why; with none
intact the resume is refused, naming what was found.

Which config: a resume is exact only with the config its checkpoint was trained with. Keys that
change what is computed (model, data, views, loss, optim, teacher, run.seed) must match the
checkpoint's saved config; a resume that changes one is refused before any work, naming each
change, unless `run.allow_config_change` accepts it knowingly (the run is then no longer exact,
and the run's previous config.yaml is kept next to the new one). Keys that only say where and how
the run executes or what it logs (`HARMLESS`) may change freely.

`--overwrite` starts clean: the old run's metrics, TensorBoard events, W&B run and checkpoints are moved
into a `replaced-<time>/` folder of the run dir (never deleted), so nothing of the old run mixes
into the new one. With `--resume` it does nothing more than let the resume into the run dir.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
from pathlib import Path
from typing import Any

from lss_cli.config import TrainConfig, to_dict
from lss_cli.errors import ConfigError, LssError
from lss_cli.runtime.checkpoint import Checkpoint, load_newest_intact, set_rng_state
from lss_cli.runtime.metrics import WANDB_ID_FILE
from lss_cli.runtime.progress import log, warn
from lss_cli.train.build import Components

# Keys (or section prefixes) a resume may change: devices, compilation, memory, decoding workers,
# logging and checkpoint cadence, held-out evaluation (`eval.*`: it runs with the RNGs forked, so
# the training is the same with or without it). None of them changes the numbers a step computes (beyond the
# last-bit differences between devices or compiled kernels), and each is a reason to resume
# elsewhere: a smaller GPU, a node with fewer cores.
HARMLESS = ("run.output_dir", "run.name", "run.device", "run.overwrite", "run.resume", "run.allow_config_change",
            "log.", "eval.", "data.num_workers", "data.decode_timeout", "model.compile", "model.grad_checkpointing")

# What --overwrite moves aside: what a training run appends to or reads back on resume.
OLD_RUN_OUTPUTS = ("metrics.jsonl", "checkpoints", "events.out.tfevents.*", "wandb", WANDB_ID_FILE,
                   "config.until-step-*.yaml")


# --------------------------------------------------------------------------------------------
# --resume
# --------------------------------------------------------------------------------------------


def resume_inputs(config: Path | None, output_dir: str | Path | None,
                  resume: bool) -> tuple[Path | None, str | Path | None]:
    """(config file, run dir) of `lss train`: with --resume, a run dir given as the config
    (`lss train RUN --resume`) or as --output-dir alone (`lss train --resume -o RUN`) stands for the
    run's own config.yaml, so a resume needs no more than the run dir (overrides on top are checked
    against the checkpoint's config like any resume)."""
    if config is not None and config.is_dir():
        if not resume:
            raise ConfigError(f"{config} is a directory, not a config file",
                              hint=f"to continue the run in it: lss train {config} --resume")
        return config / "config.yaml", output_dir or config
    if resume and config is None and output_dir is not None and (Path(output_dir) / "config.yaml").is_file():
        return Path(output_dir) / "config.yaml", output_dir
    return config, output_dir



def choose_checkpoint(run_dir: Path, *, announce: bool) -> Checkpoint:
    """The newest intact checkpoint of `run_dir` (loaded on the CPU); `announce`: warn about the
    ones skipped (rank 0 only, so a multi-process run says it once)."""
    ckpt_dir = run_dir / "checkpoints"
    ck, skipped = load_newest_intact(ckpt_dir)
    found = "; ".join(f"{name}: {reason}" for name, reason in skipped)
    if ck is None and not skipped:
        raise LssError(f"--resume: no checkpoint in {ckpt_dir}",
                       hint="start a new run without --resume (with --overwrite to reuse this run dir: "
                       "its old files are moved aside, not deleted)")
    if ck is None:
        raise LssError(f"--resume: no intact checkpoint in {ckpt_dir} ({found})",
                       hint="restore a checkpoint from a backup, or start over with --overwrite "
                       "(the damaged checkpoints are moved aside, not deleted)")
    if skipped and announce:
        warn(f"--resume: skipped {found}; resuming from {ck.path.name}, the newest intact checkpoint")
    return ck


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    """(key, saved value, current value) of every key that differs and matters for exactness.
    Keys absent from `saved` (added to the config after the checkpoint was written) are ignored."""
    old, new = _flat(_plain(saved)), _flat(_plain(current))
    return [(key, old[key], new[key]) for key in sorted(new)
            if key in old and old[key] != new[key] and not key.startswith(HARMLESS)]


def check_config(cfg: TrainConfig, ck: Checkpoint, run_dir: Path, *, announce: bool) -> bool:
    """Refuse a resume that changes the config (ConfigError) unless `run.allow_config_change`;
    True when a change was accepted."""
    changes = config_changes(ck.meta.get("config") or {}, to_dict(cfg))
    if not changes:
        return False
    listed = "; ".join(f"{key}: {_show(old)} -> {_show(new)}" for key, old, new in changes)
    if not cfg.run.allow_config_change:
        raise ConfigError(
            f"--resume: the config differs from the one {ck.path.name} was trained with, so the resume "
            f"would not be exact: {listed}",
            hint=f"resume with the run's own config (lss train {run_dir / 'config.yaml'} --output-dir {run_dir} "
            "--resume), or accept the change knowingly with --allow-config-change")
    if announce:
        warn(f"--resume with a changed config (--allow-config-change): {listed}; the run is no longer an "
             "exact continuation")
    return True


def keep_previous_config(run_dir: Path, step: int) -> None:
    """Before an accepted config change overwrites config.yaml, keep the old one beside it."""
    old = run_dir / "config.yaml"
    if old.is_file():
        kept = run_dir / f"config.until-step-{step:08d}.yaml"
        shutil.copy2(old, kept)
        log(f"the config of steps 1-{step} is kept as {kept}")


def apply_checkpoint(c: Components, ck: Checkpoint) -> None:
    """Load `ck` into the components and restore the RNGs. A state that does not fit (an accepted
    change of the model or the concept bank) is an LssError naming the checkpoint."""
    try:
        c.student_raw.load_state_dict(ck.student)
        c.teacher.load_state_dict(ck.teacher)
        c.loss_fn.load_state_dict(ck.state, strict=False)
        c.optimizer.load_state_dict(ck.optim)
    except (RuntimeError, ValueError, KeyError) as e:
        raise LssError(f"checkpoint {ck.path} does not fit this run's model or optimizer: {_summary(e)}",
                       hint="resume with the config it was trained with (its model and concept bank), "
                       "or start a new run") from None
    set_rng_state(ck.rng)


# --------------------------------------------------------------------------------------------
# --overwrite
# --------------------------------------------------------------------------------------------


def set_aside_previous_run(run_dir: Path) -> Path | None:
    """Move the outputs of an earlier run in `run_dir` into `run_dir/replaced-<time>/`; the folder
    used, or None when there was nothing to move."""
    old = sorted({p for pattern in OLD_RUN_OUTPUTS for p in run_dir.glob(pattern)})
    if not old:
        return None
    dest = _fresh_dir(run_dir, "replaced-" + _dt.datetime.now().strftime("%Y%m%d-%H%M%S"))
    for path in old:
        path.rename(dest / path.name)
    names = ", ".join(p.name + ("/" if (dest / p.name).is_dir() else "") for p in old)
    log(f"--overwrite: moved the previous run's {names} to {dest} (delete it when no longer needed)")
    return dest


def _fresh_dir(parent: Path, name: str) -> Path:
    for n in range(1, 1000):
        path = parent / (name if n == 1 else f"{name}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise LssError(f"{parent}: too many replaced-* folders", hint="delete the old ones")


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _plain(d: dict[str, Any]) -> dict[str, Any]:
    # A checkpoint's config went through JSON (tuples became lists); compare like with like.
    return json.loads(json.dumps(d, default=str))


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _summary(e: Exception, limit: int = 300) -> str:
    """torch's state-dict errors span lines ("Error(s) in loading ...:\n\tUnexpected key(s) ..."):
    one line, cut at `limit` characters."""
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _show(value: Any) -> str:
    return json.dumps(value)


__all__ = ["HARMLESS", "apply_checkpoint", "check_config", "choose_checkpoint", "config_changes",
           "keep_previous_config", "set_aside_previous_run"]
