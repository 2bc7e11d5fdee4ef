"""`lss describe`: LLM-written visual descriptions of every action class (JSONL, resumable)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from lss_cli.cli import app
from lss_cli.cli.options import DryRun, Json, Quiet, config_default, overrides, split_config_args
from lss_cli.config import DescribeConfig

if TYPE_CHECKING:
    from lss_cli.describe.run import DescribePlan, DescribeSummary

ConfigArgs = overrides("per_class=5")


def _default(key: str, meaning: str | None = None) -> str:
    return config_default(DescribeConfig, key, meaning)


@app.command("describe")
def describe(
    args: ConfigArgs = None,
    labels: Annotated[str | None, typer.Option("--labels", help="Built-in label set (e.g. lss530, ucf101) or a file with one class name per line."
                                                      + _default("labels"))] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Output JSONL; resumed if it exists." + _default("out"))] = None,
    prompt: Annotated[str | None, typer.Option("--prompt", help="Prompt file in prompts/ (name) or a path." + _default("prompt"))] = None,
    model: Annotated[str | None, typer.Option("--model", help="Model name as the server knows it." + _default("model"))] = None,
    per_class: Annotated[int | None, typer.Option("--per-class", help="Descriptions per class." + _default("per_class"))] = None,
    temperature: Annotated[float | None, typer.Option("--temperature", help="Sampling temperature." + _default("temperature"))] = None,
    max_tokens: Annotated[int | None, typer.Option("--max-tokens", help="Completion budget per request." + _default("max_tokens"))] = None,
    base_url: Annotated[str | None, typer.Option("--base-url", help="OpenAI-compatible endpoint."
                                                        + _default("base_url", "$OPENAI_BASE_URL, else api.openai.com"))] = None,
    concurrency: Annotated[int | None, typer.Option("--concurrency", help="Requests in flight at once." + _default("concurrency"))] = None,
    timeout: Annotated[float | None, typer.Option("--timeout", help="Seconds per request." + _default("timeout"))] = None,
    max_retries: Annotated[int | None, typer.Option("--max-retries", help="Retries per request on 429/5xx/timeouts." + _default("max_retries"))] = None,
    max_reasks: Annotated[int | None, typer.Option("--max-reasks", help="Re-asks per class after an invalid reply." + _default("max_reasks"))] = None,
    limit: Annotated[int | None, typer.Option("--limit", help="Only the first N classes." + _default("limit", "all classes"))] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Start over (the old file is kept as `<out>.bak`).")] = False,
    dry_run: DryRun = False,
    quiet: Quiet = False,
    json_out: Json = False,
) -> None:
    """Ask an LLM for short visual descriptions of each action class.

    Works with OpenAI (key from OPENAI_API_KEY, never from a flag or file) and any
    OpenAI-compatible server (vLLM, Ollama, llama.cpp) via --base-url, which needs no real key.
    Finished classes are appended at once; rerunning skips them and retries failed ones.
    Exit code 1 when some classes failed (they are listed). A server that refuses `max_tokens`
    or a non-default temperature (reasoning models) is answered once per run: the budget is sent
    as `max_completion_tokens`, no temperature is sent; each record's `request` says what was.

    Examples:

        lss describe --labels lss530 --out descriptions.jsonl --model gpt-4o-mini

        lss describe --labels ucf101 --base-url http://localhost:11434/v1 --model llama3.1 --dry-run
    """
    from lss_cli.config import DescribeConfig, load_config
    from lss_cli.runtime.progress import set_quiet

    set_quiet(quiet)
    path, overrides = split_config_args(args)
    cfg = load_config(DescribeConfig, path, overrides, flags={
        "labels": labels, "out": str(out) if out is not None else None, "prompt": prompt, "model": model,
        "per_class": per_class, "temperature": temperature, "max_tokens": max_tokens, "base_url": base_url,
        "concurrency": concurrency, "timeout": timeout, "max_retries": max_retries, "max_reasks": max_reasks,
        "limit": limit, "overwrite": True if overwrite else None,
    })
    if dry_run:
        from lss_cli.describe.run import plan_describe

        return _render_plan(plan_describe(cfg), cfg, json_out)
    from lss_cli.describe.run import run_describe

    summary = run_describe(cfg)
    _render_summary(summary, json_out)
    _exit_status(summary)


def _render_plan(plan: DescribePlan, cfg: DescribeConfig, json_out: bool) -> None:
    from lss_cli.cli.render import kv_table, print_json, stdout

    info = {
        "classes": len(plan.labels), "to_ask": len(plan.todo), "already_done": plan.done,
        "without_provenance": plan.unknown_provenance, "failed_last_time": plan.failed_before, "calls": len(plan.todo),
        "calls_at_most": plan.max_calls(cfg), "endpoint": plan.endpoint.describe(), "model": cfg.model,
        "prompt_file": plan.prompt.file, "prompt_sha256": plan.prompt.sha256, "out": str(plan.out),
        "first_prompt": plan.first_messages(),
    }
    if json_out:
        return print_json(info)
    done = ", ".join(plan.done[:20]) + (f", ... ({len(plan.done) - 20} more)" if len(plan.done) > 20 else "")
    stdout.print(kv_table("lss describe --dry-run (no request sent)", {
        "classes": f"{len(plan.labels)} ({len(plan.todo)} to ask for, {len(plan.done)} already done)",
        "requests": f"{len(plan.todo)} (at most {info['calls_at_most']} with every retry and re-ask)",
        "already done": done or "none",
        **({"without provenance": f"{plan.unknown_provenance} of them (written by hand or another tool; kept)"}
           if plan.unknown_provenance else {}),
        "failed last time": ", ".join(plan.failed_before) or "none",
        "endpoint": f"{info['endpoint']}  model {cfg.model}",
        "prompt": f"{plan.prompt.file}  sha256 {plan.prompt.sha256[:12]}",
        "out": str(plan.out),
    }))
    stdout.print(f"\nFirst request ({(plan.todo or plan.labels)[0]!r}):", markup=False)
    for m in info["first_prompt"]:
        stdout.print(f"--- {m['role']} ---\n{m['content']}", markup=False)


def _render_summary(s: DescribeSummary, json_out: bool) -> None:
    from dataclasses import asdict

    from lss_cli.cli.render import kv_table, print_json, stdout

    if json_out:
        return print_json(asdict(s))
    rows = {
        "classes": f"{s.classes}: {s.done} done, {s.skipped} skipped (already done), {len(s.failed)} failed"
                   + (f", {s.not_attempted} not attempted" if s.not_attempted else ""),
        "requests": f"{s.calls} ({s.retries} retries, {s.reasks} re-asks"
                    + (f", {s.resent} resent after a refused parameter)" if s.resent else ")"),
        **({"sent": _sent_text(s.request)} if s.request else {}),
        "tokens": f"{s.prompt_tokens} in / {s.completion_tokens} out",
        "wall time": f"{s.wall_s:.1f} s",
        "model": f"{s.model} at {s.endpoint}",
        "out": s.out,
    }
    stdout.print(kv_table("lss describe", rows))


def _sent_text(request: dict[str, object]) -> str:
    """`{"max_completion_tokens": 1024, "refused": ["max_tokens", "temperature"]}` ->
    `max_completion_tokens=1024, no temperature (refused by the server: max_tokens, temperature)`."""
    params = {k: v for k, v in request.items() if k != "refused"}
    text = ", ".join(f"{k}={v}" for k, v in params.items()) + ("" if "temperature" in params else ", no temperature")
    refused = request.get("refused")
    return text + (f" (refused by the server: {', '.join(map(str, refused))})" if isinstance(refused, list) else "")


def _exit_status(s: DescribeSummary) -> None:
    from lss_cli.errors import LssError

    if s.fatal:
        raise LssError(f"stopped early: {s.fatal}", hint=s.fatal_hint)
    if s.failed:
        shown = list(s.failed.items())[:10]
        listing = "; ".join(f"{c!r}: {why}" for c, why in shown)
        rest = list(s.failed)[10:]
        if rest:  # every name is listed; the reasons of the rest are in the file's failure records
            listing += f"; and {', '.join(map(repr, rest))} (reasons in {s.out})"
        raise LssError(f"{len(s.failed)} class(es) failed: {listing}",
                       hint="rerun the same command: finished classes are skipped and only these are asked again")
