"""The demo pipeline on built-in defaults (what `make demo` runs)."""

from __future__ import annotations

from pathlib import Path

from lss_cli.runtime.progress import log
from lss_cli.runtime.rundir import default_run_dir, prepare_run_dir


def run_demo(output_dir: str | Path | None = None) -> dict:
    """Generate the synthetic dataset into <run>/data. Returns what was written."""
    from lss_cli.data.synth import SynthSpec, generate

    run = prepare_run_dir(output_dir or default_run_dir("demo"))
    log(f"demo: writing to {run}")
    data = generate(run / "data", SynthSpec())
    return {"run_dir": str(run), "data": data}
