"""`lss describe`: an LLM writes N short visual descriptions of every action class (SPEC §2, §3.2).

A run is paid per token and may be rate-limited or killed, so:

- every finished class is appended to the output file at once (one flushed line), and a rerun
  skips every class already there without calling the API (resume is the default);
- requests that may succeed on a second try (429, 5xx, timeouts, dropped connections) are retried
  with exponential backoff and jitter, honouring the server's Retry-After; a 429 pauses every
  worker, not just the one that got it;
- replies are validated (parsed as the prompt asks, cleaned of numbering and bullets,
  de-duplicated, counted, each short enough for CLIP's 77-token context); an invalid reply is
  re-asked a bounded number of times in the same conversation, naming what was wrong;
- a class that still fails is recorded as failed with the reason; it is not done, so the next
  run asks for it again. Errors that would hit every class (bad key, unknown model, no quota)
  stop the run at once instead of spending requests on them.

Work runs on `concurrency` daemon threads sharing one HTTP client; only the main thread writes
the output file, so records never interleave.
"""

from __future__ import annotations

import hashlib
import json
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lss_cli import llm
from lss_cli.config import DescribeConfig
from lss_cli.descriptions import (
    DescriptionRecord,
    DescriptionsState,
    FailedRecord,
    append_record,
    read_state,
    repair_and_read_state,
)
from lss_cli.errors import InputFileError, LssError
from lss_cli.labels import load_label_set
from lss_cli.resources import load_prompt_yaml, prompts_dir
from lss_cli.runtime.progress import log, make_progress, warn

# --------------------------------------------------------------------------------------------
# Prompt templates
# --------------------------------------------------------------------------------------------

FORMATS = ("json", "lines")
_PROMPT_KEYS = ("name", "version", "format", "system", "user")


@dataclass(frozen=True)
class PromptTemplate:
    """A versioned prompt file. Only `{category}` and `{n}` are substituted; other braces are text."""

    name: str
    version: str
    system: str  # may be empty
    user: str  # must contain {category}
    format: str  # how replies are parsed: json | lines
    file: str  # as recorded: prompts/<file>.yaml for a shipped prompt, else the path given
    sha256: str  # of the file's bytes

    def messages(self, category: str, n: int) -> list[dict[str, str]]:
        msgs = [{"role": "system", "content": _fill(self.system, category, n)}] if self.system.strip() else []
        return [*msgs, {"role": "user", "content": _fill(self.user, category, n)}]


def _fill(text: str, category: str, n: int) -> str:
    # {n} first, so a class name that happens to contain "{n}" is left alone.
    return text.replace("{n}", str(n)).replace("{category}", category).strip()


def load_prompt(name_or_path: str) -> PromptTemplate:
    data, path, raw = load_prompt_yaml(
        name_or_path, keys=_PROMPT_KEYS, required=("name", "version", "user"),
        hint=f"a prompt file has the keys {', '.join(_PROMPT_KEYS)} (see prompts/describe_actions_v1.yaml)")
    fmt, system, user = data.get("format", "json"), str(data.get("system") or ""), str(data["user"])
    if fmt not in FORMATS:
        raise InputFileError(f"prompt file {path}: format {fmt!r} is not one of {', '.join(FORMATS)}")
    if "{category}" not in user or "{n}" not in system + user:
        raise InputFileError(f"prompt file {path}: the user template must contain {{category}}, and "
                             "{n} must appear in the system or user template",
                             hint="these placeholders are replaced by the class name and the count")
    shipped = path.resolve().parent == prompts_dir().resolve()
    return PromptTemplate(str(data["name"]), str(data["version"]), system, user, fmt,
                          f"prompts/{path.name}" if shipped else str(name_or_path),
                          hashlib.sha256(raw).hexdigest())


# --------------------------------------------------------------------------------------------
# Reply validation
# --------------------------------------------------------------------------------------------

CLIP_CONTEXT = 77  # tokens CLIP's text tower reads, start and end tokens included
# CLIP's BPE never makes more tokens than a text has non-space bytes, so an ASCII text with at
# most 75 non-space characters fits for certain and needs no tokenizer.
_SURELY_FITS_CHARS = CLIP_CONTEXT - 2
_BULLET = re.compile(r"^(?:[-*•·–—>]+|\(?\d{1,3}[.):\]]|#\d{1,3}[.:]?)\s*")
_QUOTES = "\"'“”‘’`"


