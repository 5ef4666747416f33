"""The OpenAI chat-completions wire format, requests: validate a body and turn it into our chat format (the
response bodies and stream chunks are openai_responses.py).

Validation is done by hand rather than by a pydantic model so that every mistake gets OpenAI's error shape,
{"error": {"message", "type", "param", "code"}}, with `param` naming the exact field (e.g.
`messages[0].content[1].image_url.url`), which is what OpenAI clients show their users.

Content parts become our chat format: a user message's parts are joined with newlines and each `image_url`
part becomes an `<image>` marker where it stands. A `video_url` part (an animated GIF / WebP / PNG, with an
optional `"frames": N`, default 8) becomes N markers: its frames, sampled evenly, are N images in time order. A
text that already places its own `<image>` markers must place exactly one per image (or frame) of that message.

The body is untrusted: its nesting and size in values are measured before it is parsed (json_depth.py); the message
count and the length of the text are bounded before anything is tokenised. Whatever the input — integers
of thousands of digits, lone surrogates, deep nesting — the answer is a 4xx in this shape, never a crash.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

from ..config import IMAGE_MARKER
from ..data.chat import count_markers
from .json_depth import json_shape

ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}
UNSUPPORTED = ("tools", "tool_choice", "functions", "function_call", "logprobs", "top_logprobs", "audio",
               "prediction", "logit_bias")


SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's \ud800 escapes decode to these; UTF-8 cannot encode them


@dataclass(frozen=True)
class RequestLimits:
    """What one request body may hold (the body's byte size is the server's to bound, as it arrives)."""
    max_depth: int = 32  # nesting of arrays and objects; a chat request needs 6
    max_values: int = 200_000  # JSON values of every kind: what parsing costs beyond the body's bytes
    max_messages: int = 1024
    max_text_chars: int = 1 << 20  # all text parts together; far more than any context holds


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.type = status, message, param, code, type
        self.close_connection = False  # set when the request's body could not be read to its end

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def json(self) -> bytes:
        """The body as bytes, ASCII-escaped: a message quoting client text cannot fail to encode."""
        return json.dumps(self.body()).encode()


@dataclass
class ChatRequest:
    model: str
    messages: list[dict[str, str]]  # our format: string content with <image> markers
    images: list[tuple[str, str, int]]  # (url, param path, frames: 0 for a still image) in reading order
    stream: bool = False
    include_usage: bool = False
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)


def bad(message: str, param: str | None = None, code: str | None = "invalid_value") -> APIError:
    return APIError(400, message, param, code)


def brief(v: Any) -> str:
    """A short, printable description of a client's value for an error message (never the whole value)."""
    if isinstance(v, str):
        return repr(v[:30] + ("..." if len(v) > 30 else ""))
    if isinstance(v, (bool, float)) or v is None:
        return json.dumps(v)
    if isinstance(v, int):
        return str(v) if abs(v) < 10**30 else f"an integer of {len(str(abs(v)))} digits"
    return f"a JSON {'array' if isinstance(v, list) else 'object'}"


def _typed(body: dict, key: str, kinds: tuple[type, ...], what: str) -> Any:
    v = body.get(key)
    if v is None:
        return None
    if (isinstance(v, bool) and bool not in kinds) or not isinstance(v, kinds):
        raise bad(f"{key} must be {what}, got {brief(v)}", key, "invalid_type")
    return v


def _number(body: dict, key: str, lo: float, hi: float) -> float | None:
    v = _typed(body, key, (int, float), "a number")
    if v is None:
        return None
    try:
        f = float(v)
    except OverflowError:  # an integer of hundreds of digits
        f = math.inf
    if not (math.isfinite(f) and lo <= f <= hi):
        raise bad(f"{key} must be between {lo:g} and {hi:g}, got {brief(v)}", key)
    return f


def _text(v: str, param: str) -> str:
    if SURROGATE.search(v):
        raise bad(f"{param} contains a lone UTF-16 surrogate (e.g. \\ud800), which is not a character",
                  param, "invalid_text")
    return v


def load_json(raw: bytes, limits: RequestLimits) -> Any:
    """Parse a request body, refusing bodies nested too deeply or holding too many values before parsing."""
    brackets, commas = raw.count(b"[") + raw.count(b"{"), raw.count(b",")
    if brackets > limits.max_depth or brackets + commas >= limits.max_values:  # else the limits cannot be hit
        depth, values = json_shape(raw)
        if depth > limits.max_depth:
            raise bad(f"the request body nests deeper than {limits.max_depth} levels", None, "json_too_deep")
        if values > limits.max_values:
            raise bad(f"the request body holds over {limits.max_values} JSON values", None, "json_too_large")
    try:
        return json.loads(raw)
    except RecursionError:  # not reached past the depth check; kept so that no body can crash the parser
        raise bad("the request body nests too deeply", None, "json_too_deep") from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError, and integers over 4300 digits
        raise bad(f"the request body is not valid JSON: {str(e)[:200]}", None, "invalid_json") from None


