"""Seeding: one seed for the run, `seed + rank` per process, derived seeds for workers."""

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


def worker_init_fn(worker_id: int) -> None:
    """DataLoader worker seeding: torch already gives each worker base_seed + id; mirror it elsewhere."""
    import numpy as np
    import torch

    s = torch.initial_seed() % 2**32
    random.seed(s)
    np.random.seed(s)


def generator(seed: int):
    import torch

    g = torch.Generator()
    g.manual_seed(seed)
    return g