class InvalidReply(Exception):
    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class ClipLengthCheck:
    """Which texts are too long for CLIP's 77-token context.

    Exact: long or non-ASCII texts are counted with open_clip's own BPE tokenizer (the one of
    ViT-B-16 and most open_clip models), through `lss_cli.models.clip` (the only open_clip
    importer), imported lazily and once. Short ASCII texts are cleared without it (see
    `_SURELY_FITS_CHARS`), so runs whose replies are all short never pay for importing torch.
    """

    def __init__(self, counter: Callable[[list[str]], list[int]] | None = None):
        self._counter = counter
        self._lock = threading.Lock()

    def too_long(self, texts: list[str]) -> list[bool]:
        unsure = [i for i, t in enumerate(texts) if not surely_fits_clip(t)]
        flags = [False] * len(texts)
        if unsure:
            counts = self._count()([texts[i] for i in unsure])
            for i, c in zip(unsure, counts, strict=True):
                flags[i] = c > CLIP_CONTEXT
        return flags

    def _count(self) -> Callable[[list[str]], list[int]]:
        with self._lock:  # one import, even when several workers need it at once
            if self._counter is None:
                from lss_cli.models.clip import clip_token_counts

                self._counter = clip_token_counts
        return self._counter


def surely_fits_clip(text: str) -> bool:
    return text.isascii() and sum(not c.isspace() for c in text) <= _SURELY_FITS_CHARS


def clean_description(text: str) -> str:
    """Strip numbering, bullets, wrapping quotes and extra whitespace."""
    text = " ".join(text.split())
    while True:
        stripped = _BULLET.sub("", text, count=1).strip()
        if len(stripped) >= 2 and stripped[0] in _QUOTES and stripped[-1] in _QUOTES:
            stripped = stripped[1:-1].strip()
        if stripped == text:
            return text
        text = stripped


def _dedup_key(text: str) -> str:
    return text.lower().rstrip(" .!").strip()


def reply_items(text: str | None, fmt: str) -> list[str]:
    """The raw description strings of a reply, as the prompt's format says to read them."""
    if text is None or not text.strip():
        raise InvalidReply("the reply was empty")
    if fmt == "lines":
        return text.splitlines()
    obj = _loads_lenient(text)
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = obj["descriptions"] if "descriptions" in obj else (lists[0] if len(lists) == 1 else None)
    if not isinstance(obj, list):
        raise InvalidReply('the JSON has no "descriptions" list')
    if not all(isinstance(x, str) for x in obj):
        raise InvalidReply('"descriptions" must be a list of strings')
    return obj


def _loads_lenient(text: str) -> Any:
    """JSON, also when wrapped in a ``` fence or in a sentence of chatter."""
    body = re.sub(r"^```[A-Za-z]*\s*|\s*```$", "", text.strip())
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        pass
    starts = [i for i in (body.find("{"), body.find("[")) if i >= 0]
    end = max(body.rfind("}"), body.rfind("]"))
    if starts and end > min(starts):
        try:
            return json.loads(body[min(starts):end + 1])
        except json.JSONDecodeError:
            pass
    raise InvalidReply("the reply is not valid JSON")


def extract_descriptions(text: str | None, n: int, fmt: str, length_check: ClipLengthCheck,
                         finish_reason: str | None = None) -> list[str]:
    """The first `n` usable descriptions of a reply, or InvalidReply saying why there are too few."""
    try:
        items = reply_items(text, fmt)
    except InvalidReply as e:
        if finish_reason == "length":
            raise InvalidReply(f"{e.reason} (the reply was cut off at max_tokens)") from None
        raise
    kept, seen, dupes = [], set(), 0
    for item in map(clean_description, items):
        key = _dedup_key(item)
        if key in seen:
            dupes += 1
        elif key:
            seen.add(key)
            kept.append(item)
    flags = length_check.too_long(kept)
    long_ = sum(flags)
    kept = [d for d, bad in zip(kept, flags, strict=True) if not bad]
    if len(kept) < n:
        notes = ([f"{dupes} duplicate(s)"] if dupes else []) + (
            [f"{long_} longer than CLIP's {CLIP_CONTEXT}-token context"] if long_ else [])
        raise InvalidReply(f"{len(kept)} usable descriptions, {n} asked for"
                           + (f" ({', '.join(notes)} dropped)" if notes else ""))
    return kept[:n]


