"""The evaluation forward pass: the video encoder at one fixed batch shape, optionally compiled.

Feature extraction is the GPU-heavy half of every eval (UCF101 x 3 splits, Kinetics val), and on
a GPU the eager encoder leaves a large share of the chip idle in memory-bound LayerNorm / GELU /
transpose kernels, which `torch.compile` fuses (benchmarks/eval_forward.py measures both). A
compiled graph is specialised to its input shape, so the last, smaller batch of a list is padded
up to the full batch with zero clips instead of compiling a second graph (a ViT-B/16 compile
takes tens of seconds; padding one batch costs one batch's compute at most). Clips are
independent through the encoder (no batch statistics), so padding cannot change a real clip's
features. A compile failure falls back to eager with a warning (`runtime.compile`).
"""

from __future__ import annotations

import functools

import torch

from lss_cli.runtime.compile import maybe_compile


class EvalForward:
    """`fn(video [N, T, 3, S, S]) -> [N, D]` for N <= `batch`, always run at N = `batch`.

    `kind` "proj": projected and L2-normalised (zero-shot, retrieval); "pre-proj": the pooled
    width-dimensional feature before the projection (linear probe)."""

    def __init__(self, encoder: torch.nn.Module, kind: str, batch: int, compile: bool = False, **compile_kwargs):
        if kind not in ("proj", "pre-proj"):
            raise ValueError(f"feature kind must be 'proj' or 'pre-proj', got {kind!r}")
        self.batch = batch
        encode = functools.partial(encoder.encode, proj=kind == "proj", normalize=kind == "proj")
        self.fn = maybe_compile(encode, "the eval forward", compile, **compile_kwargs)

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        n = video.shape[0]
        if n > self.batch:
            raise ValueError(f"{n} clips in one forward, more than the fixed batch {self.batch}")
        if n < self.batch:
            pad = video.new_zeros((self.batch - n, *video.shape[1:]))
            video = torch.cat([video, pad])  # [batch, T, 3, S, S]
        return self.fn(video)[:n]
