"""Annotation readers for every list format, and dataset presets by name (README, "Datasets and the
video pipeline").

Contract used by training and evaluation:

- `VideoList`: a compact, picklable list of videos. Paths live in ONE numpy byte buffer plus an
  offsets array (not a Python list of str), so a 240k-video list costs ~20 MB once and DataLoader
  workers share it copy-on-write instead of each touching millions of str objects.
  `len(v)`, `v.path(i)` (full path: `root` joined with the listed path), `v.relpath(i)` (as listed),
  `v.label(i)` (int, -1 = unlabelled), `v.labels` (int64 numpy `[N]`), `v.classes` (tuple of
  names; label i is `classes[i]`), `v.root`, `v.source` (a line saying where the list came from).
- `load_dataset(name, root, split, list_file=None, *, classes_file=None, splits_dir=None)`.

Presets (`name`) and what `split` means for each:

| name | split | list | videos |
| --- | --- | --- | --- |
| `ucf101` | `"train1"`/`"test1"` ... `"test3"`, or `(k, "train"/"test")`; `"test"` = split 1 | official `trainlist0k`/`testlist0k` shipped in the package (or `splits_dir`) | `root/<Class>/<file>.avi` |
| `hmdb51` | same as ucf101 | official `<class>_test_split<k>.txt` (code 1 train, 2 test, 0 unused) shipped in the package (or `splits_dir`) | `root/<class>/<file>.avi` |
| `kinetics400`, `kinetics600` | `"train"`, `"val"`, `"test"` | Kinetics CSV: `list_file`, else `root/annotations/<split>.csv`, else `root/<split>.csv` | `root/<csv split>/<file>` or `root/<csv split>/<label>/<file>` (detected) |
| `kinetics600-zs` | `k` / `"test<k>"` / `(k, "test")`, k = 1..3 | `list_file` from the user (no video list ships): `path label` with ids 0..159 in the split's order (ViFi-CLIP's `ZS_split<k>_K600_eval.txt` uses these ids) or a Kinetics CSV (rows of other classes are not part of the split and are left out; `source` says how many) | relative to `root` |
| `list` | ignored when `list_file` is given, else `root/<split>.txt` | generic list (below); classes from `classes_file`, else `classes.txt` beside the list or in `root` | relative to `root` |
| `folder` | ignored | one subfolder of `root` per class (sorted names), video files found recursively | `root/<class>/...` |
| `synthetic` | `"train"` / `"test"` | `root/<split>.txt` + `root/classes.txt` written by `lss_cli.data.synth.generate` | relative to `root` |

Class ids always follow the package label lists and are matched by NAME, never by another
project's numbering: UCF101 ids come from the class folder of each path (`HandstandPushups/`,
whose files are named `v_HandStandPushups_*`), HMDB51 ids from the split file's class name (so
sources that swap kick/kick_ball or sword/sword_exercise cannot swap our labels). For ucf101 and
hmdb51 `classes` holds the readable names ("apply eye makeup"), which zero-shot prompts use.

Generic list formats (`read_list`): `path label` (split on the LAST whitespace, so paths may
contain spaces; label = 0-based int id, -1 = unlabelled), `path` alone (unlabelled; every line of
a file is either labelled or not), and `.csv` files with rows `path,label` (label may also be a
class name when classes are known) or `path`, optional header. Kinetics CSVs (header with
`youtube_id`) are recognised anywhere. In generic lists `#` starts a comment line (write
`./#name.mp4` for a file whose name starts with '#'); official split files have no comments
(HMDB51 names may start with '#'). Blank lines are skipped. Every parse error names the file and
line.
"""

from __future__ import annotations

import csv
import difflib
import io
import os
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.labels import load_label_set, package_file
from lss_cli.textfiles import read_text

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v", ".mpg", ".mpeg", ".flv", ".wmv",
                    ".3gp", ".ogv")
PRESETS = ("ucf101", "hmdb51", "kinetics400", "kinetics600", "kinetics600-zs", "list", "folder", "synthetic")
Split = str | int | tuple[int, str]