def reask_message(reason: str, n: int, fmt: str) -> str:
    shape = 'a JSON object {"descriptions": [...]}' if fmt == "json" else "one description per line"
    return (f"Your reply could not be used: {reason}. Reply again with exactly {n} different "
            f"descriptions, each one short sentence, as {shape} and nothing else.")


# --------------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------------


def backoff_delay(retry: int, base: float, cap: float) -> float:
    """Exponential backoff with jitter: uniform in [d/2, d], d = min(cap, base * 2**retry)."""
    d = min(cap, base * 2.0 ** retry)
    return d / 2 + random.uniform(0, d / 2)


class RateGate:
    """A pause shared by all workers: after a 429 nobody sends until the server's wait is over."""

    def __init__(self) -> None:
        self._until = 0.0
        self._lock = threading.Lock()

    def pause(self, seconds: float) -> None:
        with self._lock:
            self._until = max(self._until, time.monotonic() + seconds)

    def wait(self, stop: threading.Event) -> None:
        while not stop.is_set():
            remaining = self._until - time.monotonic()
            if remaining <= 0:
                return
            stop.wait(remaining)


class _Stopped(Exception):
    """The run is stopping (fatal error elsewhere, or interrupted): send nothing more."""


# --------------------------------------------------------------------------------------------
# One class
# --------------------------------------------------------------------------------------------


@dataclass
class ClassOutcome:
    category: str
    descriptions: list[str] | None = None  # set on success
    error: str | None = None  # set on failure
    fatal: bool = False  # the error will hit every class: stop the run
    stopped: bool = False  # never finished because the run stopped (not a failure of the class)
    status: int | None = None  # HTTP status of the last error, if any
    calls: int = 0  # HTTP requests made, retries and re-asks included
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class _Context:
    """What every worker shares."""

    cfg: DescribeConfig
    prompt: PromptTemplate
    client: Any
    secret: str
    length_check: ClipLengthCheck
    gate: RateGate = field(default_factory=RateGate)
    stop: threading.Event = field(default_factory=threading.Event)


def describe_class(ctx: _Context, category: str) -> ClassOutcome:
    """Ask for one class until a reply validates, re-asking at most `max_reasks` times."""
    cfg, out = ctx.cfg, ClassOutcome(category)
    messages = ctx.prompt.messages(category, cfg.per_class)
    for ask in range(cfg.max_reasks + 1):
        try:
            reply = _call_with_retries(ctx, messages, out)
        except llm.LlmCallError as e:
            out.error, out.fatal, out.status = e.message, e.kind == "fatal", e.status
            return out
        except _Stopped:
            out.stopped = True
            return out
        try:
            out.descriptions = extract_descriptions(reply.text, cfg.per_class, ctx.prompt.format,
                                                    ctx.length_check, reply.finish_reason)
            return out
        except InvalidReply as e:
            if ask == cfg.max_reasks:
                out.error = f"no valid reply in {ask + 1} attempt(s); last: {e.reason}"
                return out
            out.reasks += 1
            messages = [*messages, {"role": "assistant", "content": reply.text or ""},
                        {"role": "user", "content": reask_message(e.reason, cfg.per_class, ctx.prompt.format)}]
    raise AssertionError("unreachable")


def _call_with_retries(ctx: _Context, messages: list[dict[str, str]], out: ClassOutcome) -> llm.ChatReply:
    cfg = ctx.cfg
    for retry in range(cfg.max_retries + 1):
        ctx.gate.wait(ctx.stop)
        if ctx.stop.is_set():
            raise _Stopped
        out.calls += 1
        try:
            reply = llm.chat(ctx.client, cfg.model, messages, cfg.temperature, cfg.max_tokens, ctx.secret)
        except llm.LlmCallError as e:
            if e.kind != "retry":
                raise
            if retry == cfg.max_retries:
                e.message = f"{e.message} (gave up after {retry + 1} requests)"
                raise
            out.retries += 1
            if e.retry_after is not None:
                ctx.gate.pause(min(e.retry_after, cfg.retry_max_delay))
            elif ctx.stop.wait(backoff_delay(retry, cfg.retry_base_delay, cfg.retry_max_delay)):
                raise _Stopped from None
            continue
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        return reply
    raise AssertionError("unreachable")


