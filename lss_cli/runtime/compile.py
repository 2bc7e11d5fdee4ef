"""Guarded `torch.compile`: a compile failure falls back to eager with a warning, never kills a run.

Inductor compiles lazily at the first call, so the guard wraps the call, not `torch.compile`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from lss_cli.runtime.progress import warn


def _inductor_workarounds() -> None:
    # torch 2.11: compiling the 96-px tower crashed in tiling_utils.get_pw_red_splits (AssertionError);
    # disabling coalesce tiling analysis avoided it. Harmless where the option is absent.
    try:
        # A private module (absent in some builds): imported inside the guard, not at the top.
        import torch._inductor.config as inductor_config  # noqa: PLC0415

        if hasattr(inductor_config.triton, "coalesce_tiling_analysis"):
            inductor_config.triton.coalesce_tiling_analysis = False
    except Exception:  # noqa: BLE001 - a missing private module must not stop training
        pass


class GuardedCompile:
    """Calls the compiled function; on the first failure warns once and uses `fn` eagerly from then on."""

    def __init__(self, fn: Callable[..., Any], name: str, **compile_kwargs: Any):
        _inductor_workarounds()
        self.fn = fn
        self.name = name
        self.compiled: Callable[..., Any] | None = torch.compile(fn, **compile_kwargs)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.compiled is not None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as e:  # noqa: BLE001 - any compiler error means "run eagerly"
                warn(f"torch.compile of {self.name} failed ({type(e).__name__}: {str(e).splitlines()[0][:200]}); "
                     "continuing in eager mode")
                self.compiled = None
        return self.fn(*args, **kwargs)


def maybe_compile(fn: Callable[..., Any], name: str, enabled: bool, **kwargs: Any) -> Callable[..., Any]:
    # Static shapes: each view size compiles once. Automatic dynamic shapes crashed Inductor on
    # torch 2.14.1 when the same tower saw 64 then 32 px ("cannot determine truth value of Relational").
    kwargs.setdefault("dynamic", False)
    return GuardedCompile(fn, name, **kwargs) if enabled else fn
