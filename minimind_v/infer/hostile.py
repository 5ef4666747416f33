"""Hostile requests for the server's reliability checks: a seeded generator of every kind of bad input, and a
client that fires them over keep-alive connections and counts what came back.

What a server left running must survive: JSON nested a million deep, integers of thousands of digits, lone
surrogates, temperatures that underflow, file:// paths with NUL bytes, images whose header promises an
enormous resize, private addresses for remote images, wrong content types, bodies over the limit, random
bytes. Every answer must be under 500, every error OpenAI-shaped, and no connection may drop. Used by
tests/test_server_storm.py (hundreds of requests) and benchmarks/server_storm.py (ten thousand).
"""
from __future__ import annotations

import base64
import json
import random
import struct
import threading
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

PATH = "/v1/chat/completions"
JSON_TYPE = {"Content-Type": "application/json"}


@dataclass
class Hostile:
    kind: str
    body: bytes
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON_TYPE))
    method: str = "POST"
    path: str = PATH
    expect_ok: bool = False  # a valid request hidden among the others: it must get a 200


def png_header(w: int, h: int) -> bytes:
    """A tiny PNG whose header claims w x h pixels (decoding it would fail; it must be refused before)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


class HostileGenerator:
    """`n` requests from `seed`: every kind in turn, each drawn at random within its kind."""

    def __init__(self, model: str, image: bytes, body_limit: int, seed: int = 0):
        self.model, self.image, self.body_limit = model, image, body_limit
        self.rng = random.Random(seed)
        self.kinds: list[Callable[[], Hostile]] = [
            self.valid, self.deep_json, self.big_int, self.surrogate, self.tiny_temperature, self.odd_number,
            self.local_path, self.private_url, self.content_type, self.image_bomb, self.many_messages,
            self.garbage, self.mutation, self.wrong_route, self.oversized, self.bad_image]

    def __call__(self, n: int) -> Iterator[Hostile]:
        for i in range(n):
            yield self.kinds[i % len(self.kinds)]()

    def _request(self, **extra: Any) -> dict[str, Any]:
        return {"model": self.model, "max_tokens": self.rng.randint(1, 3),
                "messages": [{"role": "user", "content": "What color is the circle?"}], **extra}

    def _raw(self, kind: str, text: str, **kw: Any) -> Hostile:
        return Hostile(kind, text.encode("utf-8", "surrogatepass"), **kw)

    def valid(self) -> Hostile:
        body = self._request(stream=self.rng.random() < 0.5, temperature=self.rng.choice([0, 0.7, 1.0]), seed=1)
        if self.rng.random() < 0.3:
            parts = [{"type": "text", "text": "Describe."},
                     {"type": "image_url", "image_url": {"url": data_url(self.image)}}]
            body["messages"] = [{"role": "user", "content": parts}]
        return Hostile("valid", json.dumps(body).encode(), expect_ok=True)

    def deep_json(self) -> Hostile:
        n = self.rng.choice([40, 1000, 5000, 100_000, 400_000])
        where = self.rng.choice(["top", "content", "field"])
        nest = "[" * n + "]" * n
        if where == "top":
            return self._raw("deep_json", nest)
        if where == "content":
            message = f'{{"role": "user", "content": {nest}}}'
            return self._raw("deep_json", f'{{"model": "{self.model}", "messages": [{message}]}}')
        return self._raw("deep_json", json.dumps(self._request())[:-1] + f', "metadata": {nest}}}')

    def big_int(self) -> Hostile:
        digits = "9" * self.rng.choice([4301, 5000, 50_000])
        key = self.rng.choice(["max_tokens", "temperature", "seed", "top_k", "n", "top_p"])
        return self._raw("big_int", json.dumps(self._request())[:-1] + f', "{key}": {digits}}}')

    def surrogate(self) -> Hostile:
        s = self.rng.choice(["\\ud800", "\\udfff", "a\\ud83d", "\\ude00b"])
        where = self.rng.choice(["text", "model", "stop", "role", "url"])
        template = {
            "text": '{"model": "%s", "messages": [{"role": "user", "content": "x%s"}]}' % (self.model, s),
            "model": '{"model": "%s", "messages": [{"role": "user", "content": "x"}]}' % s,
            "stop": '{"model": "%s", "stop": ["%s"], "messages": [{"role": "user", "content": "x"}]}' % (self.model, s),
            "role": '{"model": "%s", "messages": [{"role": "%s", "content": "x"}]}' % (self.model, s),
            "url": '{"model": "%s", "messages": [{"role": "user", "content": [{"type": "image_url", '
                   '"image_url": {"url": "file:///tmp/%s.png"}}]}]}' % (self.model, s)}[where]
        return self._raw("surrogate", template)

    def tiny_temperature(self) -> Hostile:
        t = self.rng.choice([1e-40, 5e-324, 1e-300, 1e-45, 1.2e-38, 1e-8])
        return Hostile("tiny_temperature", json.dumps(self._request(temperature=t, seed=3)).encode(), expect_ok=True)

    def odd_number(self) -> Hostile:
        key = self.rng.choice(["temperature", "top_p", "max_tokens", "repetition_penalty", "top_k", "seed"])
        value = self.rng.choice(["1e400", "-1e400", "NaN", "Infinity", "-Infinity", "-0.0", "1e-400", "1.5", "-1",
                                 "true", "null", '"1"', "[]", "{}"])
        return self._raw("odd_number", json.dumps(self._request())[:-1] + f', "{key}": {value}}}')

    def local_path(self) -> Hostile:
        path = self.rng.choice(["/tmp/a%00b.png", "/tmp/%ED%A0%80.png", "/tmp/" + "a" * 5000 + ".png",
                                "/tmp/" + "a/" * 3000, "/../../../../etc/passwd", "/tmp/%2e%2e/%2e%2e/etc/hosts",
                                "/proc/self/environ", "/dev/zero", "/tmp/%FF%FE.png", "//host/share/x.png"])
        return self._image_request("local_path", "file://" + path)

    def private_url(self) -> Hostile:
        url = self.rng.choice(["http://127.0.0.1:1/x.png", "http://169.254.169.254/latest/meta-data/",
                               "http://[::1]:1/x.png", "http://10.1.2.3/x.png", "http://[::ffff:127.0.0.1]:1/",
                               "http://0.0.0.0:1/", "http://localhost:1/x.png", "https://192.168.0.1/x.png",
                               "http://[fd00:ec2::254]/", "http://100.64.0.1/", "http://127.0.0.1:99999/",
                               "http://user@127.0.0.1:1/", "http:///nohost", "gopher://127.0.0.1/"])
        return self._image_request("private_url", url)

    def _image_request(self, kind: str, url: str) -> Hostile:
        body = self._request()
        body["messages"] = [{"role": "user", "content": [{"type": "text", "text": "x"},
                                                         {"type": "image_url", "image_url": {"url": url}}]}]
        return Hostile(kind, json.dumps(body).encode())

    def content_type(self) -> Hostile:
        kind = self.rng.choice([None, "text/plain", "multipart/form-data; boundary=x", "application/jsonx",
                                "application/x-www-form-urlencoded", "text/html"])
        return Hostile("content_type", json.dumps(self._request()).encode(), headers={} if kind is None else
                       {"Content-Type": kind})

    def image_bomb(self) -> Hostile:
        w, h = self.rng.choice([(1_000_000, 16), (16, 1_000_000), (1, 16_777_216), (16_777_216, 1), (100_000, 100_000),
                                (65535, 65535), (0, 10), (4096, 4097)])
        return self._image_request("image_bomb", data_url(png_header(w, h)))

    def bad_image(self) -> Hostile:
        data = self.rng.choice([self.image[:40], b"GIF89a" + bytes(self.rng.randrange(256) for _ in range(60)),
                                bytes(self.rng.randrange(256) for _ in range(200)), b""])
        url = self.rng.choice([data_url(data), "data:image/png;base64,***", "data:text/html,<b>", "data:,",
                               "data:image/png;base64," + "A" * 1001])
        return self._image_request("bad_image", url)

    def many_messages(self) -> Hostile:
        n = self.rng.choice([1025, 5000, 20_000])
        messages = [{"role": "user", "content": "a"}] * n
        return Hostile("many_messages", json.dumps(self._request(messages=messages)).encode())

    def garbage(self) -> Hostile:
        options = [b"", b"null", b'"x"', b"1", b"[]", b"{", b'{"model": ', b"\xff\xfe\x00", b"{}",
                   bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 500))),
                   json.dumps(self._request()).encode()[: self.rng.randint(1, 60)], b'{"a": "\\x"}']
        return Hostile("garbage", self.rng.choice(options))

    def mutation(self) -> Hostile:
        body = self._request()
        key = self.rng.choice(["model", "messages", "max_tokens", "temperature", "stream", "stop", "top_p",
                               "stream_options", "response_format", "n", "tools", "seed", "top_k"])
        body[key] = self.rng.choice([None, [], {}, "", 0, -1, True, 1e308, [[[]]], "x" * 1000, [{"role": "user"}],
                                     [{"role": "user", "content": [{"type": "image_url"}]}], {"include_usage": 7}])
        return Hostile("mutation", json.dumps(body).encode())

    def wrong_route(self) -> Hostile:
        method, path = self.rng.choice([("GET", PATH), ("PUT", PATH), ("POST", "/v1/completions"), ("POST", "/health"),
                                        ("DELETE", "/v1/models/tiny"), ("GET", "/v1/models/" + "x" * 3000)])
        return Hostile("wrong_route", json.dumps(self._request()).encode(), method=method, path=path)

    def oversized(self) -> Hostile:
        pad = "a" * (self.body_limit + self.rng.randint(1, self.body_limit // 2))
        return Hostile("oversized", json.dumps(self._request(metadata=pad)).encode())


@dataclass
class StormReport:
    sent: int = 0
    statuses: Counter = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)  # responses >= 500
    dropped: list[str] = field(default_factory=list)  # connections that failed without a response
    malformed: list[str] = field(default_factory=list)  # error responses not in OpenAI's shape
    valid_failed: list[str] = field(default_factory=list)  # valid requests that did not get a full 200

    @property
    def clean(self) -> bool:
        return not (self.server_errors or self.dropped or self.malformed or self.valid_failed)


def storm(base: str, requests: Iterator[Hostile], clients: int = 4, headers: dict[str, str] | None = None,
          timeout: float = 120.0) -> StormReport:
    """Send `requests` from `clients` threads, each over one keep-alive connection, and check every answer."""
    import httpx

    report, lock = StormReport(), threading.Lock()
    local = threading.local()

    def one(h: Hostile) -> None:
        if not hasattr(local, "client"):
            local.client = httpx.Client(base_url=base, timeout=timeout, headers=headers or {},
                                        limits=httpx.Limits(max_connections=1, max_keepalive_connections=1))
        try:
            r = local.client.request(h.method, h.path, content=h.body, headers=h.headers)
        except httpx.TransportError as e:
            with lock:
                report.sent += 1
                report.dropped.append(f"{h.kind}: {type(e).__name__}: {e}")
            return
        problem = check(h, r)
        with lock:
            report.sent += 1
            report.statuses[r.status_code] += 1
            if r.status_code >= 500:
                report.server_errors.append(f"{h.kind}: {r.status_code} {r.text[:200]}")
            elif problem:
                (report.valid_failed if h.expect_ok else report.malformed).append(f"{h.kind}: {problem}")

    with ThreadPoolExecutor(clients) as pool:
        for _ in pool.map(one, requests):
            pass
    return report


def check(h: Hostile, r: Any) -> str | None:
    """What is wrong with the response `r` to `h`, or None."""
    if h.expect_ok:
        if r.status_code != 200:
            return f"{r.status_code} {r.text[:200]}"
        if r.headers.get("content-type", "").startswith("text/event-stream"):
            return None if r.text.rstrip().endswith("data: [DONE]") and '"error"' not in r.text else r.text[-200:]
        return None if r.json().get("choices") else r.text[:200]
    if r.status_code < 400:
        return None
    try:
        err = r.json()["error"]
        ok = set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str)
    except (ValueError, KeyError, TypeError):
        ok = False
    return None if ok else f"{r.status_code} not an OpenAI-style error: {r.text[:200]}"