# --------------------------------------------------------------------------------------------
# Planning (also what --dry-run shows)
# --------------------------------------------------------------------------------------------


@dataclass
class DescribePlan:
    labels: list[str]  # the classes of this run (after --limit)
    todo: list[str]  # classes to ask for
    done: list[str]  # classes already in the output file (skipped)
    failed_before: dict[str, str]  # classes the last run gave up on -> its reason (they are in todo)
    prompt: PromptTemplate
    endpoint: llm.Endpoint
    out: Path
    bad_lines: int  # torn/unreadable lines in the existing output (their classes are redone)
    mismatched: dict[str, int]  # existing records made differently: what differs -> how many
    per_class: int

    def first_messages(self) -> list[dict[str, str]]:
        return self.prompt.messages((self.todo or self.labels)[0], self.per_class)

    def max_calls(self, cfg: DescribeConfig) -> int:
        return len(self.todo) * (cfg.max_reasks + 1) * (cfg.max_retries + 1)


def plan_describe(cfg: DescribeConfig, env: dict[str, str] | None = None) -> DescribePlan:
    """Check every input and work out what a run would do. Reads only; no network."""
    names, prompt, endpoint, out = _check_inputs(cfg, env)
    state = read_state(out) if out.is_file() and not cfg.overwrite else DescriptionsState()
    return _make_plan(cfg, names, prompt, endpoint, out, state)


def _check_inputs(cfg: DescribeConfig, env: dict[str, str] | None) -> tuple[list[str], PromptTemplate, llm.Endpoint, Path]:
    """(this run's classes, prompt, endpoint, output path), each checked; the output is not read."""
    names = list(load_label_set(cfg.labels).names)[: cfg.limit]
    prompt = load_prompt(cfg.prompt)
    endpoint = llm.resolve_endpoint(cfg.base_url, env)
    out = Path(cfg.out)
    if out.exists() and not out.is_file():
        raise InputFileError(f"--out {out} exists and is not a file", hint="name a .jsonl file")
    return names, prompt, endpoint, out


def _make_plan(cfg: DescribeConfig, names: list[str], prompt: PromptTemplate, endpoint: llm.Endpoint, out: Path,
               state: DescriptionsState) -> DescribePlan:
    done = [c for c in names if c in state.records]
    wanted = set(names)
    return DescribePlan(
        labels=names, todo=[c for c in names if c not in state.records], done=done,
        failed_before={c: f.error for c, f in state.failed.items() if c in wanted},
        prompt=prompt, endpoint=endpoint, out=out, bad_lines=state.bad_lines,
        mismatched=_mismatches([state.records[c] for c in done], cfg, prompt), per_class=cfg.per_class,
    )


def _mismatches(records: list[DescriptionRecord], cfg: DescribeConfig, prompt: PromptTemplate) -> dict[str, int]:
    checks = {
        "model": lambda r: r.model != cfg.model,
        "prompt (sha256)": lambda r: r.prompt_sha256 != prompt.sha256,
        "descriptions per class": lambda r: len(r.descriptions) != cfg.per_class,
    }
    counts = {what: sum(map(differs, records)) for what, differs in checks.items()}
    return {k: v for k, v in counts.items() if v}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


# A run whose first this-many finished classes all failed stops: the prompt or model is broken,
# and going on would spend requests on every remaining class for nothing.
EARLY_FAILURES_STOP = 10


@dataclass
class DescribeSummary:
    out: str
    model: str
    endpoint: str
    classes: int  # in this run's label list
    done: int  # finished by this run
    skipped: int  # already in the file before
    failed: dict[str, str]  # category -> reason
    not_attempted: int  # left undone because the run stopped early
    calls: int  # HTTP requests made
    retries: int
    reasks: int
    prompt_tokens: int
    completion_tokens: int
    wall_s: float
    fatal: str | None = None  # why the run stopped early
    fatal_hint: str | None = None