class VideoList:
    """Videos with labels; see the module docstring. Immutable once built."""

    def __init__(self, root: str | Path, paths: Iterable[str], labels: Sequence[int] | np.ndarray,
                 classes: Sequence[str], source: str = ""):
        encoded = [p.encode("utf-8") for p in paths]
        self.root = str(root)
        self.classes = tuple(classes)
        self.source = source
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)  # [N + 1] byte offsets into _buf
        np.cumsum([len(b) for b in encoded], out=self._offsets[1:])
        self._buf = np.frombuffer(b"".join(encoded), dtype=np.uint8)  # all paths, utf-8, back to back
        self.labels = np.asarray(labels, dtype=np.int64).reshape(-1)  # [N], -1 = unlabelled
        if len(self.labels) != len(encoded):
            raise ValueError(f"{len(encoded)} paths but {len(self.labels)} labels")
        bad = (self.labels < -1) | (self.labels >= len(self.classes))
        if len(self.labels) and bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise ValueError(f"label {self.labels[i]} of {encoded[i]!r} is outside [-1, {len(self.classes)})")

    def __len__(self) -> int:
        return len(self.labels)

    def relpath(self, i: int) -> str:
        """The path as listed (relative to `root` unless the list held an absolute path)."""
        return self._buf[self._offsets[i]:self._offsets[i + 1]].tobytes().decode("utf-8")

    def path(self, i: int) -> str:
        return os.path.join(self.root, self.relpath(i))

    def label(self, i: int) -> int:
        return int(self.labels[i])

    def subset(self, indices: Sequence[int] | np.ndarray) -> VideoList:
        idx = np.asarray(indices, dtype=np.int64)
        return VideoList(self.root, (self.relpath(int(i)) for i in idx), self.labels[idx], self.classes,
                         f"{self.source} (subset of {len(idx)})")

    @property
    def nbytes(self) -> int:
        """Memory held by the list's arrays."""
        return self._buf.nbytes + self._offsets.nbytes + self.labels.nbytes

    def __repr__(self) -> str:
        return f"VideoList({len(self)} videos, {len(self.classes)} classes, root={self.root!r})"


# --------------------------------------------------------------------------------------------
# Readers
# --------------------------------------------------------------------------------------------


def _data_lines(path: Path, comments: bool = True) -> Iterable[tuple[int, str]]:
    """(line number, stripped text) of non-blank lines, without `#` comment lines when `comments`
    (official split files have no comments: HMDB51 file names may start with '#'). Handles CRLF."""
    for lineno, raw in enumerate(read_text(path, "list file").splitlines(), start=1):
        line = raw.strip()
        if line and not (comments and line.startswith("#")):
            yield lineno, line


def _bad(path: Path, lineno: int, message: str, hint: str | None = None) -> InputFileError:
    return InputFileError(f"{path}:{lineno}: {message}", hint=hint)


def _parse_int(text: str) -> int | None:
    return int(text) if re.fullmatch(r"-?\d+", text) else None


def read_classes(path: str | Path) -> tuple[str, ...]:
    """A classes file: one name per line (line i = id i), or `<id> <name>` lines numbered from 0 or 1
    (like UCF101's classInd.txt)."""
    path = Path(path)
    lines = list(_data_lines(path))
    if not lines:
        raise InputFileError(f"{path}: no class names found", hint="write one class name per line")
    numbered = all(re.match(r"\d+\s+\S", line) for _, line in lines)
    base = int(lines[0][1].split()[0]) if numbered else 0
    names: list[str] = []
    for lineno, line in lines:
        if numbered:
            num, line = line.split(None, 1)
            if int(num) != base + len(names):
                raise _bad(path, lineno, f"class number {num} out of order (expected {base + len(names)})")
            line = line.strip()
        if line in names:
            raise _bad(path, lineno, f"duplicate class name {line!r}", hint="each class must appear once")
        names.append(line)
    return tuple(names)


def _check_label(path: Path, lineno: int, label: int, classes: Sequence[str] | None) -> int:
    if label < -1 or (classes is not None and label >= len(classes)):
        limit = f"0..{len(classes) - 1}" if classes is not None else ">= 0"
        raise _bad(path, lineno, f"label {label} out of range (expected {limit}, or -1 for unlabelled)",
                   hint="labels are 0-based class ids into the classes file")
    return label


