"""The chat-completions pipeline: from a request's bytes to a generation queued for the model.

The event loop only moves bytes. A request takes a place in the queue before its body is read (admission.py);
parsing, validation, image decoding and tokenising then run on a small pool of threads, and generation on one
more thread, so a large or hostile request never stalls the others or /health. Everything is checked before
the request queues for the model, so a bad request fails fast with a 4xx and never starts a stream.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Callable

from .admission import Admission, image_cost
from .http_guard import BodyReader, require_json
from .images import ImageError, ImageLimits, image_bytes, load_frames, load_pixels, open_image
from .openai_protocol import APIError, ChatRequest, RequestLimits, bad, generation_args, parse_chat_request
from .openai_responses import chunk, completion_body, new_id, usage

log = logging.getLogger("minimind_v.server")


@dataclass
class ServerSettings:
    api_key: str | None = None  # clients must send `Authorization: Bearer <key>` (also for /health); None = open
    limits: ImageLimits = field(default_factory=ImageLimits)
    request: RequestLimits = field(default_factory=RequestLimits)
    default_max_tokens: int = 256  # when a request gives no max_tokens (capped by what the context leaves)
    max_pending: int = 64  # requests being read, prepared, waiting or generating; more get 429
    max_body_bytes: int = 0  # 0: enough for max_images base64 images of max_bytes each, plus text
    image_memory_bytes: int = 1 << 30  # decoded images of all requests together (admission.py)
    prepare_threads: int = 2  # parse, validate, decode images, tokenise: off the event loop

    def body_limit(self) -> int:
        return self.max_body_bytes or self.limits.max_images * (self.limits.max_bytes * 4 // 3 + 1024) + 2**20


class Worker:
    """Runs every generation on one thread, one request at a time, in arrival order.

    A queue rather than batched decoding: the server holds one small model on one CPU (or GPU); a single
    stream of a tiny model already decodes quickly, and batching unrelated requests would make every answer
    wait for the longest one in its batch and pay for padding, which costs more than it saves at the loads
    such a server sees. The model is also never touched by two threads at once, so nothing in it needs locks.
    """

    def __init__(self) -> None:
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minimind-v-generate")

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future:
        return asyncio.get_running_loop().run_in_executor(self.pool, fn)


class ChatHandler:
    """POST /v1/chat/completions, from the request's bytes to a generation queued on the worker."""

    def __init__(self, models: dict[str, Any], settings: ServerSettings):
        self.models, self.settings = models, settings
        self.worker = Worker()
        self.prepare = ThreadPoolExecutor(max_workers=settings.prepare_threads, thread_name_prefix="minimind-v-prepare")
        self.admission = Admission(settings.max_pending, settings.image_memory_bytes)

    def close(self) -> None:
        self.worker.pool.shutdown(wait=False, cancel_futures=True)
        self.prepare.shutdown(wait=False, cancel_futures=True)

    async def off_loop(self, fn: Callable, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self.prepare, fn, *args)

    async def __call__(self, request: Any, authorize: Callable[[Any], None]) -> Any:
        """A completion body, or (events, None) for a stream; raises APIError for anything refused."""
        reader = BodyReader(request, self.settings.body_limit())
        try:
            authorize(request)
            require_json(request)
            self.admission.enter()  # from here until generation ends, this request holds a place in the queue
        except APIError as e:
            raise await reader.refuse(e) from None
        handed_over = False
        try:
            req, vlm, gen = await self.checked(await reader.read())
            if req.stream:
                events, job = stream_events(vlm, req, gen, new_id())
            else:
                events, job = None, lambda: run_to_end(vlm, req, gen)
            fut = self.worker.submit(job)
            fut.add_done_callback(lambda _: self.admission.leave())
            handed_over = True
        finally:
            if not handed_over:
                self.admission.leave()
        if events is not None:
            return events
        s = await fut
        return completion_body(new_id(), req.model, s.text, s.finish_reason, usage(s.prompt_tokens,
                                                                                   s.completion_tokens))

    async def checked(self, body: bytes) -> tuple[ChatRequest, Any, dict[str, Any]]:
        """Parse and check a body off the event loop: the request, its model and stream_chat's arguments."""
        req = await self.off_loop(parse_chat_request, body, self.settings.request)
        del body
        vlm = self.models.get(req.model)
        if vlm is None:
            raise APIError(404, f"model {req.model[:60]!r} does not exist; this server has {', '.join(self.models)}",
                           "model", "model_not_found")
        limits = self.settings.limits
        n_stills = sum(1 for *_, frames in req.images if not frames)
        n_frames = sum(frames for *_, frames in req.images)
        if n_stills > limits.max_images:
            raise bad(f"{n_stills} images in one request; the limit is {limits.max_images}", "messages",
                      "too_many_images")
        if n_frames > limits.max_video_frames:
            raise bad(f"{n_frames} video frames in one request; the limit is {limits.max_video_frames}", "messages",
                      "too_many_frames")
        pixels = await self.pixels(vlm, req)
        gen = await self.off_loop(generation_args, vlm, req, 0 if pixels is None else len(pixels),
                                  self.settings.default_max_tokens)
        return req, vlm, {**gen, "pixel_values": pixels}

    async def pixels(self, vlm: Any, req: ChatRequest) -> Any:
        """Read the images' headers, reserve what decoding them costs, then decode and preprocess."""
        if not req.images:
            return None
        opened = await self.off_loop(open_images, req.images, self.settings.limits)
        processor = getattr(vlm.model.vision, "processor", None)
        cost = sum(image_cost(im, processor) * max(1, frames) for im, (*_, frames) in zip(opened, req.images))
        async with self.admission.reserve(cost):
            return await self.off_loop(lambda: vlm.preprocess(decode_images(opened, req.images)))