@dataclass
class _Tally:
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    fatal: str | None = None  # why the run stopped early
    fatal_hint: str | None = None

    def add(self, o: ClassOutcome) -> None:
        self.calls += o.calls
        self.retries += o.retries
        self.reasks += o.reasks
        self.prompt_tokens += o.prompt_tokens
        self.completion_tokens += o.completion_tokens


def run_describe(cfg: DescribeConfig, env: dict[str, str] | None = None) -> DescribeSummary:
    """Describe every class of `cfg.labels` not yet in `cfg.out`; append each result as it lands."""
    t0 = time.perf_counter()
    names, prompt, endpoint, out = _check_inputs(cfg, env)  # all checked before anything is written
    tally = _Tally()
    with _exclusive(out):
        # Read under the lock: a run that just ended may have added classes.
        plan = _make_plan(cfg, names, prompt, endpoint, out, _prepare_output(out, cfg))
        _warn_mismatched(plan)
        if plan.todo:
            log(f"describe: {len(plan.todo)} to ask for, {len(plan.done)} already done ({cfg.model})")
            _run_pool(plan, cfg, tally)
        else:
            log(f"describe: all {len(plan.labels)} classes are already in {plan.out}; nothing to do")
    finished = tally.done + len(tally.failed)
    return DescribeSummary(
        out=str(plan.out), model=cfg.model, endpoint=plan.endpoint.describe(), classes=len(plan.labels),
        done=tally.done, skipped=len(plan.done), failed=tally.failed,
        not_attempted=len(plan.todo) - finished, calls=tally.calls, retries=tally.retries,
        reasks=tally.reasks, prompt_tokens=tally.prompt_tokens, completion_tokens=tally.completion_tokens,
        wall_s=round(time.perf_counter() - t0, 3),
        fatal=tally.fatal, fatal_hint=tally.fatal_hint,
    )


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One writer per output file: a second run on the same file would pay for the same classes.

    An advisory lock on a hidden sidecar file (`.<out>.lock`, left in place); the OS drops it
    when the process dies, so a killed run never blocks the next one. No-op where fcntl is missing.
    """
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f".{out.name}.lock", "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LssError(f"another `lss describe` is writing to {out}",
                           hint="wait for it to finish (or stop it), or choose another --out") from None
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _prepare_output(out: Path, cfg: DescribeConfig) -> DescriptionsState:
    """What the output already holds, read once: --overwrite keeps the old file as <out>.bak and
    starts empty; a resumed file is first cut back to whole lines."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if cfg.overwrite:
        if out.is_file():
            backup = out.with_name(out.name + ".bak")
            out.replace(backup)
            log(f"describe: --overwrite: the previous {out} is kept as {backup}")
        return DescriptionsState()
    state, torn = repair_and_read_state(out)
    if torn is not None:
        warn(f"{out} ended in a torn line (an interrupted write); removed it, its class is redone")
    if state.bad_lines > 0:
        warn(f"{out}: {state.bad_lines} unreadable line(s) skipped; "
             "their classes are redone unless recorded elsewhere in the file")
    return state


def _warn_mismatched(plan: DescribePlan) -> None:
    if plan.mismatched:
        what = ", ".join(f"{k} ({v})" for k, v in plan.mismatched.items())
        warn(f"{plan.out} holds finished classes made with a different {what}; they are kept and "
             "skipped (use --overwrite to start over)")


def _run_pool(plan: DescribePlan, cfg: DescribeConfig, tally: _Tally) -> None:
    ctx = _Context(cfg, plan.prompt, llm.make_client(plan.endpoint, cfg.timeout), plan.endpoint.api_key,
                   ClipLengthCheck())
    tasks: queue.SimpleQueue[str] = queue.SimpleQueue()
    for category in plan.todo:
        tasks.put(category)
    results: queue.SimpleQueue[ClassOutcome | BaseException | None] = queue.SimpleQueue()
    workers = [threading.Thread(target=_worker, args=(ctx, tasks, results), daemon=True,
                                name=f"describe-{i}") for i in range(min(cfg.concurrency, len(plan.todo)))]
    for w in workers:
        w.start()
    try:
        _collect(plan, cfg, ctx, results, len(workers), tally)
    except BaseException as e:  # Ctrl-C or a bug: stop the workers, keep what already arrived
        ctx.stop.set()
        _drain(plan, cfg, results, tally)
        if isinstance(e, KeyboardInterrupt):
            warn(f"interrupted: the {tally.done} classes finished by this run are saved in {plan.out}; "
                 "rerun the same command to continue")
        raise
    finally:
        ctx.stop.set()


