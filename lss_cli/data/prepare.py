"""`lss data prepare`: plain `path label` lists + `classes.txt` from a dataset's official files.

Writes into `out`:
- ucf101, hmdb51: `train1.txt` `test1.txt` ... `train3.txt` `test3.txt` from the official split
  files (the package's copies, or `splits_dir`);
- kinetics400, kinetics600: `train.txt` / `val.txt` / `test.txt` for each Kinetics CSV found in
  `splits_dir` (default `root/annotations`, then `root`);
- `classes.txt`: the class names, line i = label i (readable names for UCF101/HMDB51, exactly the
  names `load_dataset` gives), so `load_dataset("list", root, ..., list_file=out/"test1.txt")`
  gives the same videos and labels as the preset;
- `missing.txt` (`list<TAB>path`) when listed videos are not found under `root`.

Lists keep every listed video unless `drop_missing` is set (then the summary says how many were
left out), so training replaces missing files and evaluation reports them: nothing disappears
silently. Paths are relative to `root`; labels are 0-based, -1 for unlabelled (Kinetics test).
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from lss_cli.data.datasets import VideoList, load_dataset
from lss_cli.errors import ConfigError, InputFileError
from lss_cli.runtime.outputs import check_output_dir, write_output, write_text_atomic

PREPARABLE = ("ucf101", "hmdb51", "kinetics400", "kinetics600")


def _official_lists(dataset: str, root: Path, splits_dir: Path | None) -> dict[str, VideoList]:
    if dataset in ("ucf101", "hmdb51"):
        return {f"{part}{k}": load_dataset(dataset, root, (k, part), splits_dir=splits_dir)
                for k in (1, 2, 3) for part in ("train", "test")}
    csv_dirs = [splits_dir] if splits_dir else [root / "annotations", root]
    lists = {}
    for part in ("train", "val", "test"):
        found = next((d / f"{part}.csv" for d in csv_dirs if (d / f"{part}.csv").is_file()), None)
        if found is not None:
            lists[part] = load_dataset(dataset, root, part, list_file=found)
    if not lists:
        raise InputFileError(f"no Kinetics CSV (train.csv, val.csv, test.csv) in {', '.join(map(str, csv_dirs))}",
                             hint="point --splits-dir at the folder holding the official Kinetics CSVs")
    return lists


def _write_files(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        write_text_atomic(folder / name, text)


def prepare_lists(dataset: str, root: str | Path, out: str | Path, *, splits_dir: str | Path | None = None,
                  drop_missing: bool = False) -> dict:
    """Write the lists (see the module docstring) and return a summary dict."""
    if dataset not in PREPARABLE:
        raise ConfigError(f"cannot prepare {dataset!r}: official files are read for {', '.join(PREPARABLE)}",
                          hint="other datasets are already plain lists or folders")
    root, out = Path(root), Path(out)
    check_output_dir(out, "lists")
    lists = _official_lists(dataset, root, Path(splits_dir) if splits_dir else None)
    classes = next(iter(lists.values())).classes
    files = {"classes.txt": "".join(c + "\n" for c in classes)}  # file name -> text, written together below
    rows, missing_lines = [], []
    exists = functools.cache(os.path.isfile)  # each video appears in all 3 splits: stat it once
    for name, videos in lists.items():
        missing = [i for i in range(len(videos)) if not exists(videos.path(i))]
        missing_lines += [f"{name}.txt\t{videos.relpath(i)}\n" for i in missing]
        skip = set(missing) if drop_missing else set()
        files[f"{name}.txt"] = "".join(f"{videos.relpath(i)} {videos.label(i)}\n"
                                       for i in range(len(videos)) if i not in skip)
        rows.append({"list": str(out / f"{name}.txt"), "videos": len(videos), "missing": len(missing),
                     "written": len(videos) - len(skip)})
    report = out / "missing.txt"
    if missing_lines:
        files[report.name] = "list\tpath\n" + "".join(missing_lines)
    write_output(out, lambda folder: _write_files(folder, files), what="lists")
    if not missing_lines and report.exists():
        report.unlink()  # a stale report from an earlier run would contradict these lists
    return {"dataset": dataset, "root": str(root), "out": str(out), "classes": len(classes), "lists": rows,
            "missing": len(missing_lines), "missing_report": str(report) if missing_lines else None,
            "dropped_missing": drop_missing}
