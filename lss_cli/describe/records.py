"""The descriptions file: JSON Lines, one record per class.

Written by `lss describe` (and by the synthetic dataset generator), read by `lss build-concepts`.
Records are appended and flushed one at a time, so a crash loses at most the record being written;
a torn last line is detected on reading and that class is simply done again.

Two kinds of line share the file: a description record (no `status` key; this is all the synthetic
dataset writes) and a failure record (`"status": "failed"`, with the reason) left by `lss describe`
for a class it gave up on. Failure records are provenance only: `read_records` skips them, and a
class that has one is simply not done, so the next run retries it.

A description record needs only `category` and `descriptions`: a file written by hand or by
another tool is read as well. The provenance `lss describe` adds (model, prompt, temperature, what
was sent, when) is recorded as unknown where missing: `model` is "unknown", the rest None.
Unknown keys are ignored, so files with fields added later (such as `request`) stay readable.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lss_cli.errors import InputFileError, LssError
from lss_cli.runtime.outputs import os_reason, write_text_atomic
from lss_cli.textfiles import BOM

UNKNOWN = "unknown"  # the model of a record whose writer did not say (hand-written, another tool)


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


@dataclass
class DescriptionRecord:
    category: str  # class name, exactly as in the label set
    descriptions: list[str]  # visual descriptions of the action
    model: str = UNKNOWN  # LLM that wrote them ("hand-written" for the synthetic set, UNKNOWN if not given)
    prompt_file: str | None = None  # prompt template used (None: none recorded, e.g. hand-written)
    prompt_sha256: str | None = None  # sha256 of that template file (None: not made by `lss describe`)
    temperature: float | None = None  # sampling temperature sent (None: none sent, or not recorded)
    created: str | None = field(default_factory=_now)  # when written (None: not recorded)
    usage: dict[str, int] | None = None  # token usage of the call(s) that produced this record
    request: dict[str, Any] | None = None  # sampling parameters as sent (RequestShape.provenance); None: not recorded

    @property
    def has_provenance(self) -> bool:
        """Made by `lss describe`, which always records its prompt; hand-written records do not."""
        return self.prompt_sha256 is not None

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> DescriptionRecord:
        if not isinstance(obj, dict):
            raise InputFileError(f"{where}: expected a JSON object")
        missing = [k for k in ("category", "descriptions") if k not in obj]
        if missing:
            raise InputFileError(f"{where}: record lacks {', '.join(missing)}",
                                 hint='a record needs "category" and "descriptions" (a list of strings)')
        if not isinstance(obj["category"], str):
            raise InputFileError(f"{where}: 'category' must be a string")
        if not isinstance(obj["descriptions"], list) or not all(isinstance(d, str) for d in obj["descriptions"]):
            raise InputFileError(f"{where}: 'descriptions' must be a list of strings")
        if not isinstance(obj.get("model") or UNKNOWN, str):
            raise InputFileError(f"{where}: 'model' must be a string")
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        # Provenance the writer left out is unknown, not "now" nor a default model.
        return cls(**{**known, "model": known.get("model") or UNKNOWN, "created": known.get("created")})


FAILED = "failed"  # value of `status` in a failure record


@dataclass
class FailedRecord:
    """A class `lss describe` gave up on, and why. Not a result: the next run retries the class."""

    category: str  # class name, exactly as in the label set
    error: str  # the last reason (invalid reply, non-retryable HTTP error, retries exhausted)
    model: str  # model that was asked
    prompt_file: str | None = None  # prompt template used
    prompt_sha256: str | None = None  # sha256 of that template file
    created: str = field(default_factory=_now)  # when written
    usage: dict[str, int] | None = None  # tokens and requests spent on the class anyway
    status: str = FAILED  # marks the line as a failure record
    request: dict[str, Any] | None = None  # sampling parameters as sent (RequestShape.provenance); None: not recorded

    @classmethod
    def from_json(cls, obj: dict[str, Any], where: str) -> FailedRecord:
        missing = [k for k in ("category", "error", "model") if k not in obj]
        if missing:
            raise InputFileError(f"{where}: failure record lacks {', '.join(missing)}")
        return cls(**{k: v for k, v in obj.items() if k in cls.__dataclass_fields__})


@dataclass
class DescriptionsState:
    """Everything in a descriptions file: what is done, what failed last, what could not be read."""

    records: dict[str, DescriptionRecord] = field(default_factory=dict)  # category -> its (latest) record
    failed: dict[str, FailedRecord] = field(default_factory=dict)  # category -> latest failure, only for classes with no record
    bad_lines: int = 0  # torn or unparseable lines (skipped; their classes are not done)


def _line(record: DescriptionRecord | FailedRecord) -> str:
    return json.dumps(asdict(record), ensure_ascii=False) + "\n"


def append_record(path: str | Path, record: DescriptionRecord | FailedRecord) -> None:
    """Append one record as a single write of one full line, flushed to disk.

    If the file ends in a torn line (a crash mid-write), a newline is written first so the new
    record is never glued onto the broken one.
    """
    line = _line(record)
    try:
        with open(path, "a+b") as f:
            if f.tell() > 0:
                f.seek(-1, os.SEEK_END)
                if f.read(1) != b"\n":
                    line = "\n" + line
            f.write(line.encode("utf-8"))  # append mode: always at the end, whatever the read position
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk or a revoked permission is the user's to fix, not a bug
        # What is already in the file stays valid: a torn last line is cut off by the next run.
        raise LssError(f"could not append the record of {record.category!r} to {path}: {os_reason(e)}",
                       hint="free disk space or make the file writable, then rerun the same command: "
                            "the classes already written are kept and skipped") from None


def repair_tail(path: str | Path) -> str | None:
    """Make the file end on a complete line; return the torn text removed (None if nothing was torn).

    A last line without its newline is either a complete record whose newline was lost (kept; the
    newline is added) or a write cut short by a crash (removed: it is no result, and its class is
    done again).
    """
    path = Path(path)
    return _repair_tail(path, path.read_bytes() if path.is_file() else b"")[1]


def _repair_tail(path: Path, data: bytes) -> tuple[bytes, str | None]:
    """`repair_tail` on the file's bytes `data`: (the bytes the file holds now, the torn text or None)."""
    if not data or data.endswith(b"\n"):
        return data, None
    start = data.rfind(b"\n") + 1
    tail = data[start:]
    if _parse_line(tail.decode("utf-8", errors="replace"), f"{path}:last line") is not None:
        with open(path, "ab") as f:
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
        return data + b"\n", None
    with open(path, "r+b") as f:
        f.truncate(start)
        f.flush()
        os.fsync(f.fileno())
    return data[:start], tail.decode("utf-8", errors="replace")


