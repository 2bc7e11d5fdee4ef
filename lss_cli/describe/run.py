"""Planning and running `lss describe`: what to ask for, then asking on a pool of worker threads.

`plan_describe` checks every input and works out what a run would do without sending anything
(it is also what `--dry-run` shows). `run_describe` takes the output file's lock, reads what is
already done, and hands the rest to a `DescribeRun`: `concurrency` daemon threads share one HTTP
client and only ask (`lss_cli.describe.calls.describe_class`, with retries and re-asks); only
the main thread writes the output file and the tally, so records never interleave and neither
needs a lock.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rich.progress import TextColumn

from lss_cli.config import DescribeConfig
from lss_cli.describe.calls import (
    ADAPTABLE_PARAMS,
    CallContext,
    ClassOutcome,
    RequestAdapter,
    describe_class,
)
from lss_cli.describe.client import (
    Endpoint,
    RequestShape,
    make_client,
    resolve_endpoint,
)
from lss_cli.describe.prompt import PromptTemplate, load_prompt
from lss_cli.describe.records import (
    DescriptionRecord,
    DescriptionsState,
    FailedRecord,
    append_record,
    read_state,
    repair_and_read_state,
)
from lss_cli.describe.replies import ClipLengthCheck
from lss_cli.errors import InputFileError, LssError
from lss_cli.labels import load_label_set
from lss_cli.runtime.progress import log, make_progress, warn

try:
    import fcntl
except ImportError:  # Windows: no advisory locks, so runs on the same file are not kept apart
    fcntl = None

# A run whose first this-many finished classes all failed stops: the prompt or model is broken,
# and going on would spend requests on every remaining class for nothing.
EARLY_FAILURES_STOP = 10
@dataclass
class DescribePlan:
    labels: list[str]  # the classes of this run (after --limit)
    todo: list[str]  # classes to ask for
    done: list[str]  # classes already in the output file (skipped)
    failed_before: dict[str, str]  # classes the last run gave up on -> its reason (they are in todo)
    prompt: PromptTemplate
    endpoint: Endpoint
    out: Path
    bad_lines: int  # torn/unreadable lines in the existing output (their classes are redone)
    mismatched: dict[str, int]  # existing records made differently: what differs -> how many
    unknown_provenance: int  # finished classes whose records carry no `lss describe` provenance (hand-written)
    per_class: int

    def first_messages(self) -> list[dict[str, str]]:
        return self.prompt.messages((self.todo or self.labels)[0], self.per_class)

    def max_calls(self, cfg: DescribeConfig) -> int:
        """Every retry and re-ask of every class, plus one request per parameter a server may refuse
        (once per run; a server that accepts a parameter and later refuses it may cost more)."""
        per_run = len(ADAPTABLE_PARAMS) if self.todo else 0
        return len(self.todo) * (cfg.max_reasks + 1) * (cfg.max_retries + 1) + per_run


def plan_describe(cfg: DescribeConfig, env: dict[str, str] | None = None) -> DescribePlan:
    """Check every input and work out what a run would do. Reads only; no network."""
    names, prompt, endpoint, out = _check_inputs(cfg, env)
    state = read_state(out) if out.is_file() and not cfg.overwrite else DescriptionsState()
    return _make_plan(cfg, names, prompt, endpoint, out, state)


def _check_inputs(cfg: DescribeConfig, env: dict[str, str] | None) -> tuple[list[str], PromptTemplate, Endpoint, Path]:
    """(this run's classes, prompt, endpoint, output path), each checked; the output is not read."""
    names = list(load_label_set(cfg.labels).names)[: cfg.limit]
    prompt = load_prompt(cfg.prompt)
    endpoint = resolve_endpoint(cfg.base_url, env)
    out = Path(cfg.out)
    if out.exists() and not out.is_file():
        raise InputFileError(f"--out {out} exists and is not a file", hint="name a .jsonl file")
    try:
        out.resolve()  # the lock is taken on the real path
    except (OSError, RuntimeError):  # RuntimeError: a symlink loop (Python < 3.13)
        raise InputFileError(f"--out {out}: its path cannot be resolved (a symlink loop?)",
                             hint="point --out at a regular file or a symlink to one") from None
    return names, prompt, endpoint, out


def _make_plan(cfg: DescribeConfig, names: list[str], prompt: PromptTemplate, endpoint: Endpoint, out: Path,
               state: DescriptionsState) -> DescribePlan:
    done = [c for c in names if c in state.records]
    wanted = set(names)
    return DescribePlan(
        labels=names, todo=[c for c in names if c not in state.records], done=done,
        failed_before={c: f.error for c, f in state.failed.items() if c in wanted},
        prompt=prompt, endpoint=endpoint, out=out, bad_lines=state.bad_lines,
        mismatched=_mismatches([state.records[c] for c in done], cfg, prompt),
        unknown_provenance=sum(not state.records[c].has_provenance for c in done), per_class=cfg.per_class,
    )


def _mismatches(records: list[DescriptionRecord], cfg: DescribeConfig, prompt: PromptTemplate) -> dict[str, int]:
    """What differs between the finished records and this run's settings -> how many records.

    Records without `lss describe` provenance (written by hand or by another tool) are compared
    on their count only: their model and prompt are unknown, not different. Like every finished
    class they are kept and skipped, never redone: they are the user's own descriptions, and
    replacing them by an LLM's would undo that choice (--overwrite starts over if that is wanted).
    """
    checks = {
        "model": lambda r: r.has_provenance and r.model != cfg.model,
        "prompt (sha256)": lambda r: r.has_provenance and r.prompt_sha256 != prompt.sha256,
        "descriptions per class": lambda r: len(r.descriptions) != cfg.per_class,
    }
    counts = {what: sum(map(differs, records)) for what, differs in checks.items()}
    return {k: v for k, v in counts.items() if v}


# --------------------------------------------------------------------------------------------
# The run
# --------------------------------------------------------------------------------------------


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
    resent: int = 0  # requests sent again after the server refused a parameter (in `calls`)
    request: dict[str, object] | None = None  # how requests were sent last (None: none was sent)


@dataclass
class _Tally:
    done: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    retries: int = 0
    reasks: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    resent: int = 0
    fatal: str | None = None  # why the run stopped early
    fatal_hint: str | None = None

    def add(self, o: ClassOutcome) -> None:
        self.calls += o.calls
        self.resent += o.resent
        self.retries += o.retries
        self.reasks += o.reasks
        self.prompt_tokens += o.prompt_tokens
        self.completion_tokens += o.completion_tokens


def run_describe(cfg: DescribeConfig, env: dict[str, str] | None = None) -> DescribeSummary:
    """Describe every class of `cfg.labels` not yet in `cfg.out`; append each result as it lands."""
    t0 = time.perf_counter()
    names, prompt, endpoint, out = _check_inputs(cfg, env)  # all checked before anything is written
    with _exclusive(out):
        # Read under the lock: a run that just ended may have added classes.
        plan = _make_plan(cfg, names, prompt, endpoint, out, _prepare_output(out, cfg))
        _warn_mismatched(plan)
        run = DescribeRun(plan, cfg)
        if plan.todo:
            log(f"describe: {len(plan.todo)} to ask for, {len(plan.done)} already done ({cfg.model})")
            run.run()
        else:
            log(f"describe: all {len(plan.labels)} classes are already in {plan.out}; nothing to do")
    return run.summary(round(time.perf_counter() - t0, 3))


@contextmanager
def _exclusive(out: Path) -> Iterator[None]:
    """One writer per output file: a second run on the same file would pay for the same classes.

    An advisory lock on a hidden sidecar file (`.<out>.lock`, left in place); the OS drops it
    when the process dies, so a killed run never blocks the next one. No-op where fcntl is missing.
    The sidecar sits beside the output's real path (symlinks resolved), so two runs naming one
    file differently (a symlink, a linked folder, `./` or `..`) still take the same lock.
    """
    if fcntl is None:
        yield
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    real = out.resolve()
    real.parent.mkdir(parents=True, exist_ok=True)  # a symlink may point into a folder not made yet
    with open(real.parent / f".{real.name}.lock", "a") as f:
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
    if plan.unknown_provenance:
        log(f"describe: {plan.unknown_provenance} finished class(es) in {plan.out} carry no `lss describe` "
            "provenance (written by hand or by another tool); they are kept and skipped")
    if plan.mismatched:
        what = ", ".join(f"{k} ({v})" for k, v in plan.mismatched.items())
        warn(f"{plan.out} holds finished classes made with a different {what}; they are kept and "
             "skipped (use --overwrite to start over)")


# What a worker hands the main thread: a finished class, a bug to re-raise, or None ("I am done").
_Result = ClassOutcome | BaseException | None


class DescribeRun:
    """One run's asking and writing: the plan, the config, the tally, and the stop event.

    Workers take classes from a queue and put outcomes on another; the main thread (`run`)
    writes each outcome as it arrives and is the only one to touch the tally and the file.
    Setting `stop` makes every worker finish its current request and send nothing more.
    """

    def __init__(self, plan: DescribePlan, cfg: DescribeConfig) -> None:
        self.plan, self.cfg = plan, cfg
        self.tally = _Tally()
        self.stop = threading.Event()
        self.request = RequestAdapter(cfg.temperature)
        self._tasks: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._results: queue.SimpleQueue[_Result] = queue.SimpleQueue()
        # At most `concurrency` classes asked and not yet written: the main thread decides when the
        # run stops (e.g. after the first EARLY_FAILURES_STOP failures), and a worker must not run
        # ahead of it by more than that, however slowly the main thread writes.
        self._slots = threading.Semaphore(cfg.concurrency)

    def run(self) -> None:
        """Ask for every class of the plan's todo list; return when all are written (or the run stopped)."""
        ctx = CallContext(self.cfg, self.plan.prompt, make_client(self.plan.endpoint, self.cfg.timeout),
                       self.plan.endpoint.api_key, ClipLengthCheck(), self.request, stop=self.stop)
        for category in self.plan.todo:
            self._tasks.put(category)
        workers = [threading.Thread(target=self._worker, args=(ctx,), daemon=True, name=f"describe-{i}")
                   for i in range(min(self.cfg.concurrency, len(self.plan.todo)))]
        for w in workers:
            w.start()
        try:
            self._collect(len(workers))
        except BaseException as e:  # Ctrl-C or a bug: stop the workers, keep what already arrived
            self.stop.set()
            self._slots.release(len(workers))  # wake the workers waiting for a slot: they see the stop
            self._drain()
            if isinstance(e, KeyboardInterrupt):
                warn(f"interrupted: the {self.tally.done} classes finished by this run are saved in "
                     f"{self.plan.out}; rerun the same command to continue")
            raise
        finally:
            self.stop.set()

    def summary(self, wall_s: float) -> DescribeSummary:
        plan, tally = self.plan, self.tally
        return DescribeSummary(
            out=str(plan.out), model=self.cfg.model, endpoint=plan.endpoint.describe(), classes=len(plan.labels),
            done=tally.done, skipped=len(plan.done), failed=tally.failed,
            not_attempted=len(plan.todo) - tally.done - len(tally.failed), calls=tally.calls,
            retries=tally.retries, reasks=tally.reasks, prompt_tokens=tally.prompt_tokens,
            completion_tokens=tally.completion_tokens, wall_s=wall_s,
            fatal=tally.fatal, fatal_hint=tally.fatal_hint, resent=tally.resent,
            request=self._sent(self.request.shape) if tally.calls else None,
        )

    def _sent(self, shape: RequestShape | None) -> dict[str, object] | None:
        """The provenance of requests sent in `shape`: the sampling parameters, what was refused."""
        return None if shape is None else shape.provenance(self.cfg.temperature, self.cfg.max_tokens)

    def _worker(self, ctx: CallContext) -> None:
        """A worker thread: ask for classes until none are left or the run stops."""
        try:
            while not self.stop.is_set():
                self._slots.acquire()  # released by the main thread once an outcome is written
                if self.stop.is_set():
                    break
                try:
                    category = self._tasks.get_nowait()
                except queue.Empty:
                    break
                outcome = describe_class(ctx, category)
                if outcome.fatal:  # stop the others now, not when the main thread gets to it
                    self.stop.set()
                self._results.put(outcome)
        except BaseException as e:  # a bug: hand it to the main thread rather than hang it
            self._results.put(e)
        finally:
            self._results.put(None)  # this worker is finished

    def _collect(self, n_workers: int) -> None:
        """The main thread: write each outcome as it arrives, until every worker has finished."""
        extra = ("[red]{task.fields[failed]} failed", "{task.fields[tokens]} tokens")
        with make_progress(None, *map(TextColumn, extra)) as bar:
            task = bar.add_task("describe", total=len(self.plan.todo), failed=0, tokens=0)
            finished_workers = 0
            while finished_workers < n_workers:
                item = self._results.get()
                if item is None:
                    finished_workers += 1
                    continue
                if isinstance(item, BaseException):
                    raise item
                self._handle(item)
                # One slot back per written outcome; all of them once the run stops, so that no
                # worker keeps waiting for one.
                self._slots.release(n_workers if self.stop.is_set() else 1)
                t = self.tally
                bar.update(task, completed=t.done + len(t.failed), failed=len(t.failed),
                           tokens=t.prompt_tokens + t.completion_tokens)

    def _drain(self) -> None:
        """Write the outcomes that already arrived (they are paid for) before giving up."""
        while True:
            try:
                item = self._results.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, ClassOutcome):
                self._handle(item)

    def _handle(self, o: ClassOutcome) -> None:
        """Count one outcome and write its record: success, failure, or a reason to stop the run."""
        self.tally.add(o)
        usage = {"prompt_tokens": o.prompt_tokens, "completion_tokens": o.completion_tokens, "requests": o.calls}
        if o.descriptions is not None:
            sent_temperature = o.shape is None or o.shape.send_temperature
            append_record(self.plan.out, DescriptionRecord(
                o.category, o.descriptions, self.cfg.model, self.plan.prompt.file, self.plan.prompt.sha256,
                self.cfg.temperature if sent_temperature else None, usage=usage, request=self._sent(o.shape)))
            self.tally.done += 1
        elif o.fatal:  # not this class's fault, so no failure record: the class simply stays undone
            self._stop_run(o.error or "unknown error", _fatal_hint(o.status))
        elif not o.stopped:
            self._fail(o.category, o.error or "unknown error", usage, self._sent(o.shape))

    def _fail(self, category: str, reason: str, usage: dict[str, int], request: dict[str, object] | None) -> None:
        """Record a class the run gave up on; stop when no class has worked at all yet."""
        append_record(self.plan.out, FailedRecord(category, reason, self.cfg.model, self.plan.prompt.file,
                                                  self.plan.prompt.sha256, usage=usage, request=request))
        self.tally.failed[category] = reason
        warn(f"{category!r} failed: {reason}")
        if self.tally.done == 0 and len(self.tally.failed) == EARLY_FAILURES_STOP:
            self._stop_run(f"the first {EARLY_FAILURES_STOP} classes all failed (last: {reason})",
                           "the model or prompt does not work as asked: check them on a few classes with "
                           "--limit 3 (and --dry-run to see the prompt) before spending more requests")

    def _stop_run(self, reason: str, hint: str) -> None:
        """Stop the run (the first reason is the one reported)."""
        if self.tally.fatal is None:
            self.tally.fatal, self.tally.fatal_hint = reason, hint
            warn(f"stopping: {reason}")
        self.stop.set()


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
