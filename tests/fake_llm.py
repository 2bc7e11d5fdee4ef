"""A scripted OpenAI-compatible chat-completions server on 127.0.0.1, for tests and benchmarks.

Each request is matched to its action class by the first double-quoted text in its first user
message (the shipped prompt writes `Action category: "{category}"`). A script maps a class to
the actions its successive requests get; when a class's list runs out, `default` is used.
Everything the server saw is kept in `requests`, so tests can count calls exactly.

`refuse` makes the server answer like OpenAI does for its reasoning models: HTTP 400 for any
request sending `max_tokens` ("max_tokens") or a `temperature` other than 1 ("temperature"), with
OpenAI's error bodies. Such a refusal uses up no scripted action.

`max_in_flight` is the most requests the server held at once (arrived, latency not yet over).
`gather` checks that a client really sends that many at once: every request but the first is
held until `gather` are in flight together (at most `gather_timeout` seconds; a client that never
gets there is answered late, and `max_in_flight` says how far it got).
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Ok:
    """A valid reply: `descriptions`, or `per_class` generated ones."""

    descriptions: list[str] | None = None


@dataclass
class Text:
    """A reply whose message content is this text, whatever it is."""

    content: str
    finish_reason: str = "stop"


@dataclass
class Status:
    """An HTTP error status with an OpenAI-style JSON error body."""

    code: int
    retry_after: str | None = None
    message: str = "scripted error"
    error_code: str | None = None
    param: str | None = None  # the request parameter the error is about (OpenAI's `param`)


@dataclass
class Raw:
    """These bytes as the response body, sent as-is (e.g. HTTP 200 with a body that is not JSON)."""

    body: bytes
    code: int = 200
    content_type: str = "application/json"


@dataclass
class Stall:
    """Wait (until the server stops, at most `seconds`) before replying: trips client timeouts."""

    seconds: float = 60.0


@dataclass
class Drop:
    """Close the connection without any response."""


@dataclass
class Hold:
    """Block until `release()` or the server stops, then reply validly."""


Action = Ok | Text | Raw | Status | Stall | Drop | Hold

# OpenAI's answers (2025) to a reasoning model sent max_tokens / a temperature other than 1.
REFUSALS = {
    "max_tokens": Status(400, message="Unsupported parameter: 'max_tokens' is not supported with this model. "
                         "Use 'max_completion_tokens' instead.", error_code="unsupported_parameter",
                         param="max_tokens"),
    "temperature": Status(400, message="Unsupported value: 'temperature' does not support {value} with this "
                          "model. Only the default (1) value is supported.", error_code="unsupported_value",
                          param="temperature"),
}


@dataclass
class Seen:
    category: str | None
    time: float  # time.monotonic() on arrival
    authorization: str | None
    body: dict


def default_description(category: str, i: int) -> str:
    return f"A person doing {category}, seen in shot {i + 1}."


@dataclass
class FakeLLM:
    per_class: int = 3  # descriptions in a generated valid reply
    script: dict[str, list[Action]] = field(default_factory=dict)
    default: Action = field(default_factory=Ok)
    delay: float = 0.0  # seconds before every reply (server latency)
    prompt_tokens: int = 20  # usage reported per reply
    completion_tokens: int = 10
    describe: Callable[[str, int], str] = default_description
    refuse: tuple[str, ...] = ()  # keys of REFUSALS: parameters answered with HTTP 400, like OpenAI's reasoning models
    gather: int = 0  # > 1: hold every request but the first until this many are in flight at once
    gather_timeout: float = 10.0  # seconds a request is held at most for `gather`

    def __post_init__(self) -> None:
        self.requests: list[Seen] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._release = threading.Event()
        self._script = {k: list(v) for k, v in self.script.items()}
        self._server: ThreadingHTTPServer | None = None
        self.max_in_flight = 0  # the most requests held at once (arrived, latency not yet over)
        self._in_flight = 0
        self._arrived = 0
        self._changed = threading.Condition(self._lock)  # notified when `_in_flight` grows

    # -- lifecycle -----------------------------------------------------------------------------
    def __enter__(self) -> FakeLLM:
        self._server = _Server(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._release.set()
        assert self._server is not None
        self._server.shutdown()
        self._server.server_close()

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def release(self) -> None:
        self._release.set()

    # -- what was seen -------------------------------------------------------------------------
    def calls_for(self, category: str) -> int:
        return sum(1 for r in self.requests if r.category == category)

    def categories(self) -> list[str | None]:
        return [r.category for r in self.requests]

    # -- serving -------------------------------------------------------------------------------
    def _next_action(self, seen: Seen) -> Action:
        with self._lock:
            self.requests.append(seen)
            refusal = self._refusal(seen.body)
            if refusal is not None:  # checked before the script, as a real server validates first
                return refusal
            queue = self._script.get(seen.category or "")
            return queue.pop(0) if queue else self.default

    def _hold(self) -> None:
        """One request arrived: count it in flight and, for `gather`, wait for the others."""
        with self._changed:
            self._in_flight += 1
            self._arrived += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
            self._changed.notify_all()
            if self.gather > 1 and self._arrived > 1:
                self._changed.wait_for(lambda: self.max_in_flight >= self.gather or self._stop.is_set(),
                                       self.gather_timeout)

    def _done(self) -> None:
        """Counted out before the reply goes out, so a client never sees a reply still counted."""
        with self._lock:
            self._in_flight -= 1

    def _refusal(self, body: dict) -> Status | None:
        """The 400 for the first refused parameter this request sends (max_tokens first, as OpenAI)."""
        if "max_tokens" in self.refuse and "max_tokens" in body:
            return REFUSALS["max_tokens"]
        if "temperature" in self.refuse and body.get("temperature", 1) != 1:
            r = REFUSALS["temperature"]
            return Status(r.code, message=r.message.format(value=body["temperature"]), error_code=r.error_code,
                          param=r.param)
        return None

    def _completion(self, body: dict, content: str, finish_reason: str = "stop") -> dict:
        return {
            "id": f"chatcmpl-{len(self.requests)}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model", "fake"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                         "finish_reason": finish_reason}],
            "usage": {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens},
        }

    def _valid(self, body: dict, category: str | None, action: Ok) -> dict:
        descs = action.descriptions or [self.describe(category or "?", i) for i in range(self.per_class)]
        return self._completion(body, json.dumps({"descriptions": descs}))


def _category(body: dict) -> str | None:
    users = [m.get("content", "") for m in body.get("messages", []) if m.get("role") == "user"]
    match = re.search(r'"([^"]+)"', users[0]) if users else None
    return match.group(1) if match else None


class _Server(ThreadingHTTPServer):
    # socketserver's default backlog is 5: a client opening 16 connections at once gets some of
    # them dropped and retried by TCP a second later. Real servers listen with a long backlog.
    request_queue_size = 128


def _handler_for(fake: FakeLLM) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, like real servers
        # TCP_NODELAY, like real servers: the headers and the body go out in two writes, and with
        # Nagle's algorithm the body waits for the client's delayed ACK (~40 ms on every reply).
        disable_nagle_algorithm = True

        def log_message(self, *args) -> None:  # quiet
            pass

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))) or b"{}")
            if not self.path.endswith("/chat/completions"):
                return self._send(404, {"error": {"message": f"no route {self.path}"}})
            seen = Seen(_category(body), time.monotonic(), self.headers.get("Authorization"), body)
            action = fake._next_action(seen)
            fake._hold()
            try:
                if fake.delay:
                    time.sleep(fake.delay)
            finally:
                fake._done()
            self._act(action, body, seen.category)

        def _act(self, action: Action, body: dict, category: str | None) -> None:
            if isinstance(action, Drop):
                self.close_connection = True
                return
            if isinstance(action, Stall):
                fake._stop.wait(action.seconds)
            if isinstance(action, Hold):
                fake._release.wait()
            if isinstance(action, Status):
                headers = {"Retry-After": action.retry_after} if action.retry_after is not None else {}
                kind = "invalid_request_error" if action.code == 400 else "error"
                err = {"message": action.message, "type": kind, "param": action.param, "code": action.error_code}
                return self._send(action.code, {"error": err}, headers)
            if isinstance(action, Text):
                return self._send(200, fake._completion(body, action.content, action.finish_reason))
            if isinstance(action, Raw):
                return self._send_bytes(action.code, action.body, action.content_type)
            return self._send(200, fake._valid(body, category, action if isinstance(action, Ok) else Ok()))

        def _send(self, code: int, obj: dict, headers: dict[str, str] | None = None) -> None:
            self._send_bytes(code, json.dumps(obj).encode(), "application/json", headers)

        def _send_bytes(self, code: int, data: bytes, content_type: str,
                        headers: dict[str, str] | None = None) -> None:
            try:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(data)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(data)
            except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout): fine
                self.close_connection = True

    return Handler
