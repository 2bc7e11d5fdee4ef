"""`lss data check`: find the unreadable videos of a list before a run meets them.

Each video is opened (exact seek mode, which scans the packets) and its first and last frames are
decoded, in parallel worker processes, each decode bounded by a timeout. A video is reported with
a short reason: missing file, empty file, the decoder's own message (not a video, truncated
container, broken packets), a timeout, or a header promising clearly more frames than the file
holds. Damage in the middle of a file that leaves the first and last frames intact is not found
by this check; training still replaces such a video if it fails later.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

from lss_cli.data.datasets import VideoList, load_list
from lss_cli.data.video_io import check_video
from lss_cli.errors import ConfigError
from lss_cli.runtime.outputs import check_output, write_output, write_text_atomic
from lss_cli.runtime.progress import make_progress

_WORKER_STATE: dict = {}  # set in each pool worker by _init_worker


@dataclass
class CheckResult:
    list_file: str
    root: str
    checked: int  # videos checked
    bad: list[tuple[str, str]] = field(default_factory=list)  # (full path, reason), in list order
    report: str | None = None  # the report file written

    def to_dict(self) -> dict:
        return {"list": self.list_file, "root": self.root, "checked": self.checked, "unreadable": len(self.bad),
                "report": self.report, "bad": [{"path": p, "reason": r} for p, r in self.bad]}


def _init_worker(videos: VideoList, timeout: float) -> None:
    _WORKER_STATE.update(videos=videos, timeout=timeout)


def _check_one(index: int) -> tuple[int, str | None]:
    return index, check_video(_WORKER_STATE["videos"].path(index), _WORKER_STATE["timeout"])


def _pool_context():
    # fork starts workers in milliseconds and shares the list; elsewhere the platform default.
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


@contextmanager
def _results(videos: VideoList, workers: int, timeout: float) -> Iterator[Iterator[tuple[int, str | None]]]:
    if workers == 1 or len(videos) <= 1:
        _init_worker(videos, timeout)
        yield map(_check_one, range(len(videos)))
        return
    with _pool_context().Pool(min(workers, len(videos)), initializer=_init_worker, initargs=(videos, timeout)) as pool:
        yield pool.imap_unordered(_check_one, range(len(videos)), chunksize=4)


def check_videos(videos: VideoList, *, workers: int = 1, timeout: float = 60.0, progress=None) -> list[tuple[int, str]]:
    """(index, reason) of every unreadable video, sorted by index. `progress`: an optional rich
    Progress, started only after the worker processes exist (no fork with its thread running)."""
    if workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {workers}")
    bad: list[tuple[int, str]] = []
    with _results(videos, workers, timeout) as results, (progress or nullcontext()):
        task = progress.add_task("checking videos", total=len(videos)) if progress is not None else None
        for index, reason in results:
            if reason is not None:
                bad.append((index, reason))
            if task is not None:
                progress.advance(task)
    return sorted(bad)


def write_report(path: str | Path, rows: list[tuple[str, str]]) -> Path:
    """TSV `path<TAB>reason` with a header line, written atomically (also when empty). Where `path`
    cannot be written by now, the report goes to a temp folder and the LssError names it."""
    def clean(text: str) -> str:
        return " ".join(text.split())  # no tabs or newlines inside a field

    text = "path\treason\n" + "".join(f"{clean(p)}\t{clean(r)}\n" for p, r in rows)
    return write_output(path, lambda p: write_text_atomic(p, text), what="report", option="--report")


def default_report_path(list_file: str | Path) -> Path:
    return Path(f"{Path(list_file).stem}.unreadable.tsv")


def run_check(list_file: str | Path, root: str | Path, *, workers: int | None = None, timeout: float = 60.0,
              report: str | Path | None = None) -> CheckResult:
    """Check every video of `list_file` (any list format, paths relative to `root`) with a
    progress bar on stderr, and write the report (default `<list stem>.unreadable.tsv` here)."""
    videos = load_list(list_file, root)
    workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    report = Path(report) if report is not None else default_report_path(list_file)
    check_output(report, "report", "--report")  # a missing or read-only folder fails before the decoding
    bad = check_videos(videos, workers=workers, timeout=timeout, progress=make_progress())
    rows = [(videos.path(i), reason) for i, reason in bad]
    write_report(report, rows)
    return CheckResult(str(list_file), str(root), len(videos), rows, str(report))
