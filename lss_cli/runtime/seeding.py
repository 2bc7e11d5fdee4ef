"""Seeding: one seed for the run, `seed + rank` per process.

Data sampling and augmentation do not use these global generators: they derive their own from
(seed, epoch, sample, step) so that a resumed run replays exactly (see lss_cli/data/loader.py)."""

from __future__ import annotations

import random


def seed_everything(seed: int, rank: int = 0) -> int:
    import numpy as np
    import torch

    s = seed + rank
    random.seed(s)
    np.random.seed(s % 2**32)
    torch.manual_seed(s)
    return s
