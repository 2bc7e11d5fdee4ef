"""The LLM client: one chat-completion call against any OpenAI-compatible server.

This is the only module that imports `openai`. It does no retrying itself (the client is built
with `max_retries=0`): `lss_cli.describe.calls` owns retries, backoff and call counting, so every HTTP
request is accounted for. Errors are mapped to three kinds:

- `retry`: worth trying again (429, 408/409, 5xx, timeouts, dropped connections, a success
  status whose body is not JSON: a proxy's error page, a body cut short), with the
  server's Retry-After when it sent one;
- `class`: this request is bad but others may work (e.g. 400, 422);
- `fatal`: every request will fail the same way (bad key, no such model, quota used up): stop.

A 400 saying that a request parameter is not supported (OpenAI's reasoning models refuse
`max_tokens`, wanting `max_completion_tokens`, and any `temperature` but the default) names that
parameter in `LlmCallError.refused`; `RequestShape` is how the sampling parameters are sent, and
`RequestShape.without` the shape adapted to such a refusal (the run decides when to adapt).

The API key comes from the environment only. It is never logged, never put in a message, and
`redact()` scrubs it (and anything shaped like an OpenAI key) from the text of server errors,
which sometimes echo it back.
"""

from __future__ import annotations

import datetime as _dt
import email.utils
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Literal
from urllib.parse import urlparse

import openai

from lss_cli.errors import ConfigError

DEFAULT_HOST = "api.openai.com"
# What a keyless local server is sent: the client needs some key, local servers ignore it.
LOCAL_PLACEHOLDER_KEY = "no-key-needed"
_KEY_SHAPE = re.compile(r"sk-[A-Za-z0-9_\-*.]{6,}")
_SHOWN_CHARS = 200  # of a body that is not JSON, quoted in the error
# A refused parameter: OpenAI sends these codes with the parameter in `param`; a proxy that keeps
# only the message still says "Unsupported parameter: 'max_tokens' ..." / "Unsupported value: ...".
_REFUSAL_CODES = ("unsupported_parameter", "unsupported_value")
_REFUSAL_TEXT = re.compile(r"Unsupported (?:parameter|value): '(\w+)'")
TOKEN_PARAMS = ("max_tokens", "max_completion_tokens")  # the completion budget's name: classic, reasoning models

ErrorKind = Literal["retry", "class", "fatal"]
Client = openai.OpenAI  # so callers can name the type without importing openai themselves


@dataclass
class Endpoint:
    """Where requests go. `repr` never shows the key."""

    base_url: str | None  # None = the openai package's default (api.openai.com)
    api_key: str = field(repr=False)
    is_default: bool = False  # talking to api.openai.com

    def describe(self) -> str:
        return self.base_url or f"https://{DEFAULT_HOST}/v1"


@dataclass
class ChatReply:
    text: str | None  # the assistant message (None when the server sent no content)
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None  # "stop", "length" (cut at max_tokens), ...


@dataclass(frozen=True)
class RequestShape:
    """How a request sends its sampling parameters (model and messages are always sent).

    The default is what every OpenAI-compatible server took until reasoning models: `max_tokens`
    and `temperature`. Each refusal a server answers with changes one thing, once: `max_tokens`
    is renamed `max_completion_tokens`, a refused `temperature` is no longer sent (the model's
    default applies). `refused` keeps what the server refused, in order, for the provenance.
    """

    token_param: str = "max_tokens"  # name the completion budget is sent under, one of TOKEN_PARAMS
    send_temperature: bool = True  # False: no temperature sent, the server's default applies
    refused: tuple[str, ...] = ()  # parameters the server refused, in the order it did

    def params(self, temperature: float, max_tokens: int) -> dict[str, float | int]:
        """The sampling parameters of one request, as sent."""
        sent: dict[str, float | int] = {self.token_param: max_tokens}
        if self.send_temperature:
            sent["temperature"] = temperature
        return sent

    def provenance(self, temperature: float, max_tokens: int) -> dict[str, object]:
        """What a record says was sent: the parameters, and `refused` when the server refused some."""
        return {**self.params(temperature, max_tokens), **({"refused": list(self.refused)} if self.refused else {})}

    def without(self, param: str) -> RequestShape | None:
        """This shape adapted to a server that refused `param`; None when there is nothing to adapt."""
        if param == "max_tokens" and self.token_param == "max_tokens":
            return replace(self, token_param="max_completion_tokens", refused=(*self.refused, param))
        if param == "temperature" and self.send_temperature:
            return replace(self, send_temperature=False, refused=(*self.refused, param))
        return None