def open_images(refs: list[tuple[str, str, int]], limits: ImageLimits) -> list[Any]:
    """Fetch each image's (or video's) bytes and read its header (every size check passed, no pixel decoded)."""
    opened = []
    for url, param, _frames in refs:
        try:
            opened.append(open_image(image_bytes(url, limits), limits))
        except ImageError as e:
            raise bad(f"{param}: {e}", param, e.code) from None
    return opened


def decode_images(opened: list[Any], refs: list[tuple[str, str, int]]) -> list[Any]:
    """Decode opened images into RGB (what the image processor takes); a video gives its sampled frames."""
    images = []
    for im, (_, param, frames) in zip(opened, refs):
        try:
            images += load_frames(im, frames) if frames else [load_pixels(im)]
        except ImageError as e:
            raise bad(f"{param}: {e}", param, e.code) from None
    return images


def run_to_end(vlm: Any, req: ChatRequest, gen: dict[str, Any]) -> Any:
    s = vlm.stream_chat(req.messages, **gen)
    s.read()
    return s


def stream_events(vlm: Any, req: ChatRequest, gen: dict[str, Any], rid: str
                  ) -> tuple[AsyncIterator[str], Callable[[], None]]:
    """The server-sent events of a streamed answer (a role chunk, content chunks as they decode, a finish
    chunk, usage if asked, then [DONE]) and the job that generates them, for the worker to run."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    cancel = threading.Event()  # set when the client goes away: the worker stops at its next piece

    def put(item: tuple[str, Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the event loop closed under us: nobody is listening
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def job() -> None:
        if cancel.is_set():
            return
        try:
            s = vlm.stream_chat(req.messages, **gen)
            for piece in s:
                if cancel.is_set():
                    s.close()
                    return
                put(("piece", piece))
            put(("end", s))
        except Exception as e:  # validated up front, so this is a server fault: tell the client in-stream
            log.exception("generation failed")
            put(("error", e))

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk(rid, req.model, {"role": "assistant", "content": ""})
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield chunk(rid, req.model, {"content": value})
                elif kind == "error":
                    err = APIError(500, "generation failed", code="generation_failed", type="server_error")
                    yield f"data: {json.dumps(err.body())}\n\n"
                    break
                else:
                    yield chunk(rid, req.model, {}, value.finish_reason)
                    if req.include_usage:
                        yield chunk(rid, req.model, {}, usage=usage(value.prompt_tokens, value.completion_tokens))
                    break
            yield "data: [DONE]\n\n"
        finally:
            cancel.set()

    return events(), job
