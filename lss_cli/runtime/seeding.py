"""Seeding: one seed for the run, `seed + rank` per process.

Data sampling and augmentation do not use these global generators: they derive their own from
(seed, epoch, sample, step) so that a resumed run replays exactly (see lss_cli/data/loader.py)."""

from __future__ import annotations

import hashlib
import random

import numpy as np
import torch


def seed_everything(seed: int, rank: int = 0) -> int:
    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s


def sample_seed(*parts: int) -> int:
    """A 63-bit seed from integers, e.g. (seed, epoch, index, attempt): stable across processes and
    runs, so frame sampling, crops and augmentation replay exactly after a resume."""
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)
