"""Asking an LLM for one class: the request, its retries with backoff, re-asks of an invalid reply,
and how requests are shaped for the server (`RequestAdapter`).

Worker threads of a `lss_cli.describe.run.DescribeRun` call `describe_class`; what they share
(the HTTP client, the rate gate, the adapter, the stop event) comes in one `CallContext`. A server
that refuses `max_tokens` or a non-default `temperature` (OpenAI's reasoning models) is answered
once per run, for all workers, and each record says what was sent.
"""


from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from lss_cli.config import DescribeConfig
from lss_cli.describe.client import (
    ChatReply,
    Client,
    LlmCallError,
    RequestShape,
    chat,
)
from lss_cli.describe.prompt import PromptTemplate
from lss_cli.describe.replies import ClipLengthCheck, InvalidReply, extract_descriptions, reask_message
from lss_cli.runtime.progress import log, warn

# Requests a run may spend on parameters a server refuses: one each for max_tokens and temperature.
ADAPTABLE_PARAMS = ("max_tokens", "temperature")

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


class Stopped(Exception):
    """The run is stopping (fatal error elsewhere, or interrupted): send nothing more."""


class RequestAdapter:
    """How every worker of a run sends its requests, adapted once per parameter the server refuses.

    Until one request has been answered with a completion, requests go out one at a time (the
    first is a probe): a server refusing a parameter then costs one extra request per refused
    parameter for the whole run, instead of one per worker already in flight. After that answer
    the shape is settled and workers send at once, reading `shape` without a lock (a reference
    read is atomic; only `adapt` replaces it, under `_lock`).
    """

    def __init__(self, temperature: float) -> None:
        self.shape = RequestShape()  # what the next request sends
        self._temperature = temperature  # the configured one, named when a server refuses it
        self._lock = threading.Lock()  # guards `shape` replacements
        self._probe = threading.Lock()  # held around each request until settled
        self._settled = threading.Event()  # set once a request of the current shape got a completion

    @contextmanager
    def turn(self) -> Iterator[RequestShape]:
        """The shape to send one request in; while unsettled, requests take turns."""
        if self._settled.is_set():
            yield self.shape
            return
        self._probe.acquire()
        if self._settled.is_set():
            # Settled while this worker waited: let the next waiter in at once. Holding the lock
            # for the request would send the workers queued behind the probe one by one, a full
            # round trip each (15 of them at concurrency 16: seconds before the pool fills).
            self._probe.release()
            yield self.shape
            return
        try:
            yield self.shape
        finally:
            self._probe.release()

    def settle(self) -> None:
        self._settled.set()

    def adapt(self, sent: RequestShape, e: LlmCallError) -> bool:
        """After a request sent in `sent` was refused (`e.refused`): True to send it again in `shape`."""
        assert e.refused is not None
        with self._lock:
            if self.shape != sent:  # another worker adapted meanwhile (a server that changed its mind)
                return True
            adapted = sent.without(e.refused)
            if adapted is None:  # nothing to change (a parameter we do not send, or already dropped)
                return False
            self.shape = adapted
        self._say(e)
        return True

    def _say(self, e: LlmCallError) -> None:
        """The one line per adaptation: what changed, and the server's reason."""
        if e.refused == "max_tokens":
            log(f"describe: the server refused 'max_tokens' ({e.message}); the completion budget is sent as "
                "'max_completion_tokens' for the rest of this run")
        else:
            warn(f"the server refused temperature {self._temperature} ({e.message}); no temperature is sent "
                 "for the rest of this run (the model's default applies)")


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
    resent: int = 0  # requests sent again because the server refused a parameter
    shape: RequestShape | None = None  # how the last request was sent (None: none was)


@dataclass
class CallContext:
    """What every worker shares."""

    cfg: DescribeConfig
    prompt: PromptTemplate
    client: Client
    secret: str
    length_check: ClipLengthCheck
    request: RequestAdapter  # how requests are sent, shared by all workers
    gate: RateGate = field(default_factory=RateGate)
    stop: threading.Event = field(default_factory=threading.Event)


def describe_class(ctx: CallContext, category: str) -> ClassOutcome:
    """Ask for one class until a reply validates, re-asking at most `max_reasks` times."""
    cfg, out = ctx.cfg, ClassOutcome(category)
    messages = ctx.prompt.messages(category, cfg.per_class)
    for ask in range(cfg.max_reasks + 1):
        try:
            reply = _call_with_retries(ctx, messages, out)
        except LlmCallError as e:
            out.error, out.fatal, out.status = e.message, e.kind == "fatal", e.status
            return out
        except Stopped:
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


def _call_with_retries(ctx: CallContext, messages: list[dict[str, str]], out: ClassOutcome) -> ChatReply:
    cfg = ctx.cfg
    for retry in range(cfg.max_retries + 1):
        ctx.gate.wait(ctx.stop)
        if ctx.stop.is_set():
            raise Stopped
        try:
            reply = _send(ctx, messages, out)
        except LlmCallError as e:
            if e.kind != "retry":
                raise
            if retry == cfg.max_retries:
                e.message = f"{e.message} (gave up after {retry + 1} requests)"
                raise
            out.retries += 1
            if e.retry_after is not None:
                ctx.gate.pause(min(e.retry_after, cfg.retry_max_delay))
            elif ctx.stop.wait(backoff_delay(retry, cfg.retry_base_delay, cfg.retry_max_delay)):
                raise Stopped from None
            continue
        out.prompt_tokens += reply.prompt_tokens
        out.completion_tokens += reply.completion_tokens
        return reply
    raise AssertionError("unreachable")


def _send(ctx: CallContext, messages: list[dict[str, str]], out: ClassOutcome) -> ChatReply:
    """One request in the run's current shape. A refused parameter is adapted (see RequestAdapter)
    and the request sent again; that resend is no retry: it spends none of `max_retries`."""
    cfg = ctx.cfg
    while True:
        with ctx.request.turn() as shape:
            if ctx.stop.is_set():  # may have waited for the probe while the run stopped
                raise Stopped
            out.calls += 1
            out.shape = shape
            try:
                reply = chat(ctx.client, cfg.model, messages, cfg.temperature, cfg.max_tokens, ctx.secret, shape)
            except LlmCallError as e:
                if e.refused is None or not ctx.request.adapt(shape, e):
                    raise
                out.resent += 1
                continue
            ctx.request.settle()
            return reply


# --------------------------------------------------------------------------------------------
# Planning (also what --dry-run shows)
# --------------------------------------------------------------------------------------------
