"""metrics.jsonl: one JSON object per logged step, flushed as written so a crash loses nothing."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from lss_cli.errors import ConfigError


def tensorboard_writer_class():
    """torch's SummaryWriter, or a ConfigError saying how to get it (checked before any heavy work)."""
    try:
        # Imported here, not at the top: tensorboard is an optional extra.
        from torch.utils.tensorboard import SummaryWriter  # noqa: PLC0415
    except ImportError:
        raise ConfigError("log.tensorboard=true needs the tensorboard package",
                          hint="pip install 'lss-cli[tensorboard]', or set log.tensorboard=false") from None
    return SummaryWriter


class MetricsWriter:
    """Appends records to metrics.jsonl; with `tensorboard`, mirrors numeric fields as scalars
    (x axis = the record's `step`) into the same folder."""

    def __init__(self, path: str | Path, enabled: bool = True, tensorboard: bool = False):
        self.path = Path(path)
        self.enabled = enabled
        self._f = open(self.path, "a") if enabled else None
        self._tb = tensorboard_writer_class()(log_dir=str(self.path.parent)) if enabled and tensorboard else None

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

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

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
