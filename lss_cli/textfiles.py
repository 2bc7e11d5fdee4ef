"""The one way the package reads a user's text file: UTF-8, a leading BOM dropped, errors that name the file.

Label and class files, video and split lists, extra words and sentences, pairs files, configs and
prompt YAMLs all come through here. Editors on Windows often start a UTF-8 file with a byte-order
mark; kept, it would glue itself onto the first line ("\\ufeffjumping" sent to the LLM, the first
listed video "missing"). A file in another encoding is an `InputFileError` naming the file and the
first byte that is not UTF-8, never a `UnicodeDecodeError` escaping as a crash.
"""

from __future__ import annotations

import codecs
from pathlib import Path

from lss_cli.errors import InputFileError

BOM = "\ufeff"
_SAVE_AS_UTF8 = "save it as UTF-8 (an editor's \"Save as... / Encoding: UTF-8\", or `iconv -t UTF-8`)"


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of `path` (UTF-8, without a leading BOM). `what` names the file in errors ("label file")."""
    return decode_text(read_bytes(path, what), path, what)


def read_bytes(path: str | Path, what: str = "file") -> bytes:
    """The bytes of `path`; a missing or unreadable file is an InputFileError naming it."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise InputFileError(f"{what} not found: {path}", hint="check the path") from None
    except OSError as e:  # a folder, no permission, an I/O error
        raise InputFileError(f"cannot read {what} {path}: {e.strerror or e}",
                             hint="name a readable text file") from None


def decode_text(data: bytes, path: str | Path, what: str = "file") -> str:
    """`data` read from `path` as UTF-8 text without a leading BOM (for callers that also need the bytes)."""
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputFileError(f"{what} {path} is UTF-16 text, not UTF-8", hint=_SAVE_AS_UTF8)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise InputFileError(f"{what} {path} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
                             f"(line {line}) is not valid UTF-8", hint=_SAVE_AS_UTF8) from None
    return text.removeprefix(BOM)
