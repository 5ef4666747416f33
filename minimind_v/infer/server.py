"""`minimind-v serve`: an OpenAI-compatible HTTP API (GET /v1/models, POST /v1/chat/completions) with images.

    minimind-v serve --model runs/quickstart              # http://127.0.0.1:8000/v1
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":
      "quickstart", "messages": [{"role": "user", "content": [{"type": "text", "text": "What color is it?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}'

Everything about the wire format lives in openai_protocol.py and everything about untrusted images in
images.py; this file wires them to the model. Requests are checked completely (JSON, types, model, images,
context length) before they queue for the model, so a bad request fails fast with a 4xx and never starts a
stream. `temperature` defaults to 0 (greedy) rather than OpenAI's 1: a small model answers best greedily.

No `from __future__ import annotations` here: FastAPI reads the route functions' annotations (`Request`),
and those classes are imported inside create_app so that `minimind-v --help` works without fastapi installed.
"""
import argparse
import asyncio
import contextlib
import hmac
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterator

from .cli_infer import add_server_arguments
from .images import ImageLimits
from .openai_protocol import (APIError, ChatRequest, bad, chunk, completion_body, generation_args, load_images, new_id,
                              parse_chat_request, usage)


@dataclass
class ServerSettings:
    api_key: str | None = None  # clients must send `Authorization: Bearer <key>`; None = open
    limits: ImageLimits = field(default_factory=ImageLimits)
    default_max_tokens: int = 256  # when a request gives no max_tokens (capped by what the context leaves)
    max_pending: int = 64  # requests waiting or running; more get 429
    max_body_bytes: int = 0  # 0: enough for max_images base64 images of max_bytes each, plus text

    def body_limit(self) -> int:
        return self.max_body_bytes or self.limits.max_images * (self.limits.max_bytes * 4 // 3 + 1024) + 2**20


class Worker:
    """Runs every generation on one thread, one request at a time, in arrival order.

    A queue rather than batched decoding: the server holds one small model on one CPU (or GPU); a single
    stream of a tiny model already decodes quickly, and batching unrelated requests would make every answer
    wait for the longest one in its batch and pay for padding, which costs more than it saves at the loads
    such a server sees. The model is also never touched by two threads at once, so nothing in it needs locks.
    """

    def __init__(self, max_pending: int):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="minimind-v-generate")
        self.max_pending, self.pending = max_pending, 0

    def submit(self, fn: Callable[[], Any]) -> asyncio.Future:
        if self.pending >= self.max_pending:
            raise APIError(429, f"the server is busy ({self.pending} requests queued); retry shortly",
                           code="server_busy", type="rate_limit_error")
        self.pending += 1
        fut = asyncio.get_running_loop().run_in_executor(self.pool, fn)
        fut.add_done_callback(lambda _: setattr(self, "pending", self.pending - 1))
        return fut


def create_app(models: dict[str, Any], settings: ServerSettings | None = None) -> Any:
    """A FastAPI app serving `models` (name -> VLMChat)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse, StreamingResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.exceptions import HTTPException

    settings = settings or ServerSettings()
    worker = Worker(settings.max_pending)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        yield
        worker.pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(title="minimind-v", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)

    @app.exception_handler(APIError)
    async def api_error(_req: Request, e: APIError) -> JSONResponse:
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(_req: Request, e: HTTPException) -> JSONResponse:
        return JSONResponse(APIError(e.status_code, str(e.detail)).body(), status_code=e.status_code)

    def authorize(request: Request) -> None:
        if settings.api_key is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), settings.api_key.encode()):
            raise APIError(401, "invalid or missing API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key")

    def model_card(name: str) -> dict[str, Any]:
        return {"id": name, "object": "model", "created": created, "owned_by": "minimind-v"}

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "ok", "models": list(models), "pending": worker.pending}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card(n) for n in models]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if name not in models:
            raise APIError(404, f"model {name!r} does not exist", "model", "model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        authorize(request)
        req = parse_chat_request(await read_body(request, settings.body_limit()))
        vlm = models.get(req.model)
        if vlm is None:
            raise APIError(404, f"model {req.model!r} does not exist; this server has {', '.join(models)}",
                           "model", "model_not_found")
        if len(req.images) > settings.limits.max_images:
            raise bad(f"{len(req.images)} images in one request; the limit is {settings.limits.max_images}",
                      "messages", "too_many_images")
        images = await run_in_threadpool(load_images, req.images, settings.limits)
        gen = generation_args(vlm, req, len(images), settings.default_max_tokens)
        rid = new_id()
        if not req.stream:
            s = await worker.submit(lambda: run_to_end(vlm, req, images, gen))
            return completion_body(rid, req.model, s.text, s.finish_reason,
                                   usage(s.prompt_tokens, s.completion_tokens))
        return StreamingResponse(stream_events(worker, vlm, req, images, gen, rid), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


async def read_body(request: Any, limit: int) -> bytes:
    """The request body, refused with 413 once it grows past `limit` (before it is all in memory)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"request body of {declared} bytes is over the limit of {limit}", code="body_too_large")
    body = bytearray()
    async for part in request.stream():
        body += part
        if len(body) > limit:
            raise APIError(413, f"request body is over the limit of {limit} bytes", code="body_too_large")
    return bytes(body)


