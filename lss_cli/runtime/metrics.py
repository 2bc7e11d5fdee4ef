"""metrics.jsonl: one JSON object per logged step, flushed as written so a crash loses nothing;
optionally mirrored into TensorBoard events and a Weights & Biases run.

This is the one module that imports tensorboard (through torch) and wandb, both optional extras.
"""

from __future__ import annotations

import json
import math
import os
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lss_cli.errors import ConfigError
from lss_cli.runtime.outputs import write_text_atomic


def tensorboard_writer_class():
    """torch's SummaryWriter, or a ConfigError saying how to get it (checked before any heavy work)."""
    try:
        # Imported here, not at the top: tensorboard is an optional extra.
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        raise ConfigError("log.tensorboard=true needs the tensorboard package",
                          hint="pip install 'lss-cli[tensorboard]', or set log.tensorboard=false") from None
    return SummaryWriter


def wandb_module():
    """The wandb package, or a ConfigError saying how to get it (checked before any heavy work)."""
    try:
        import wandb  # noqa: PLC0415  (optional extra)
    except ImportError:
        raise ConfigError("log.wandb=true needs the wandb package",
                          hint="pip install 'lss-cli[wandb]', or set log.wandb=false") from None
    return wandb


# The run dir's W&B run id: a resumed (or requeued) run appends to the same W&B run.
WANDB_ID_FILE = "wandb-run-id"


@dataclass
class WandbRun:
    """Where a W&B run goes. Online or offline is W&B's own setting (WANDB_MODE=offline on nodes
    without internet, then `wandb sync <run dir>/wandb/offline-run-*`)."""

    project: str  # W&B project
    name: str  # run name shown in W&B (the run dir's name)
    config: dict[str, Any]  # the resolved training config


def _start_wandb(run: WandbRun, run_dir: Path) -> Any:
    wandb = wandb_module()
    id_file = run_dir / WANDB_ID_FILE
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = secrets.token_hex(8)  # W&B run ids are short strings of [a-z0-9]
        write_text_atomic(id_file, run_id + "\n")
    handle = wandb.init(project=run.project, name=run.name, id=run_id, resume="allow", dir=str(run_dir),
                        config=run.config)
    # Steps are a logged field, not W&B's own step counter: a resumed run logs again the steps after
    # its checkpoint, and W&B drops values whose own step goes backwards.
    handle.define_metric("step")
    handle.define_metric("*", step_metric="step")
    return handle


class MetricsWriter:
    """Appends records to metrics.jsonl; with `tensorboard`, mirrors numeric fields as scalars
    (x axis = the record's `step`) into the same folder; with `wandb`, logs them to that W&B run."""

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard: bool = False,
                 wandb: WandbRun | None = None):
        self.path = Path(path)
        self.enabled = enabled
        self._f = open(self.path, "a") if enabled else None
        self._tb = tensorboard_writer_class()(log_dir=str(self.path.parent)) if enabled and tensorboard else None
        self._wandb = _start_wandb(wandb, self.path.parent) if enabled and wandb is not None else None

    def write(self, record: dict[str, Any]) -> None:
        if self._f is None:
            return
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        self._f.write(json.dumps(clean) + "\n")
        self._f.flush()
        os.fsync(self._f.fileno())
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, global_step=record.get("step"))
        if self._wandb is not None:
            self._wandb.log({k: v for k, v in clean.items() if isinstance(v, (int, float))})

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None

    def __enter__(self) -> MetricsWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Read metrics.jsonl, ignoring a torn last line (a crash mid-write)."""
    records = []
    for line in Path(path).read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
