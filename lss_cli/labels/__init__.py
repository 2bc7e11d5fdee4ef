"""Built-in label sets (package data) and user label files.

Sources (see SOURCES.md beside this file): Kinetics-400/600 names from ViFi-CLIP's label CSVs,
UCF101 from the official classInd.txt, HMDB51 from the official split-file names, the Kinetics-600
zero-shot splits from ER-ZSAR (Chen & Huang, ICCV 2021), and lss530 = the de-duplicated union of
K400, UCF101 and HMDB51 after the `readable()` normalisation (the LSS paper's 530 concepts).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.textfiles import read_text

# name -> (file inside this package, one-line description)
BUILTIN: dict[str, tuple[str, str]] = {
    "lss530": ("lss530.txt", "union of K400 + UCF101 + HMDB51 names, readable form (LSS's 530 concepts)"),
    "kinetics400": ("kinetics400.txt", "Kinetics-400, usual id order"),
    "kinetics600": ("kinetics600.txt", "Kinetics-600, usual id order"),
    "ucf101": ("ucf101_readable.txt", "UCF101, readable names ('apply eye makeup'), classInd order"),
    "ucf101-official": ("ucf101.txt", "UCF101, official CamelCase names, classInd order"),
    "hmdb51": ("hmdb51_readable.txt", "HMDB51, readable names ('brush hair'), sorted order"),
    "hmdb51-official": ("hmdb51.txt", "HMDB51, official folder names ('brush_hair'), sorted order"),
    "kinetics600-new220": ("k600_zeroshot/new220.txt", "the 220 Kinetics-600 classes not in Kinetics-400"),
}
for _k in (1, 2, 3):
    BUILTIN[f"kinetics600-zs{_k}"] = (f"k600_zeroshot/split{_k}_test.txt",
                                      f"ER-ZSAR K600 zero-shot split {_k}: 160 test classes")
    BUILTIN[f"kinetics600-zs{_k}-val"] = (f"k600_zeroshot/split{_k}_val.txt",
                                          f"ER-ZSAR K600 zero-shot split {_k}: 60 validation classes")


@dataclass(frozen=True)
class LabelSet:
    name: str  # built-in name or the file path
    names: tuple[str, ...]  # class names; the index is the label id
    source: str  # where it came from (for provenance records)

    def __len__(self) -> int:
        return len(self.names)

    def index(self) -> dict[str, int]:
        return {n: i for i, n in enumerate(self.names)}


def readable(name: str) -> str:
    """Readable class name: split CamelCase, '_' -> ' ', lower-case, collapse spaces."""
    name = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    name = name.replace("_", " ")
    return " ".join(name.lower().split())


def package_file(relative: str) -> Path:
    return Path(str(resources.files("lss_cli.labels").joinpath(relative)))


def _read_names(path: Path, origin: str) -> tuple[str, ...]:
    names: list[str] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(read_text(path, "label file").splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line in seen:
            raise InputFileError(f"{origin}:{lineno}: duplicate class name {line!r} (first on line {seen[line]})",
                                 hint="each class name must appear once")
        seen[line] = lineno
        names.append(line)
    if not names:
        raise InputFileError(f"{origin}: no class names found", hint="write one class name per line")
    return tuple(names)


def load_label_set(name_or_path: str | Path) -> LabelSet:
    """A built-in label set by name, or a text file with one class name per line (`#` comments)."""
    key = str(name_or_path)
    if key in BUILTIN:
        rel, desc = BUILTIN[key]
        return LabelSet(key, _read_names(package_file(rel), key), f"builtin:{key} ({desc})")
    path = Path(key)
    if path.is_file():
        return LabelSet(key, _read_names(path, key), f"file:{path}")
    close = difflib.get_close_matches(key, list(BUILTIN), n=3)
    hint = (f"did you mean {', '.join(close)}? " if close else "") + "`lss labels list` shows the built-in sets"
    raise ConfigError(f"label set {key!r} is neither a built-in name nor an existing file", hint=hint)


def parse_label_arg(value: str) -> LabelSet:
    """`--labels` for predict-style commands: a built-in name, a file, or an inline "a,b,c" list."""
    if value in BUILTIN or Path(value).is_file() or "," not in value:
        return load_label_set(value)
    names = tuple(n.strip() for n in value.split(",") if n.strip())
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate names in --labels {value!r}")
    return LabelSet("inline", names, "inline")
