"""Every write of an output file, and what a user needs when one cannot be written.

Output files are written atomically: a temporary file in the same folder, fsync, then a rename over
the final name, so a reader or a crash never meets half a file. The file gets the mode the umask
gives a new file. `write_output` adds what a user needs when an output cannot be written (read-only
folder, full disk): the output is saved elsewhere and the error says where; `check_output` finds an
unwritable location before the heavy work.

Standard library only: commands that write no tensors (`lss describe`) never pay for importing
torch. Safetensors files go through `lss_cli.runtime.tensor_io.save_safetensors`.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
import secrets
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from lss_cli.errors import ConfigError, LssError


# --------------------------------------------------------------------------------------------
# Atomic writes
# --------------------------------------------------------------------------------------------
def open_temp(path: Path) -> tuple[Path, int]:
    """A new temporary file beside `path` (`.<name>.<random>.tmp-<pid>`; the feature cache's
    clean-up of killed writers reads the pid at the end), opened for writing. Created with 0o666, so
    the kernel applies the umask (and a default ACL of the folder) as for any new file."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp-{os.getpid()}")
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable; a platform that cannot open folders skips it."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def replacing(path: Path) -> Iterator[tuple[Path, int]]:
    """A new temporary file beside `path` (its open descriptor, umask mode) that replaces `path`
    when the block ends without an error; on any error it is removed and `path` is as it was."""
    tmp, fd = open_temp(path)
    try:
        yield tmp, fd
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def write_atomic(path: str | Path, fill: Callable[[IO[bytes]], object]) -> Path:
    """Write `path` through `fill(binary file)` atomically (temp file in the same folder, fsync,
    rename), with the umask's mode. The folder must exist. On any error the temp file is removed
    and `path` is as it was."""
    path = Path(path)
    with replacing(path) as (_, fd), os.fdopen(fd, "wb") as f:
        fill(f)
        f.flush()
        os.fsync(f.fileno())
    return path


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; see `write_atomic`."""
    data = text.encode("utf-8")
    return write_atomic(path, lambda f: f.write(data))


# --------------------------------------------------------------------------------------------
# Outputs a user named (--out, --report, ...): checked early, never lost
# --------------------------------------------------------------------------------------------
def os_reason(e: OSError) -> str:
    """An OSError in a few words ("Permission denied", "No space left on device")."""
    return e.strerror or type(e).__name__


def _space_or_access_hint(e: OSError, option: str) -> str:
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"free some disk space, or pass {option} on another disk"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"pass {option} in a folder you can write to"
    return f"check {option}"


def check_output(path: str | Path, what: str, option: str = "--out") -> Path:
    """Before the heavy work: make the folder of output `path` and check a file can be created
    there (a test file, removed at once), so a read-only or missing folder fails now, not after."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path} is a directory, not a file for the {what}",
                          hint=f"give a file path for {option}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, fd = open_temp(path)
        os.close(fd)
        tmp.unlink()
    except OSError as e:
        raise ConfigError(f"cannot write the {what} to {path}: {os_reason(e)}",
                          hint=_space_or_access_hint(e, option)) from None
    return path


def check_output_dir(folder: str | Path, what: str, option: str = "--out") -> Path:
    """`check_output` for an output folder: create it and check a file can be created in it."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ConfigError(f"{option} {folder} is a file, not a folder for the {what}", hint=f"give a folder for {option}")
    check_output(folder / "probe", what, option)
    return folder


def _fallbacks(path: Path, fallback_dir: str | Path | None) -> Iterator[Path]:
    """Where an output goes when its own place refuses it: the run dir (when it is another
    folder), then a new private folder in the system temp dir."""
    if fallback_dir is not None and Path(fallback_dir).resolve() != path.parent.resolve():
        yield Path(fallback_dir) / path.name
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    yield Path(tempfile.mkdtemp(prefix=f"lss-{stamp}-")) / path.name


def write_output(path: str | Path, write: Callable[[Path], object], *, what: str, option: str = "--out",
                 fallback_dir: str | Path | None = None) -> Path:
    """Write an output with `write(path)` (an atomic writer above), creating its folder.

    When that fails with an OSError (permission, read-only or full disk), the output is written to
    a fallback (`fallback_dir`, else a temp folder) and an LssError says where it WAS saved; the
    work that made it is never lost silently. Returns `path` when written there."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(path)
        return path
    except OSError as e:
        first = e
    failed = []
    for candidate in _fallbacks(path, fallback_dir):
        try:
            candidate.parent.mkdir(parents=True, exist_ok=True)
            write(candidate)
        except OSError as e:
            failed.append(f"{candidate} ({os_reason(e)})")
            continue
        raise LssError(f"cannot write the {what} to {path} ({os_reason(first)}); it was saved to {candidate} instead",
                       hint=_space_or_access_hint(first, option) + f"; then move {candidate} there")
    raise LssError(f"cannot write the {what} to {path} ({os_reason(first)}), nor to {', '.join(failed)}: it is lost",
                   hint=_space_or_access_hint(first, option))