def repair_and_read_state(path: str | Path) -> tuple[DescriptionsState, str | None]:
    """`repair_tail`, then `read_state` of the repaired file, reading it once: (state, torn text or
    None). For the one writer (under its lock) before it appends; an absent file is empty."""
    path = Path(path)
    if not path.is_file():
        return DescriptionsState(), None
    data, torn = _repair_tail(path, path.read_bytes())
    return _parse_state(data, path), torn


def write_records(path: str | Path, records: Iterable[DescriptionRecord]) -> None:
    """Write a whole file at once (temp file + fsync + rename)."""
    write_text_atomic(path, "".join(_line(r) for r in records))


def read_state(path: str | Path) -> DescriptionsState:
    """Parse the whole file: successful records, failures of classes still not done, bad lines.

    A line that does not parse is treated as an interrupted write and counted. Later records for
    the same category replace earlier ones; a success is never undone by a failure record.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"descriptions file not found: {path}", hint="create it with `lss describe`")
    return _parse_state(path.read_bytes(), path)


def _parse_state(data: bytes, path: Path) -> DescriptionsState:
    """`read_state` on the file's bytes."""
    records: dict[str, DescriptionRecord] = {}
    failed: dict[str, FailedRecord] = {}
    bad = 0
    for lineno, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        if not line.strip():
            continue
        rec = _parse_line(line, f"{path}:{lineno}")
        if rec is None:
            bad += 1
        elif isinstance(rec, FailedRecord):
            if rec.category not in records:
                failed[rec.category] = rec
        else:
            records[rec.category] = rec
            failed.pop(rec.category, None)
    return DescriptionsState(records, failed, bad)


def read_records(path: str | Path) -> tuple[list[DescriptionRecord], int]:
    """All complete description records, and how many torn/unparseable lines were skipped.

    Failure records are skipped (they are not results) and not counted as bad lines. Later
    records for the same category replace earlier ones.
    """
    state = read_state(path)
    return list(state.records.values()), state.bad_lines


def _parse_line(line: str, where: str) -> DescriptionRecord | FailedRecord | None:
    """One line -> a record; None if it is not JSON (a torn write). A JSON line that is not a
    valid record is an error naming the line: that is someone else's file, not a crash."""
    try:
        obj = json.loads(line.removeprefix(BOM))  # a BOM only ever starts the file, so its first line
    except json.JSONDecodeError:
        return None
    if isinstance(obj, dict) and obj.get("status") == FAILED:
        return FailedRecord.from_json(obj, where)
    return DescriptionRecord.from_json(obj, where)
