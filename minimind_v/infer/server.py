"""`minimind-v serve`: an OpenAI-compatible HTTP API (GET /v1/models, POST /v1/chat/completions) with images.

    minimind-v serve --model runs/quickstart              # http://127.0.0.1:8000/v1
    curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' -d '{"model":
      "quickstart", "messages": [{"role": "user", "content": [{"type": "text", "text": "What color is it?"},
      {"type": "image_url", "image_url": {"url": "data:image/png;base64,..."}}]}]}'

Everything about the wire format lives in openai_protocol.py (requests) and openai_responses.py, about untrusted
images in images.py, about what a request may cost in admission.py, about the HTTP edge in http_guard.py;
chat_handler.py takes a request from its bytes to the model, off the event loop. This file makes the app and the
command. No input gets a 500.
`temperature` defaults to 0 (greedy) rather than OpenAI's 1: a small model answers best greedily.

No `from __future__ import annotations` here: FastAPI reads the route functions' annotations (`Request`),
and those classes are imported inside create_app so that `minimind-v --help` works without fastapi installed.
"""
import argparse
import contextlib
import hmac
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from .chat_handler import ChatHandler, ServerSettings
from .cli_infer import add_server_arguments
from .http_guard import BodyReader, LastResort
from .images import ImageLimits
from .openai_protocol import APIError

__all__ = ["ServerSettings", "create_app", "serve_in_thread", "add_parser", "serve"]


def create_app(models: dict[str, Any], settings: ServerSettings | None = None) -> Any:
    """A FastAPI app serving `models` (name -> VLMChat)."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response, StreamingResponse
    from starlette.exceptions import HTTPException

    settings = settings or ServerSettings()
    chat = ChatHandler(models, settings)
    created = int(time.time())

    @contextlib.asynccontextmanager
    async def lifespan(_app: Any):
        yield
        chat.close()

    app = FastAPI(title="minimind-v", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.add_middleware(LastResort)
    app.state.admission = chat.admission

    def error_response(e: APIError) -> Response:
        headers = {"Connection": "close"} if e.close_connection else None  # part of the body is left unread
        return Response(e.json(), status_code=e.status, media_type="application/json", headers=headers)

    @app.exception_handler(APIError)
    async def api_error(_req: Request, e: APIError) -> Response:
        return error_response(e)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> Response:  # unknown route, wrong method
        return error_response(await BodyReader(request, settings.body_limit()).refuse(
            APIError(e.status_code, str(e.detail))))

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
    async def health(request: Request) -> dict[str, Any]:
        authorize(request)  # it names the models and the load: not for strangers when a key is set
        return {"status": "ok", "models": list(models), "pending": chat.admission.pending}

    @app.get("/v1/models")
    async def list_models(request: Request) -> dict[str, Any]:
        authorize(request)
        return {"object": "list", "data": [model_card(n) for n in models]}

    @app.get("/v1/models/{name:path}")
    async def get_model(name: str, request: Request) -> dict[str, Any]:
        authorize(request)
        if name not in models:
            raise APIError(404, f"model {name[:60]!r} does not exist", "model", "model_not_found")
        return model_card(name)

    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Any:
        answer = await chat(request, authorize)
        if isinstance(answer, dict):
            return answer
        return StreamingResponse(answer, media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    return app


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
    p.add_argument("--max-image-aspect", type=float, default=20.0, help="long side / short side of one image")
    p.add_argument("--image-memory-mb", type=int, default=1024,
                   help="memory for decoding images, all requests together (requests beyond it wait)")
    p.add_argument("--max-tokens", type=int, default=256, help="answer length when a request gives none")
    p.set_defaults(func=serve)


def serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .registry import ModelPool, find_runs

    local = Path(args.allow_local_dir) if args.allow_local_dir else None
    if local is not None and not local.is_dir():
        raise FileNotFoundError(f"--allow-local-dir {args.allow_local_dir!r} is not a folder")
    limits = ImageLimits(max_bytes=int(args.max_image_mb * 2**20), max_pixels=args.max_image_pixels,
                         max_aspect=args.max_image_aspect, max_images=args.max_images, local_dir=local,
                         allow_remote=args.allow_remote_images)
    pool = ModelPool(find_runs(args.model), device=args.device, weights=args.weights,
                     encoder_weights=args.encoder_weights, compile=args.compile, adapter=args.adapter)
    models = {name: pool.get(name) for name in pool.names}  # load everything now: fail before listening
    app = create_app(models, ServerSettings(api_key=args.api_key, limits=limits, default_max_tokens=args.max_tokens,
                                            image_memory_bytes=args.image_memory_mb * 2**20))
    if args.host not in ("127.0.0.1", "localhost", "::1") and not args.api_key:
        print(f"warning: listening on {args.host} without --api-key: anyone who can reach it can use it")
    print(f"serving {', '.join(models)} at http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="info")
    return 0