class LlmCallError(Exception):
    """One failed request. The message is safe to print (redacted, no key)."""

    def __init__(self, message: str, kind: ErrorKind, retry_after: float | None = None,
                 status: int | None = None, refused: str | None = None):
        super().__init__(message)
        self.message = message
        self.kind = kind
        self.retry_after = retry_after  # seconds the server asked us to wait, if it said
        self.status = status  # HTTP status, None for transport errors
        self.refused = refused  # the request parameter a 400 said is not supported, if one was named


def resolve_endpoint(base_url: str | None, env: dict[str, str] | None = None) -> Endpoint:
    """Endpoint from `base_url` (config/flag) or OPENAI_BASE_URL, key from OPENAI_API_KEY.

    The default endpoint needs a key (ConfigError, exit 2, otherwise); any other base URL works
    without one (local vLLM / Ollama / llama.cpp servers do not check it).
    """
    env = os.environ if env is None else env
    url = base_url or env.get("OPENAI_BASE_URL") or None
    key = env.get("OPENAI_API_KEY") or None
    is_default = url is None or urlparse(url).hostname == DEFAULT_HOST
    if key is None and is_default:
        raise ConfigError(
            "no API key: OPENAI_API_KEY is not set and the endpoint is OpenAI's",
            hint="export OPENAI_API_KEY=... (it is read from the environment only), or point "
            "--base-url at a local OpenAI-compatible server, e.g. --base-url http://localhost:11434/v1",
        )
    return Endpoint(url, key or LOCAL_PLACEHOLDER_KEY, is_default)


def make_client(endpoint: Endpoint, timeout: float) -> Client:
    """A thread-safe `openai.OpenAI` client; retries are the caller's job (max_retries=0)."""
    return openai.OpenAI(api_key=endpoint.api_key, base_url=endpoint.base_url, timeout=timeout,
                         max_retries=0)


def chat(client: Client, model: str, messages: list[dict[str, str]], temperature: float,
         max_tokens: int, secret: str | None = None, shape: RequestShape | None = None) -> ChatReply:
    """One chat-completion request sent in `shape` (default: `max_tokens` and `temperature`).
    Raises LlmCallError; `secret` is scrubbed from its message."""
    params = (shape or RequestShape()).params(temperature, max_tokens)
    # max_completion_tokens goes in the body as is: openai releases older than the ones that name it
    # (our pin allows them) would refuse it as a keyword; the JSON sent is the same.
    extra = {"max_completion_tokens": params.pop("max_completion_tokens")} if "max_completion_tokens" in params else None
    try:
        resp = client.chat.completions.create(model=model, messages=messages, extra_body=extra, **params)
    except openai.APIError as e:
        raise _classify(e, secret) from None
    except openai.OpenAIError as e:  # anything else the client rejects about the reply
        raise LlmCallError(redact(f"unusable reply: {e}", secret), "class") from None
    except json.JSONDecodeError as e:  # a success status with a body that is not JSON (a proxy's page, a cut body)
        raise _not_json(e.doc, secret) from None
    except UnicodeDecodeError as e:  # ... or not even text
        raise _not_json(e.object.decode("utf-8", errors="replace"), secret) from None
    if isinstance(resp, str):  # a non-JSON content type: the client hands back the body as text
        raise _not_json(resp, secret)
    return _reply_of(resp)