def read_list(path: str | Path, classes: Sequence[str] | None = None) -> tuple[list[str], list[int]]:
    """A generic list file -> (paths, labels). Format rules in the module docstring."""
    path = Path(path)
    if path.suffix.lower() == ".csv":
        if _is_kinetics_csv(path):
            raise InputFileError(f"{path} is a Kinetics CSV", hint="read it with a kinetics preset")
        return _read_csv_list(path, classes)
    paths: list[str] = []
    labels: list[int] = []
    first_kind: tuple[int, bool] | None = None  # (line, labelled) of the first data line
    for lineno, line in _data_lines(path):
        parts = line.rsplit(None, 1)
        label = _parse_int(parts[1]) if len(parts) == 2 else None
        labelled = label is not None
        if first_kind is None:
            first_kind = (lineno, labelled)
        elif labelled != first_kind[1]:
            kind = "has a label" if first_kind[1] else "has no label"
            raise _bad(path, lineno, f"line {first_kind[0]} {kind} but this line does not follow suit: {line!r}",
                       hint="every line is `path label` or every line is just `path`")
        if labelled:
            paths.append(parts[0])
            labels.append(_check_label(path, lineno, label, classes))
        else:
            paths.append(line)
            labels.append(-1)
    if not paths:
        raise InputFileError(f"{path}: no videos listed", hint="write one `path label` or `path` per line")
    return paths, labels


def _read_csv_list(path: Path, classes: Sequence[str] | None) -> tuple[list[str], list[int]]:
    index = {name: i for i, name in enumerate(classes)} if classes is not None else None
    paths: list[str] = []
    labels: list[int] = []
    first = True
    with io.StringIO(read_text(path, "list file"), newline="") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            row = [c.strip() for c in row]
            if not row or not row[0] or row[0].startswith("#"):
                continue
            header = first and row[0].lower() in ("path", "video", "filename", "file")
            first = False
            if header:
                continue
            if len(row) > 2:
                raise _bad(path, lineno, f"expected `path,label` or `path`, got {len(row)} columns")
            paths.append(row[0])
            labels.append(_csv_label(path, lineno, row[1] if len(row) == 2 else "", classes, index))
    if not paths:
        raise InputFileError(f"{path}: no videos listed")
    return paths, labels


def _csv_label(path: Path, lineno: int, text: str, classes, index) -> int:
    if text == "":
        return -1
    label = _parse_int(text)
    if label is not None:
        return _check_label(path, lineno, label, classes)
    if index is None:
        raise _bad(path, lineno, f"label {text!r} is a name but no classes file is known",
                   hint="pass a classes file, or write 0-based integer ids")
    if text not in index:
        raise _bad(path, lineno, f"unknown class {text!r}", hint=_close_hint(text, index))
    return index[text]


