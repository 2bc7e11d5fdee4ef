"""Time-reversal class pairs for the direction accuracy (`EvalConfig.pairs`).

A pairs file holds one pair a line: two class names separated by a TAB ("moving left<TAB>moving
right"); blank lines and lines starting with # are skipped. `lss data synth` writes one
(`pairs.txt`) for its classes, used by default when evaluating the synthetic dataset. A class
names at most one mate, never itself, and every name must be a class of each evaluated split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lss_cli.errors import ConfigError, InputFileError
from lss_cli.textfiles import read_text

SYNTH_PAIRS_FILE = "pairs.txt"  # written by `lss data synth` into the dataset root


@dataclass(frozen=True)
class ClassPairs:
    path: str  # the file they were read from
    pairs: tuple[tuple[str, str], ...]  # (class, its time-reversal mate), in file order
    lines: tuple[int, ...]  # the file line of each pair (1-based), for error messages

    def to_dict(self) -> dict:
        return {"path": self.path, "pairs": [list(p) for p in self.pairs]}


def pairs_path(dataset: str, root: str, pairs: str | None) -> Path | None:
    """The pairs file in effect: `pairs` when given, else the synthetic dataset's own pairs.txt when
    it has one, else none (no direction accuracy)."""
    if pairs is not None:
        return Path(pairs)
    default = Path(root) / SYNTH_PAIRS_FILE
    return default if dataset == "synthetic" and default.is_file() else None


def read_pairs(path: str | Path) -> ClassPairs:
    """Parse and check a pairs file: two TAB-separated names a line, no self-pair, no class twice."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"pairs file not found: {path}", hint="check --pairs (a path relative to the current folder)")
    pairs, lines, seen = [], [], {}
    for n, raw in enumerate(read_text(path, "pairs file").splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        names = [x.strip() for x in raw.split("\t")]
        where = f"{path}:{n}"
        if len(names) != 2 or not all(names):
            raise ConfigError(f"{where}: expected two class names separated by a TAB, got {raw!r}",
                              hint="one pair a line: `moving left<TAB>moving right`")
        a, b = names
        if a == b:
            raise ConfigError(f"{where}: {a!r} is paired with itself", hint="a pair names two different classes")
        for name in (a, b):
            if name in seen:
                raise ConfigError(f"{where}: {name!r} is already in the pair on line {seen[name]}",
                                  hint="a class has at most one time-reversal mate: remove one of the two lines")
            seen[name] = n
        pairs.append((a, b))
        lines.append(n)
    return ClassPairs(str(path), tuple(pairs), tuple(lines))


def mate_indices(pairs: ClassPairs, classes: list[str] | tuple[str, ...], what: str) -> torch.Tensor:
    """[K] int64: the index of each class's mate among `classes`, -1 for none. A name that is not
    one of `classes` (the class list of `what`) is an error naming its line."""
    index = {name: i for i, name in enumerate(classes)}
    mates = torch.full((len(classes),), -1, dtype=torch.long)
    for (a, b), n in zip(pairs.pairs, pairs.lines, strict=True):
        unknown = [name for name in (a, b) if name not in index]
        if unknown:
            raise ConfigError(f"{pairs.path}:{n}: {', '.join(map(repr, unknown))} is not a class of {what}",
                              hint="pair names must be the dataset's class names exactly as listed (classes.txt or the "
                                   "label list: case, spaces); fix or remove the line")
        mates[index[a]], mates[index[b]] = index[b], index[a]
    return mates