def _not_json(body: str, secret: str | None) -> LlmCallError:
    """A success status whose body is no completion: retried, as a server having a bad moment
    (an overloaded proxy's HTML page, a body cut short) usually answers properly the next time."""
    text = " ".join(body.split())
    shown = "an empty body" if not text else repr(text[:_SHOWN_CHARS]) + ("..." if len(text) > _SHOWN_CHARS else "")
    return LlmCallError(redact(f"the server answered with a success status but its body is not a JSON object: {shown}",
                               secret), "retry")


def _reply_of(resp: object) -> ChatReply:
    """The parts of a completion we use. The client does not validate a reply's shape, so a
    server sending odd JSON (`"choices": "x"`) must not reach attribute access unchecked."""
    choices = getattr(resp, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise LlmCallError("the server sent a reply without choices", "class")
    choice = choices[0]
    message = getattr(choice, "message", None)
    text = getattr(message, "content", None)
    finish_reason = getattr(choice, "finish_reason", None)
    if (not hasattr(choice, "message") or not isinstance(text, str | None)
            or not isinstance(finish_reason, str | None)):
        raise LlmCallError("the server sent a reply whose choice is not a chat message", "class")
    usage = getattr(resp, "usage", None)
    return ChatReply(text=text, prompt_tokens=_count(getattr(usage, "prompt_tokens", 0)),
                     completion_tokens=_count(getattr(usage, "completion_tokens", 0)), finish_reason=finish_reason)


def _count(value: object) -> int:
    """A token count as reported; anything that is not a non-negative integer counts as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def _classify(e: openai.APIError, secret: str | None) -> LlmCallError:
    """Map an openai exception to retry / class / fatal, with a short redacted message."""
    if isinstance(e, openai.APITimeoutError):
        return LlmCallError("request timed out", "retry")
    if isinstance(e, openai.APIConnectionError):
        cause = e.__cause__ or e.__context__
        detail = f" ({type(cause).__name__})" if cause is not None else ""
        return LlmCallError(f"connection failed or dropped{detail}", "retry")
    if not isinstance(e, openai.APIStatusError):  # e.g. a reply that does not fit the schema
        return LlmCallError(redact(f"unusable reply: {e.message}", secret), "class")
    status = e.status_code
    text = redact(f"HTTP {status}: {_server_message(e)}", secret)
    retry_after = parse_retry_after(e.response.headers)
    if status == 429 and e.code == "insufficient_quota":
        return LlmCallError(text, "fatal", status=status)
    if status in (401, 403, 404):
        return LlmCallError(text, "fatal", status=status)
    if status in (408, 409, 429) or status >= 500:
        return LlmCallError(text, "retry", retry_after, status)
    return LlmCallError(text, "class", status=status, refused=_refused_param(e) if status == 400 else None)


def _refused_param(e: openai.APIStatusError) -> str | None:
    """The request parameter a 400 says the model does not support, or None for any other 400."""
    if e.code in _REFUSAL_CODES and isinstance(e.param, str) and e.param:
        return e.param
    match = _REFUSAL_TEXT.search(_server_message(e))
    return match.group(1) if match else None


def _server_message(e: openai.APIStatusError) -> str:
    body = e.body
    if isinstance(body, dict):
        inner = body.get("error", body)
        msg = inner.get("message") if isinstance(inner, dict) else inner
        if msg:
            return str(msg)[:300]
    return str(e.message)[:300]


def parse_retry_after(headers: Mapping[str, str] | None) -> float | None:
    """Seconds from `retry-after-ms`, or `retry-after` as seconds or an HTTP date; None if absent."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    raw = headers.get("retry-after")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=_dt.timezone.utc)
    return max(0.0, (when - _dt.datetime.now(_dt.timezone.utc)).total_seconds())


def redact(text: str, secret: str | None) -> str:
    """Remove the key, and anything shaped like an OpenAI key (servers echo masked keys), from text."""
    if secret and secret != LOCAL_PLACEHOLDER_KEY:
        text = text.replace(secret, "[redacted]")
    return _KEY_SHAPE.sub("sk-[redacted]", text)