def run_to_end(vlm: Any, req: ChatRequest, images: list[Any], gen: dict[str, Any]) -> Any:
    s = vlm.stream_chat(req.messages, images, **gen)
    s.read()
    return s


def stream_events(worker: Worker, vlm: Any, req: ChatRequest, images: list[Any], gen: dict[str, Any],
                  rid: str) -> AsyncIterator[str]:
    """Queue the generation now (so a full queue is still a plain 429) and return the server-sent events:
    a role chunk, content chunks as they decode, a finish chunk, usage if asked, then [DONE]."""
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
            s = vlm.stream_chat(req.messages, images, **gen)
            for piece in s:
                if cancel.is_set():
                    s.close()
                    return
                put(("piece", piece))
            put(("end", s))
        except Exception as e:  # validated up front, so this is a server fault: tell the client in-stream
            put(("error", e))

    worker.submit(job)

    async def events() -> AsyncIterator[str]:
        try:
            yield chunk(rid, req.model, {"role": "assistant", "content": ""})
            while True:
                kind, value = await queue.get()
                if kind == "piece":
                    yield chunk(rid, req.model, {"content": value})
                elif kind == "error":
                    err = APIError(500, f"generation failed: {value}", code="generation_failed", type="server_error")
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

    return events()


@contextlib.contextmanager
def serve_in_thread(app: Any, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Run `app` with uvicorn on a background thread; yields its base URL and stops it on exit.
    Port 0 picks a free port (the socket is bound here, so there is no race for it)."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve models over an OpenAI-compatible HTTP API")
    add_server_arguments(p, 8000, "run directory, or a folder of them (repeat for several); clients pick by "
                                  "directory name")
    p.add_argument("--api-key", default=os.environ.get("MINIMIND_V_API_KEY"),
                   help="require 'Authorization: Bearer KEY' (default: $MINIMIND_V_API_KEY, else open)")
    p.add_argument("--allow-local-dir", default=None, help="let file:// image URLs read images under this folder")
    p.add_argument("--allow-remote-images", action="store_true", help="fetch http(s) image URLs (off by default)")
    p.add_argument("--max-images", type=int, default=4, help="images per request")
    p.add_argument("--max-image-mb", type=float, default=8.0, help="encoded size of one image")
    p.add_argument("--max-image-pixels", type=int, default=4096 * 4096, help="width x height of one image")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length when a request gives none")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .registry import ModelPool, find_runs

    local = Path(args.allow_local_dir) if args.allow_local_dir else None
    if local is not None and not local.is_dir():
        raise FileNotFoundError(f"--allow-local-dir {args.allow_local_dir!r} is not a folder")
    limits = ImageLimits(max_bytes=int(args.max_image_mb * 2**20), max_pixels=args.max_image_pixels,
                         max_images=args.max_images, local_dir=local, allow_remote=args.allow_remote_images)
    pool = ModelPool(find_runs(args.model), device=args.device, weights=args.weights,
                     encoder_weights=args.encoder_weights, compile=args.compile)
    models = {name: pool.get(name) for name in pool.names}  # load everything now: fail before listening
    app = create_app(models, ServerSettings(api_key=args.api_key, limits=limits, default_max_tokens=args.max_tokens))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    print(f"serving {', '.join(models)} at http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