def _worker(ctx: _Context, tasks: queue.SimpleQueue, results: queue.SimpleQueue) -> None:
    try:
        while not ctx.stop.is_set():
            try:
                category = tasks.get_nowait()
            except queue.Empty:
                break
            outcome = describe_class(ctx, category)
            if outcome.fatal:  # stop the others now, not when the main thread gets to it
                ctx.stop.set()
            results.put(outcome)
    except BaseException as e:  # a bug: hand it to the main thread rather than hang it
        results.put(e)
    finally:
        results.put(None)  # this worker is finished


def _collect(plan: DescribePlan, cfg: DescribeConfig, ctx: _Context, results: queue.SimpleQueue,
             n_workers: int, tally: _Tally) -> None:
    """The main thread: write each outcome as it arrives, until every worker has finished."""
    extra = ("[red]{task.fields[failed]} failed", "{task.fields[tokens]} tokens")
    from rich.progress import TextColumn

    with make_progress(None, *map(TextColumn, extra)) as bar:
        task = bar.add_task("describe", total=len(plan.todo), failed=0, tokens=0)
        finished_workers = 0
        while finished_workers < n_workers:
            item = results.get()
            if item is None:
                finished_workers += 1
                continue
            if isinstance(item, BaseException):
                raise item
            _handle(plan, cfg, item, tally, ctx.stop)
            bar.update(task, completed=tally.done + len(tally.failed), failed=len(tally.failed),
                       tokens=tally.prompt_tokens + tally.completion_tokens)


def _drain(plan: DescribePlan, cfg: DescribeConfig, results: queue.SimpleQueue, tally: _Tally) -> None:
    """Write the outcomes that already arrived (they are paid for) before giving up."""
    while True:
        try:
            item = results.get_nowait()
        except queue.Empty:
            return
        if isinstance(item, ClassOutcome):
            _handle(plan, cfg, item, tally, None)


def _handle(plan: DescribePlan, cfg: DescribeConfig, o: ClassOutcome, tally: _Tally,
            stop: threading.Event | None) -> None:
    tally.add(o)
    usage = {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "requests": o.calls}
    if o.descriptions is not None:
        append_record(plan.out, DescriptionRecord(
            o.category, o.descriptions, cfg.model, plan.prompt.file, plan.prompt.sha256, cfg.temperature,
            usage=usage))
        tally.done += 1
    elif o.fatal:  # not this class's fault, so no failure record: the class simply stays undone
        _stop_run(tally, stop, o.error or "unknown error", _fatal_hint(o.status))
    elif not o.stopped:
        reason = o.error or "unknown error"
        append_record(plan.out, FailedRecord(o.category, reason, cfg.model, plan.prompt.file,
                                             plan.prompt.sha256, usage=usage))
        tally.failed[o.category] = reason
        warn(f"{o.category!r} failed: {reason}")
        if tally.done == 0 and len(tally.failed) == EARLY_FAILURES_STOP:
            _stop_run(tally, stop, f"the first {EARLY_FAILURES_STOP} classes all failed (last: {reason})",
                      "the model or prompt does not work as asked: check them on a few classes with "
                      "--limit 3 (and --dry-run to see the prompt) before spending more requests")


def _stop_run(tally: _Tally, stop: threading.Event | None, reason: str, hint: str) -> None:
    if tally.fatal is None:
        tally.fatal, tally.fatal_hint = reason, hint
        warn(f"stopping: {reason}")
    if stop is not None:
        stop.set()


def _fatal_hint(status: int | None) -> str:
    if status == 401:
        return "the server rejected the API key: check OPENAI_API_KEY (and --base-url)"
    if status == 403:
        return "the key may not use this model or endpoint: check the account's permissions"
    if status == 404:
        return "the server does not know this model or path: check --model and --base-url (it usually ends in /v1)"
    if status == 429:
        return "the account is out of quota: check billing, then rerun (finished classes are kept)"
    return "fix the cause and rerun the same command: finished classes are kept and skipped"