def parse_chat_request(raw: bytes, limits: RequestLimits | None = None) -> ChatRequest:
    limits = limits or RequestLimits()
    body = load_json(raw, limits)
    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object", None, "invalid_type")
    model = _typed(body, "model", (str,), "a string")
    if not model:
        raise bad("you must give a model (GET /v1/models lists them)", "model", "missing_required_parameter")
    _text(model, "model")
    for key in UNSUPPORTED:
        if body.get(key) not in (None, False, [], {}):
            raise bad(f"{key} is not supported by this server", key, "unsupported_parameter")
    if (n := _typed(body, "n", (int,), "an integer")) not in (None, 1):
        raise bad(f"only n=1 is supported, got {n}", "n", "unsupported_value")
    for key in ("frequency_penalty", "presence_penalty"):
        if _number(body, key, -2, 2) not in (None, 0):
            raise bad(f"{key} is not supported; use repetition_penalty", key, "unsupported_parameter")
    fmt = _typed(body, "response_format", (dict,), "an object")
    if fmt and fmt.get("type", "text") != "text":
        raise bad("only text responses are supported", "response_format", "unsupported_value")
    req = ChatRequest(model=model, messages=[], images=[])
    req.messages, req.images = _messages(body.get("messages"), limits)
    req.stream = bool(_typed(body, "stream", (bool,), "true or false"))
    opts = _typed(body, "stream_options", (dict,), "an object") or {}
    req.include_usage = req.stream and bool(_typed(opts, "include_usage", (bool,), "true or false"))
    for key in ("max_completion_tokens", "max_tokens"):  # the newer name wins when both are given
        if (v := _typed(body, key, (int,), "an integer")) is not None:
            if v < 1:
                raise bad(f"{key} must be at least 1, got {v}", key)
            req.max_tokens = v
            break
    req.temperature = _number(body, "temperature", 0, 2)
    top_p = _number(body, "top_p", 0, 1)
    req.top_p = 1.0 if top_p is None else top_p
    req.top_k = _typed(body, "top_k", (int,), "an integer") or 0
    if req.top_k < 0:
        raise bad(f"top_k must be >= 0, got {req.top_k}", "top_k")
    penalty = _number(body, "repetition_penalty", 0.01, 10)
    req.repetition_penalty = 1.0 if penalty is None else penalty
    req.seed = _typed(body, "seed", (int,), "an integer")
    if req.seed is not None and not -2**63 <= req.seed < 2**63:
        raise bad("seed must fit in 64 bits", "seed")
    req.stop = _stop(body.get("stop"))
    return req


def _stop(stop: Any) -> list[str]:
    if stop is None:
        return []
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or a list of strings", "stop", "invalid_type")
    if len(stops) > 4:
        raise bad(f"stop takes at most 4 sequences, got {len(stops)}", "stop")
    return [_text(s, "stop") for s in stops if s]


def _messages(messages: Any, limits: RequestLimits) -> tuple[list[dict[str, str]], list[tuple[str, str, int]]]:
    if not isinstance(messages, list) or not messages:
        raise bad("messages must be a non-empty list", "messages", "invalid_type")
    if len(messages) > limits.max_messages:
        raise bad(f"{len(messages)} messages in one request; the limit is {limits.max_messages}", "messages",
                  "too_many_messages")
    turns: list[tuple[str, list[str]]] = []  # (role, texts): joined once at the end, so merging stays linear
    images: list[tuple[str, str, int]] = []
    chars = 0
    for i, m in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(m, dict):
            raise bad(f"{where} must be an object with role and content", where, "invalid_type")
        role = m.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise bad(f"{where}.role must be one of {', '.join(ROLES)}, got {brief(role)}", f"{where}.role")
        text, urls = _content(m.get("content"), f"{where}.content", role, limits.max_text_chars - chars)
        chars += len(text)
        images += urls
        role = ROLES[role]
        if turns and turns[-1][0] == role:  # consecutive turns of one speaker read as one turn
            turns[-1][1].append(text)
        else:
            turns.append((role, [text]))
    return [{"role": role, "content": "\n".join(texts)} for role, texts in turns], images