def _close_hint(name: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f"did you mean {', '.join(map(repr, close))}?" if close else "check the class name against the label list"


# ---- official UCF101 ----------------------------------------------------------------------


def read_ucf101_classind(path: str | Path) -> dict[int, str]:
    """`classInd.txt`: `<1-based id> <ClassName>` -> {id: name}."""
    path = Path(path)
    out: dict[int, str] = {}
    for lineno, line in _data_lines(path, comments=False):
        parts = line.split()
        if len(parts) != 2 or _parse_int(parts[0]) is None:
            raise _bad(path, lineno, f"expected `<id> <ClassName>`, got {line!r}")
        num = int(parts[0])
        if num != len(out) + 1:
            raise _bad(path, lineno, f"class id {num} out of order (expected {len(out) + 1})")
        out[num] = parts[1]
    if not out:
        raise InputFileError(f"{path}: no classes found")
    return out


def read_ucf101_list(path: str | Path, classind: dict[int, str]) -> list[tuple[str, str]]:
    """`trainlist0N.txt` (`Class/file.avi id`) or `testlist0N.txt` (`Class/file.avi`) ->
    [(relative path, class name)]. The class is the path's folder; a given id must agree with it."""
    path = Path(path)
    out: list[tuple[str, str]] = []
    for lineno, line in _data_lines(path, comments=False):
        parts = line.split()
        if len(parts) not in (1, 2) or "/" not in parts[0]:
            raise _bad(path, lineno, f"expected `Class/file.avi [id]`, got {line!r}")
        rel = parts[0]
        folder = rel.split("/", 1)[0]
        if len(parts) == 2:
            num = _parse_int(parts[1])
            if num is None or num not in classind:
                raise _bad(path, lineno, f"class id {parts[1]!r} is not in classInd.txt")
            if classind[num] != folder:
                raise _bad(path, lineno, f"class id {num} is {classind[num]!r} in classInd.txt but the path's folder is {folder!r}")
        elif folder not in classind.values():
            raise _bad(path, lineno, f"folder {folder!r} is not a class of classInd.txt")
        out.append((rel, folder))
    if not out:
        raise InputFileError(f"{path}: no videos listed")
    return out


# ---- official HMDB51 ----------------------------------------------------------------------

HMDB_CODES = {"train": 1, "test": 2, "unused": 0}
_HMDB_FILE = re.compile(r"^(?P<cls>.+)_test_split(?P<k>\d)\.txt$")


def read_hmdb51_split_file(path: str | Path) -> list[tuple[str, int]]:
    """`<class>_test_split<k>.txt`: `<file>.avi <code>` lines -> [(file name, code)]."""
    path = Path(path)
    out: list[tuple[str, int]] = []
    for lineno, line in _data_lines(path, comments=False):
        parts = line.split()
        if len(parts) != 2 or parts[1] not in ("0", "1", "2"):
            raise _bad(path, lineno, f"expected `<file>.avi <code>` with code 0, 1 or 2, got {line!r}",
                       hint="HMDB51 codes: 1 = train, 2 = test, 0 = not used")
        out.append((parts[0], int(parts[1])))
    return out


def read_hmdb51_splits(splits_dir: str | Path, split: int, classes: Sequence[str]) -> list[tuple[str, str, int]]:
    """All classes' split files of split `split` -> [(relative path `class/file`, class, code)].

    Every class of `classes` (official names) must have a file; an unknown class is an error."""
    splits_dir = Path(splits_dir)
    files = {}
    for p in sorted(splits_dir.glob(f"*_test_split{split}.txt")):
        cls = _HMDB_FILE.match(p.name).group("cls")
        if cls not in classes:
            raise InputFileError(f"{p}: class {cls!r} is not an HMDB51 class", hint=_close_hint(cls, classes))
        files[cls] = p
    missing = [c for c in classes if c not in files]
    if missing:
        raise InputFileError(f"{splits_dir}: no split-{split} file for {len(missing)} classes ({', '.join(missing[:5])}...)",
                             hint="point --splits-dir at the folder of the 153 official `<class>_test_split<k>.txt` files")
    return [(f"{cls}/{name}", cls, code) for cls in classes for name, code in read_hmdb51_split_file(files[cls])]


# ---- Kinetics CSV -------------------------------------------------------------------------


def _is_kinetics_csv(path: Path) -> bool:
    """A sniff of the header only (a Kinetics CSV is large): the reader proper checks the encoding."""
    if not path.is_file():
        return False  # the reader says it is missing
    with open(path, encoding="utf-8", errors="replace") as f:
        return "youtube_id" in f.readline()


def read_kinetics_csv(path: str | Path) -> list[tuple[int, str | None, str, str]]:
    """`label,youtube_id,time_start,time_end,split[,is_cc]` -> [(line, label or None, file name, csv split)].

    The file name is `<youtube_id>_<start:06d>_<end:06d>.mp4`. `label` and `split` columns may be
    absent (test lists without labels)."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"Kinetics CSV not found: {path}", hint="check the path")
    out: list[tuple[int, str | None, str, str]] = []
    with io.StringIO(read_text(path, "Kinetics CSV"), newline="") as f:
        reader = csv.DictReader(f)
        need = {"youtube_id", "time_start", "time_end"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise _bad(path, 1, f"header must name {', '.join(sorted(need))} (got {reader.fieldnames})",
                       hint="the Kinetics CSV header is label,youtube_id,time_start,time_end,split")
        for row in reader:
            lineno = reader.line_num
            try:
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (TypeError, ValueError):
                raise _bad(path, lineno, f"time_start/time_end must be numbers, got {row['time_start']!r}, {row['time_end']!r}") from None
            yid = (row["youtube_id"] or "").strip()
            if not yid:
                raise _bad(path, lineno, "empty youtube_id")
            label = (row.get("label") or "").strip() or None
            out.append((lineno, label, f"{yid}_{start:06d}_{end:06d}.mp4", (row.get("split") or "").strip()))
    if not out:
        raise InputFileError(f"{path}: no rows")
    return out


# --------------------------------------------------------------------------------------------
# Presets
# --------------------------------------------------------------------------------------------


def parse_split(split: Split) -> tuple[int | None, str]:
    """`"train1"` -> (1, "train"); `(2, "test")` -> (2, "test"); `3` / `"3"` -> (3, "test");
    `"val"` -> (None, "val")."""
    if isinstance(split, tuple):
        if len(split) != 2:
            raise ConfigError(f"split {split!r}: expected (number, part)")
        return int(split[0]), str(split[1]).lower()
    if isinstance(split, int):
        return split, "test"
    m = re.fullmatch(r"([a-z]*?)_?(\d*)", str(split).strip().lower())
    if not m or not (m.group(1) or m.group(2)):
        raise ConfigError(f"split {split!r} not understood", hint="use e.g. train1, test2, train, val or test")
    return (int(m.group(2)) if m.group(2) else None), (m.group(1) or "test")


def _official_split(name: str, split: Split) -> tuple[int, str]:
    num, part = parse_split(split)
    num = 1 if num is None else num
    if num not in (1, 2, 3) or part not in ("train", "test"):
        raise ConfigError(f"{name}: split {split!r} does not exist",
                          hint="official splits are train1..train3 and test1..test3")
    return num, part


def load_dataset(name: str, root: str | Path, split: Split, list_file: str | Path | None = None, *,
                 classes_file: str | Path | None = None, splits_dir: str | Path | None = None) -> VideoList:
    """The videos of a preset's split. See the module docstring for each preset."""
    loaders = {
        "ucf101": lambda: _load_ucf101(root, split, splits_dir),
        "hmdb51": lambda: _load_hmdb51(root, split, splits_dir),
        "kinetics400": lambda: _load_kinetics(name, root, split, list_file),
        "kinetics600": lambda: _load_kinetics(name, root, split, list_file),
        "kinetics600-zs": lambda: _load_k600_zeroshot(root, split, list_file),
        "list": lambda: _load_list(root, split, list_file, classes_file),
        "folder": lambda: _load_folder(root),
        "synthetic": lambda: _load_synthetic(root, split),
    }
    if name not in loaders:
        close = difflib.get_close_matches(name, PRESETS, n=2)
        raise ConfigError(f"unknown dataset {name!r} (known: {', '.join(PRESETS)})",
                          hint=f"did you mean {close[0]!r}?" if close else None)
    return loaders[name]()


def _load_ucf101(root, split: Split, splits_dir) -> VideoList:
    num, part = _official_split("ucf101", split)
    sdir = Path(splits_dir) if splits_dir else package_file("splits/ucf101")
    classind = read_ucf101_classind(sdir / "classInd.txt")
    official = load_label_set("ucf101-official").index()
    unknown = [n for n in classind.values() if n not in official]
    if unknown:
        raise InputFileError(f"{sdir / 'classInd.txt'}: {unknown[0]!r} is not a UCF101 class", hint=_close_hint(unknown[0], official))
    entries = read_ucf101_list(sdir / f"{part}list0{num}.txt", classind)
    return VideoList(root, (rel for rel, _ in entries), [official[cls] for _, cls in entries],
                     load_label_set("ucf101").names, f"ucf101 {part}list0{num} ({sdir})")


def _load_hmdb51(root, split: Split, splits_dir) -> VideoList:
    num, part = _official_split("hmdb51", split)
    sdir = Path(splits_dir) if splits_dir else package_file("splits/hmdb51")
    official = load_label_set("hmdb51-official")
    index = official.index()
    rows = [(rel, cls) for rel, cls, code in read_hmdb51_splits(sdir, num, official.names) if code == HMDB_CODES[part]]
    return VideoList(root, (rel for rel, _ in rows), [index[cls] for _, cls in rows],
                     load_label_set("hmdb51").names, f"hmdb51 {part} split {num} ({sdir})")


def _kinetics_csv_path(root: Path, part: str, list_file) -> Path:
    if list_file is not None:
        return Path(list_file)
    for cand in (root / "annotations" / f"{part}.csv", root / f"{part}.csv"):
        if cand.is_file():
            return cand
    raise InputFileError(f"no Kinetics CSV for split {part!r} under {root} (looked for annotations/{part}.csv and {part}.csv)",
                         hint="pass the CSV as the list file (data.list_file / --list-file)")


_K_LAYOUTS = (("split", "file"), ("split", "label", "file"), ("file",), ("label", "file"))


def _kinetics_rel(layout: tuple[str, ...], split: str, label: str | None, file: str) -> str:
    values = {"split": split, "label": label or "", "file": file}
    return "/".join(values[k] for k in layout if values[k])


def _kinetics_layout(root: Path, rows: list[tuple[int, str | None, str, str]]) -> tuple[str, ...]:
    """Which folder layout holds the videos (`split/file`, `split/label/file`, `file`, `label/file`):
    judged on the first 50 rows; `split/file` when none of them exists."""
    sample = rows[:50]
    hits = [sum((root / _kinetics_rel(t, s, lab, f)).is_file() for _, lab, f, s in sample) for t in _K_LAYOUTS]
    return _K_LAYOUTS[int(np.argmax(hits))] if max(hits) > 0 else _K_LAYOUTS[0]


def _load_kinetics(name: str, root, split: Split, list_file) -> VideoList:
    root = Path(root)
    _, part = parse_split(split)
    csv_path = _kinetics_csv_path(root, part, list_file)
    labels = load_label_set(name)
    return _kinetics_videos(root, csv_path, read_kinetics_csv(csv_path), part, labels.names,
                            f"{name} {part} ({csv_path})", keep_unknown=False)


def _kinetics_videos(root: Path, csv_path: Path, csv_rows: list[tuple[int, str | None, str, str]], part: str,
                     classes: Sequence[str], source: str, keep_unknown: bool) -> VideoList:
    """`csv_rows` = `read_kinetics_csv(csv_path)`, passed in so that callers which also need the
    label names parse the file once."""
    rows = [(lineno, lab, f, s or part) for lineno, lab, f, s in csv_rows]
    index = {n: i for i, n in enumerate(classes)}
    layout = _kinetics_layout(root, rows)
    paths, ids = [], []
    for lineno, lab, f, s in rows:
        if lab is not None and lab not in index:
            if keep_unknown:
                continue
            raise _bad(csv_path, lineno, f"class {lab!r} is not in the {len(classes)}-class label list", hint=_close_hint(lab, index))
        paths.append(_kinetics_rel(layout, s, lab, f))
        ids.append(index[lab] if lab is not None else -1)
    if keep_unknown:
        source += f", {len(paths)} of {len(rows)} rows belong to the split's classes"
    return VideoList(root, paths, ids, classes, source + f", layout {'/'.join(layout)}")


def load_list(list_file: str | Path, root: str | Path) -> VideoList:
    """Any list file on its own: a generic list (classes from a `classes.txt` beside it or in
    `root`, if any) or a Kinetics CSV (classes = its label names, sorted)."""
    list_file, root = Path(list_file), Path(root)
    if list_file.suffix.lower() == ".csv" and list_file.is_file() and _is_kinetics_csv(list_file):
        rows = read_kinetics_csv(list_file)
        names = sorted({lab for _, lab, _, _ in rows if lab is not None})
        return _kinetics_videos(root, list_file, rows, "", names, f"Kinetics CSV {list_file}", keep_unknown=False)
    return _load_list(root, "", list_file, None)


def _load_k600_zeroshot(root, split: Split, list_file) -> VideoList:
    num, part = parse_split(split)
    if num not in (1, 2, 3) or part != "test":
        raise ConfigError(f"kinetics600-zs: split {split!r} does not exist", hint="use 1, 2 or 3 (test1..test3)")
    if list_file is None:
        raise ConfigError("kinetics600-zs needs a video list (no video list ships with the package)",
                          hint="pass a `path label` list with ids 0..159 in the split's class order "
                               "(e.g. ViFi-CLIP's ZS_split<k>_K600_eval.txt) or a Kinetics-600 CSV")
    classes = load_label_set(f"kinetics600-zs{num}").names
    list_file = Path(list_file)
    if list_file.suffix.lower() == ".csv" and list_file.is_file() and _is_kinetics_csv(list_file):
        return _kinetics_videos(Path(root), list_file, read_kinetics_csv(list_file), "val", classes,
                                f"kinetics600-zs split {num} ({list_file})", keep_unknown=True)
    paths, labels = read_list(list_file, classes)
    return VideoList(root, paths, labels, classes, f"kinetics600-zs split {num} ({list_file})")


def _load_list(root, split: Split, list_file, classes_file) -> VideoList:
    root = Path(root)
    if list_file is None:
        _, part = parse_split(split)
        list_file = root / f"{part}.txt"
    list_file = Path(list_file)
    if list_file.suffix.lower() == ".csv" and list_file.is_file() and _is_kinetics_csv(list_file):
        raise ConfigError(f"{list_file} is a Kinetics CSV", hint="use dataset kinetics400 or kinetics600 with it")
    classes = _find_classes(root, list_file, classes_file)
    paths, labels = read_list(list_file, classes)
    if classes is None:  # no names known: ids are the names
        classes = tuple(str(i) for i in range(max(labels, default=-1) + 1))
    return VideoList(root, paths, labels, classes, f"list {list_file}")


def _find_classes(root: Path, list_file: Path, classes_file) -> tuple[str, ...] | None:
    if classes_file is not None:
        return read_classes(classes_file)
    for cand in (list_file.parent / "classes.txt", root / "classes.txt"):
        if cand.is_file():
            return read_classes(cand)
    return None


def _load_folder(root) -> VideoList:
    root = Path(root)
    if not root.is_dir():
        raise InputFileError(f"dataset folder not found: {root}", hint="check --root")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths, labels = [], []
    for i, cls in enumerate(classes):
        for dirpath, dirnames, filenames in os.walk(root / cls):
            dirnames.sort()
            for fn in sorted(filenames):
                if fn.lower().endswith(VIDEO_EXTENSIONS):
                    paths.append(os.path.relpath(os.path.join(dirpath, fn), root))
                    labels.append(i)
    if not paths:
        raise InputFileError(f"no video files under {root}/<class>/",
                             hint=f"the folder preset expects one subfolder per class holding {', '.join(VIDEO_EXTENSIONS[:4])} ... files")
    return VideoList(root, paths, labels, classes, f"folder {root}")


def _load_synthetic(root, split: Split) -> VideoList:
    root = Path(root)
    num, part = parse_split(split)
    if num not in (None, 1) or part not in ("train", "test"):
        raise ConfigError(f"synthetic: split {split!r} does not exist", hint="the synthetic dataset has one split: train or test")
    if not (root / "classes.txt").is_file():
        raise InputFileError(f"{root} is not a synthetic dataset (no classes.txt)", hint="create one with `lss data synth DIR`")
    classes = read_classes(root / "classes.txt")
    paths, labels = read_list(root / f"{part}.txt", classes)
    return VideoList(root, paths, labels, classes, f"synthetic {part} ({root})")


# ---- source groups (the linear probe's validation split) ------------------------------------

_UCF101_NAME = re.compile(r"^v_.+_(?P<group>g\d+)_c\d+$")  # v_ApplyEyeMakeup_g08_c01
# HMDB51: <source title>_<action>_<body part>_<camera motion>_<people>_<view>_<quality>_<clip index>
_HMDB51_NAME = re.compile(r"^(?P<source>.+)_[fhul]_(?:cm|nm)_np\d+_(?:fr|ba|le|ri)_(?:bad|med|goo)_\d+$")
_CLIP_INDEX = re.compile(r"^(?P<source>.+)_(?P<index>\d+)$")  # <name>_<clip index>


def source_group(dataset: str, relpath: str) -> str:
    """The group of a listed video: videos of one group may share their source (a recording, a
    film scene), so a validation split must keep each group on one side. Each key mirrors how the
    dataset's own train/test splits keep sources apart:

    - ucf101: the group number, `v_ApplyEyeMakeup_g08_c01.avi` -> `g08`. UCF101's clips of one
      group come from one long video; its official splits hold out whole group numbers across
      all classes (test = g01-g07), and so does this key.
    - hmdb51: the source title and action, the name without its meta tags and clip index:
      `April_09_brush_hair_u_nm_np1_ba_goo_0.avi` -> `April_09_brush_hair`. Clips of one title and
      action that differ in their tags (`..._np2_ba_bad_1`, `..._np2_le_bad_0`) are cut from the
      same film, and the official splits never put one title-and-action on both sides; a name
      without the tags loses just its trailing `_<n>`.
    - synthetic: the clip index, `videos/moving_left/moving_left_003.mp4` -> `clip 3`: clip i of
      a time-reversal class is its mate's clip i played backwards (lss_cli/data/synth.py).
    - any other dataset, or a name not in its dataset's form: the video itself (its path)."""
    stem = relpath.replace("\\", "/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
    if dataset == "ucf101" and (m := _UCF101_NAME.match(stem)):
        return m.group("group").lower()
    if dataset == "hmdb51" and (m := _HMDB51_NAME.match(stem) or _CLIP_INDEX.match(stem)):
        return m.group("source")
    if dataset == "synthetic" and (m := _CLIP_INDEX.match(stem)):
        return f"clip {int(m.group('index'))}"
    return relpath
