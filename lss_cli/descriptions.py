"""The descriptions file: JSON Lines, one record per class.

Written by `lss describe` (and by the synthetic dataset generator), read by `lss build-concepts`.
Records are appended and flushed one at a time, so a crash loses at most the record being written;
a torn last line is detected on reading and that class is simply done again.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lss_cli.errors import InputFileError


@dataclass
class DescriptionRecord:
    category: str  # class name, exactly as in the label set
    descriptions: list[str]  # visual descriptions of the action
    model: str  # LLM that wrote them ("hand-written" for the synthetic set)
    prompt_file: str | None = None  # prompt template used (None when hand-written)
    prompt_sha256: str | None = None  # sha256 of that template file
    temperature: float | None = None  # sampling temperature
    created: str = field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    usage: dict[str, int] | None = None  # token usage of the call(s) that produced this record

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> DescriptionRecord:
        if not isinstance(obj, dict):
            raise InputFileError(f"{where}: expected a JSON object")
        missing = [k for k in ("category", "descriptions", "model") if k not in obj]
        if missing:
            raise InputFileError(f"{where}: record lacks {', '.join(missing)}")
        if not isinstance(obj["descriptions"], list) or not all(isinstance(d, str) for d in obj["descriptions"]):
            raise InputFileError(f"{where}: 'descriptions' must be a list of strings")
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def append_record(path: str | Path, record: DescriptionRecord) -> None:
    """Append one record as a single write of one full line, flushed to disk."""
    line = json.dumps(asdict(record), ensure_ascii=False) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def write_records(path: str | Path, records: Iterable[DescriptionRecord]) -> None:
    tmp = Path(path).with_suffix(".jsonl.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(asdict(r), ensure_ascii=False) + "\n")
    os.replace(tmp, path)


def read_records(path: str | Path) -> tuple[list[DescriptionRecord], int]:
    """All complete records, and how many torn/unparseable lines were skipped.

    A line that does not parse is treated as an interrupted write (only the last line can be torn
    by our writer; anything else is reported by the count). Later records for the same category
    replace earlier ones.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"descriptions file not found: {path}", hint="create it with `lss describe`")
    by_cat: dict[str, DescriptionRecord] = {}
    bad = 0
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        rec = DescriptionRecord.from_json(obj, f"{path}:{lineno}")
        by_cat[rec.category] = rec
    return list(by_cat.values()), bad