DEFAULT_VIDEO_FRAMES = 8
MAX_VIDEO_FRAMES = 16  # per video part


def _media_url(part: dict, kind: str, p: str, role: str) -> str:
    if role != "user":
        raise bad(f"{p}: images and videos are only allowed in user messages", p)
    ref = part.get(kind)
    url = ref.get("url") if isinstance(ref, dict) else ref
    if not isinstance(url, str) or not url:
        raise bad(f"{p}.{kind}.url must be a string URL", f"{p}.{kind}.url", "invalid_type")
    return _text(url, f"{p}.{kind}.url")


def _video_frames(part: dict, p: str) -> int:
    ref = part.get("video_url")
    n = ref.get("frames", DEFAULT_VIDEO_FRAMES) if isinstance(ref, dict) else DEFAULT_VIDEO_FRAMES
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_VIDEO_FRAMES:
        raise bad(f"{p}.video_url.frames must be a whole number from 1 to {MAX_VIDEO_FRAMES}, got {brief(n)}",
                  f"{p}.video_url.frames", "invalid_value")
    return n


def _content(content: Any, where: str, role: str, room: int) -> tuple[str, list[tuple[str, str, int]]]:
    """One message's content as text with markers, and its image URLs; `room`: characters of text left."""
    if isinstance(content, str):
        parts: list[Any] = [{"type": "text", "text": content}]
    elif isinstance(content, list) and content:
        parts = content
    else:
        raise bad(f"{where} must be a string or a non-empty list of content parts", where, "invalid_type")
    texts: list[str | None] = []  # None stands where an image part is
    urls: list[tuple[str, str, int]] = []
    for j, part in enumerate(parts):
        p = f"{where}[{j}]" if isinstance(content, list) else where
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            if not isinstance(part.get("text"), str):
                raise bad(f"{p}.text must be a string", f"{p}.text", "invalid_type")
            room -= len(part["text"])
            if room < 0:  # checked before any work on the text
                raise bad("the messages hold more characters of text than this server takes in one request",
                          "messages", "text_too_long")
            texts.append(_text(part["text"], f"{p}.text" if isinstance(content, list) else p))
        elif kind == "image_url":
            urls.append((_media_url(part, kind, p, role), f"{p}.image_url.url", 0))
            texts.append(None)
        elif kind == "video_url":
            frames = _video_frames(part, p)
            urls.append((_media_url(part, kind, p, role), f"{p}.video_url.url", frames))
            texts += [None] * frames
        else:
            raise bad(f"{p} must be a content part of type 'text', 'image_url' or 'video_url'", f"{p}.type",
                      "invalid_type")
    written = sum(count_markers(t) for t in texts if t is not None)
    n_images = sum(t is None for t in texts)
    if written and written != n_images:
        raise bad(f"{where} writes {written} {IMAGE_MARKER} markers but has {n_images} images (a video's frames "
                  f"count one each); write one marker per image or none at all", where, "image_marker_mismatch")
    if not written:  # the markers go where the image parts stand
        texts = [IMAGE_MARKER if t is None else t for t in texts]
    return "\n".join(t for t in texts if t is not None), urls


def generation_args(vlm: Any, req: ChatRequest, n_images: int, default_max_tokens: int) -> dict[str, Any]:
    """Check the conversation against the model and turn the request's settings into stream_chat's."""
    try:
        prompt = len(vlm.encode_chat(req.messages, n_images))
    except ValueError as e:
        raise bad(str(e), "messages", "invalid_messages") from None
    ctx = vlm.context_length
    if prompt >= ctx:
        raise bad(f"this model's context is {ctx} tokens but the messages take {prompt} (each image takes "
                  f"{vlm.model.tokens_per_image})", "messages", "context_length_exceeded")
    if req.max_tokens is not None and req.max_tokens > ctx:
        raise bad(f"max_tokens must be at most the context length {ctx}, got {req.max_tokens}", "max_tokens")
    if req.max_tokens is not None and prompt + req.max_tokens > ctx:
        raise bad(f"this model's context is {ctx} tokens: {prompt} in the messages + {req.max_tokens} max_tokens "
                  f"do not fit", "max_tokens", "context_length_exceeded")
    return dict(max_new_tokens=req.max_tokens or min(default_max_tokens, ctx - prompt),
                temperature=req.temperature or 0.0, top_p=req.top_p, top_k=req.top_k,
                repetition_penalty=req.repetition_penalty, seed=req.seed, stop=req.stop)
