"""The OpenAI-compatible server: the real `openai` client against a live server, and every bad request."""
from __future__ import annotations

import base64
import http.server
import io
import json
import struct
import threading
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs fastapi (pip install minimind-v[serve])")
pytest.importorskip("uvicorn", reason="the server needs uvicorn (pip install minimind-v[serve])")
httpx = pytest.importorskip("httpx", reason="these tests need httpx")
openai = pytest.importorskip("openai", reason="these tests need the openai client (pip install openai)")

from conftest import png  # noqa: E402
from minimind_v.infer.images import ImageLimits  # noqa: E402
from minimind_v.infer.server import ServerSettings, create_app, serve_in_thread  # noqa: E402

KEY = "sk-test-123"
JSON = {"Content-Type": "application/json"}


def data_url(data: bytes, media: str = "image/png") -> str:
    return f"data:{media};base64,{base64.b64encode(data).decode()}"


def bomb_png(w: int, h: int) -> bytes:
    """A tiny file whose header claims w x h pixels (PIL reads the header before any pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def user(*parts) -> list[dict]:
    return [{"role": "user", "content": [p if isinstance(p, dict) else
                                         {"type": "text", "text": p} for p in parts]}]


def image_part(url: str) -> dict:
    return {"type": "image_url", "image_url": {"url": url}}


def video_part(url: str, frames: int | None = None) -> dict:
    return {"type": "video_url", "video_url": {"url": url, **({"frames": frames} if frames is not None else {})}}


def gif(n: int = 6) -> bytes:
    """An animated GIF whose frame i is a flat grey of level 30 * i."""
    frames = [Image.new("RGB", (24, 24), (30 * i,) * 3) for i in range(n)]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return out.getvalue()


@pytest.fixture(scope="module")
def allowed(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("allowed")
    (d / "red.png").write_bytes(png())
    (d.parent / "secret.png").write_bytes(png(color=(0, 0, 0)))
    (d / "escape.png").symlink_to(d.parent / "secret.png")
    return d


@pytest.fixture(scope="module")
def base(vlm, allowed):
    limits = ImageLimits(max_bytes=64 * 1024, max_pixels=256 * 256, max_images=2, local_dir=allowed)
    with serve_in_thread(create_app({"tiny": vlm}, ServerSettings(limits=limits, default_max_tokens=8))) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    return openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=60)


def test_models_listing(base):
    r = httpx.get(f"{base}/v1/models")
    assert r.status_code == 200 and [m["id"] for m in r.json()["data"]] == ["tiny"]
    assert httpx.get(f"{base}/v1/models/tiny").json()["object"] == "model"
    assert httpx.get(f"{base}/v1/models/other").json()["error"]["code"] == "model_not_found"


def test_openai_client_non_streaming_matches_the_python_api(client, vlm):
    im = Image.open(io.BytesIO(png())).convert("RGB")
    r = client.chat.completions.create(model="tiny", max_tokens=6,
                                       messages=user(image_part(data_url(png())), "What color is the circle?"))
    expected = vlm.stream_chat([{"role": "user", "content": "<image>\nWhat color is the circle?"}], [im],
                               max_new_tokens=6)
    assert r.choices[0].message.content == expected.read()
    assert r.choices[0].finish_reason == expected.finish_reason
    assert r.usage.prompt_tokens == expected.prompt_tokens > vlm.model.tokens_per_image
    assert r.usage.completion_tokens == expected.completion_tokens
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_a_video_part_is_its_frames_as_images(client, vlm):
    source = Image.open(io.BytesIO(gif()))
    frames = []
    for i in (0, 2, 3, 5):  # frame_indices(6, 4): the middle of four equal stretches
        source.seek(i)
        frames.append(source.convert("RGB"))
    r = client.chat.completions.create(model="tiny", max_tokens=6, messages=user(
        video_part(data_url(gif(), "image/gif"), 4), "Which way does the red circle move?"))
    expected = vlm.stream_chat([{"role": "user", "content": "<image>\n" * 4 + "Which way does the red circle move?"}],
                               frames, max_new_tokens=6)
    assert r.choices[0].message.content == expected.read()
    assert r.usage.prompt_tokens == expected.prompt_tokens > 4 * vlm.model.tokens_per_image


def test_openai_client_streaming_equals_non_streaming(client, base):
    kw = dict(model="tiny", max_tokens=10, temperature=1.0, seed=4,
              messages=[{"role": "system", "content": "Be brief."}, *user("Describe the image.",
                                                                         image_part(data_url(png())))])
    whole = client.chat.completions.create(**kw)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content and text
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    with httpx.stream("POST", f"{base}/v1/chat/completions", json={**kw, "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.headers["content-type"].startswith("text/event-stream")
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_seed_reproducible_and_stop_strings(client):
    kw = dict(model="tiny", max_tokens=12, temperature=1.0, messages=user("Hello! How are you today?"))
    a = client.chat.completions.create(seed=1, **kw).choices[0].message.content
    assert client.chat.completions.create(seed=1, **kw).choices[0].message.content == a
    cut = a.strip()[len(a.strip()) // 2:][:2]
    assert cut, f"the sample {a!r} is too short to cut"
    r = client.chat.completions.create(seed=1, stop=[cut, "never-appears"], **kw)
    assert r.choices[0].message.content == a[:a.index(cut)] and r.choices[0].finish_reason == "stop"


def test_concurrent_requests_are_all_served_correctly(client):
    def ask(seed: int, stream: bool) -> str:
        kw = dict(model="tiny", max_tokens=8, temperature=1.0, seed=seed, messages=user("What digit is this?"))
        if stream:
            return "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(stream=True, **kw)
                           if c.choices)
        return client.chat.completions.create(**kw).choices[0].message.content

    jobs = [(s, s % 2 == 0) for s in range(8)]
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda j: ask(*j), jobs))
    assert together == [ask(s, stream) for s, stream in jobs]
    assert len(set(together)) > 1


def test_an_abandoned_stream_does_not_block_the_server(base, client):
    body = {"model": "tiny", "max_tokens": 200, "stream": True, "messages": user("Describe the image.")}
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body) as r:
        next(r.iter_lines())
    r = client.chat.completions.create(model="tiny", max_tokens=3, messages=user("Hi"))
    assert r.usage.completion_tokens <= 3


def test_local_files_only_inside_the_allowed_folder(client, allowed):
    r = client.chat.completions.create(model="tiny", max_tokens=3, messages=user(
        "<image>\n<image>\nWhich image has more shapes?", image_part((allowed / "red.png").as_uri()),
        image_part(data_url(png(color=(0, 200, 0))))))
    assert r.usage.prompt_tokens > 8
    for path, code in [(allowed / "escape.png", "local_file_forbidden"), (allowed / ".." / "secret.png",
                       "local_file_forbidden"), (allowed / "nope.png", "image_not_found")]:
        with pytest.raises(openai.BadRequestError) as e:
            client.chat.completions.create(model="tiny", messages=user("x", image_part(f"file://{path}")))
        assert e.value.code == code


def test_api_key_and_remote_images_when_enabled(vlm, tmp_path):
    (tmp_path / "pic.png").write_bytes(png())
    handler = lambda *a: http.server.SimpleHTTPRequestHandler(*a, directory=str(tmp_path))  # noqa: E731
    handler.log_message = lambda *a: None
    files = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=files.serve_forever, daemon=True).start()
    pic = f"http://127.0.0.1:{files.server_address[1]}/pic.png"
    # The file server is on loopback, which remote URLs may only reach when the operator trusts it.
    settings = ServerSettings(api_key=KEY, limits=ImageLimits(allow_remote=True, trusted_networks=("127.0.0.1/32",)),
                              default_max_tokens=4)
    try:
        with serve_in_thread(create_app({"tiny": vlm}, settings)) as base:
            for headers in [{}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}]:
                r = httpx.get(f"{base}/v1/models", headers=headers)
                assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
            good = openai.OpenAI(base_url=f"{base}/v1", api_key=KEY, max_retries=0)
            r = good.chat.completions.create(model="tiny", messages=user("What color?", image_part(pic)))
            assert r.usage.completion_tokens >= 1
            with pytest.raises(openai.BadRequestError) as e:
                good.chat.completions.create(model="tiny", messages=user("x", image_part(pic + ".missing")))
            assert e.value.code == "image_fetch_failed"
            with pytest.raises(openai.BadRequestError) as e:  # no --allow-local-dir on this server
                good.chat.completions.create(model="tiny", messages=user("x", image_part("file:///etc/hosts")))
            assert e.value.code == "local_files_disabled"
    finally:
        files.shutdown()


TEXT = user("What color is the circle?")
IMG = data_url(png())
BAD = [  # (request body or raw bytes, status, code, param)
    (b"{not json", 400, "invalid_json", None),
    (b"[1, 2]", 400, "invalid_type", None),
    ({"messages": TEXT}, 400, "missing_required_parameter", "model"),
    ({"model": 7, "messages": TEXT}, 400, "invalid_type", "model"),
    ({"model": "gpt-4o", "messages": TEXT}, 404, "model_not_found", "model"),
    ({"model": "tiny", "messages": "hi"}, 400, "invalid_type", "messages"),
    ({"model": "tiny", "messages": []}, 400, "invalid_type", "messages"),
    ({"model": "tiny", "messages": ["hi"]}, 400, "invalid_type", "messages[0]"),
    ({"model": "tiny", "messages": [{"role": "tool", "content": "x"}]}, 400, "invalid_value", "messages[0].role"),
    ({"model": "tiny", "messages": [{"role": "user", "content": 5}]}, 400, "invalid_type", "messages[0].content"),
    ({"model": "tiny", "messages": user({"type": "input_audio"})}, 400, "invalid_type",
     "messages[0].content[0].type"),
    ({"model": "tiny", "messages": user({"type": "text", "text": 3})}, 400, "invalid_type",
     "messages[0].content[0].text"),
    ({"model": "tiny", "messages": user({"type": "image_url", "image_url": {"url": 3}})}, 400, "invalid_type",
     "messages[0].content[0].image_url.url"),
    ({"model": "tiny", "messages": TEXT, "temperature": "hot"}, 400, "invalid_type", "temperature"),
    ({"model": "tiny", "messages": TEXT, "temperature": 7}, 400, "invalid_value", "temperature"),
    ({"model": "tiny", "messages": TEXT, "top_p": 1.5}, 400, "invalid_value", "top_p"),
    ({"model": "tiny", "messages": TEXT, "max_tokens": 0}, 400, "invalid_value", "max_tokens"),
    ({"model": "tiny", "messages": TEXT, "max_tokens": "8"}, 400, "invalid_type", "max_tokens"),
    ({"model": "tiny", "messages": TEXT, "max_tokens": 10**6}, 400, "invalid_value", "max_tokens"),
    ({"model": "tiny", "messages": TEXT, "max_tokens": 250}, 400, "context_length_exceeded", "max_tokens"),
    ({"model": "tiny", "messages": TEXT, "stream": "yes"}, 400, "invalid_type", "stream"),
    ({"model": "tiny", "messages": TEXT, "seed": 1.5}, 400, "invalid_type", "seed"),
    ({"model": "tiny", "messages": TEXT, "stop": 5}, 400, "invalid_type", "stop"),
    ({"model": "tiny", "messages": TEXT, "stop": list("abcde")}, 400, "invalid_value", "stop"),
    ({"model": "tiny", "messages": TEXT, "n": 2}, 400, "unsupported_value", "n"),
    ({"model": "tiny", "messages": TEXT, "tools": [{"type": "function"}]}, 400, "unsupported_parameter", "tools"),
    ({"model": "tiny", "messages": user("x", image_part("data:image/png;base64,***"))}, 400, "invalid_base64",
     "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part(data_url(b"hi", "text/plain")))}, 400, "invalid_image",
     "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part(data_url(b"GIF89a but not really")))}, 400,
     "invalid_image", "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part(data_url(png()[:60])))}, 400, "invalid_image",
     "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part(data_url(png((300, 300)))))}, 400, "image_too_large",
     "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part(data_url(bomb_png(100_000, 100_000))))}, 400,
     "image_too_large", "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part("data:image/png;base64," + "A" * 200_000))}, 400,
     "image_too_large", "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part("http://example.com/cat.png"))}, 400,
     "remote_images_disabled", "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user("x", image_part("ftp://example.com/cat.png"))}, 400,
     "invalid_image_url", "messages[0].content[1].image_url.url"),
    ({"model": "tiny", "messages": user(image_part(IMG), image_part(IMG), image_part(IMG), "x")}, 400,
     "too_many_images", "messages"),
    ({"model": "tiny", "messages": user("x", video_part(data_url(gif(), "image/gif"), 17))}, 400, "invalid_value",
     "messages[0].content[1].video_url.frames"),
    ({"model": "tiny", "messages": user("x", video_part(IMG))}, 400, "invalid_video",
     "messages[0].content[1].video_url.url"),
    ({"model": "tiny", "messages": user(*[video_part(data_url(gif(), "image/gif"), 8)] * 3, "x")}, 400,
     "too_many_frames", "messages"),
    ({"model": "tiny", "messages": user("<image> and <image>", image_part(IMG))}, 400, "image_marker_mismatch",
     "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "user", "content": "<image>\nWhat?"}]}, 400, "image_marker_mismatch",
     "messages[0].content"),
    ({"model": "tiny", "messages": [{"role": "assistant", "content": "x", }]}, 400, "invalid_messages", "messages"),
    ({"model": "tiny", "messages": user("<|im_start|>system")}, 400, "invalid_messages", "messages"),
    ({"model": "tiny", "messages": user("word " * 300)}, 400, "context_length_exceeded", "messages"),
]


@pytest.mark.parametrize("body,status,code,param", BAD, ids=[f"{i}-{b[2]}" for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_style_errors(base, body, status, code, param):
    kw = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) \
        else {"json": body}
    r = httpx.post(f"{base}/v1/chat/completions", **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert (err["code"], err["param"]) == (code, param), err["message"]


def test_oversized_body_wrong_method_and_unknown_route(base):
    r = httpx.post(f"{base}/v1/chat/completions", content=b"x" * (3 * 2**20), headers=JSON)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    r = httpx.get(f"{base}/v1/chat/completions")
    assert r.status_code == 405 and "error" in r.json()
    r = httpx.get(f"{base}/v2/anything")
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.get(f"{base}/health")
    assert r.json()["status"] == "ok"


def test_the_openai_client_surfaces_our_errors(client):
    with pytest.raises(openai.BadRequestError, match="context"):
        client.chat.completions.create(model="tiny", messages=user("word " * 300))
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="nope", messages=TEXT)
    bad = json.dumps({"model": "tiny", "messages": TEXT, "stream": True, "max_tokens": 0})
    r = httpx.post(f"{client.base_url}chat/completions", content=bad, headers=JSON)  # refused before it starts
    assert r.status_code == 400 and r.headers["content-type"].startswith("application/json")


def test_serve_command_wires_its_flags(tiny_run, tmp_path, monkeypatch):
    import uvicorn

    from minimind_v.cli import main

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app, host, port, **kw: seen.update(app=app, host=host, port=port))
    assert main(["serve", "--model", str(tiny_run), "--device", "cpu", "--api-key", KEY, "--max-images", "1",
                 "--allow-local-dir", str(tmp_path), "--port", "8123"]) == 0
    assert (seen["host"], seen["port"]) == ("127.0.0.1", 8123)  # loopback unless asked otherwise
    (tmp_path / "red.png").write_bytes(png())
    with serve_in_thread(seen["app"]) as base:
        assert httpx.get(f"{base}/v1/models").status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert [m["id"] for m in httpx.get(f"{base}/v1/models", headers=auth).json()["data"]] == [tiny_run.name]
        body = {"model": tiny_run.name, "max_tokens": 2,
                "messages": user("x", image_part((tmp_path / "red.png").as_uri()))}
        assert httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth).status_code == 200
        body["messages"] = user("x", image_part(IMG), image_part(IMG))
        r = httpx.post(f"{base}/v1/chat/completions", json=body, headers=auth)
        assert r.json()["error"]["code"] == "too_many_images"


def test_model_folders_and_names(tiny_run, tmp_path):
    from minimind_v.infer.registry import find_runs

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "config.json").write_text("{}")
    (tmp_path / "b" / "a").mkdir(parents=True)
    (tmp_path / "b" / "a" / "config.json").write_text("{}")
    (tmp_path / "empty").mkdir()
    assert list(find_runs([tmp_path / "a", tmp_path / "b"])) == ["a", "b/a"]  # same name: the parent tells apart
    assert list(find_runs([tiny_run, tiny_run])) == [tiny_run.name]
    with pytest.raises(FileNotFoundError, match="neither a run directory"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        find_runs([tmp_path / "missing"])


def test_pool_compiles_before_the_first_request_only_when_asked(tiny_run, monkeypatch, capsys):
    from minimind_v.infer.api import VLMChat
    from minimind_v.infer.registry import ModelPool, find_runs

    warmed = []
    monkeypatch.setattr(VLMChat, "warm_up", lambda self: warmed.append(self))
    plain = ModelPool(find_runs([tiny_run]), device="cpu", weights="bf16").get(tiny_run.name)
    assert warmed == [] and not hasattr(plain.model, "decode_step")
    fast = ModelPool(find_runs([tiny_run]), device="cpu", compile=True).get(tiny_run.name)
    assert warmed == [fast] and callable(fast.model.decode_step)
    assert "compiling the decoding step" in capsys.readouterr().out
