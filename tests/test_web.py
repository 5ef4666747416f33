"""The gradio demo: driven end to end with gradio_client, and once in headless Chromium (with a screenshot)."""
from __future__ import annotations

import base64
import fcntl
import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
from PIL import Image

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio", reason="the web demo needs gradio (pip install minimind-v[web])")
gradio_client = pytest.importorskip("gradio_client", reason="these tests need gradio_client")

from minimind_v.infer.registry import ModelPool, find_runs  # noqa: E402
from minimind_v.infer.web import launch, to_conversation  # noqa: E402

from conftest import build_tiny_run  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tiny_run, tmp_path_factory) -> Path:
    """A folder of two run directories: the page offers both."""
    root = tmp_path_factory.mktemp("runs")
    shutil.copytree(tiny_run, root / "tiny")
    build_tiny_run(root / "other", seed=1)
    Image.new("RGB", (48, 48), (220, 30, 30)).save(root / "red.png")
    Image.new("RGB", (64, 40), (30, 30, 220)).save(root / "blue.png")
    (root / "fake.png").write_bytes(b"not an image at all")
    return root


@pytest.fixture(scope="module")
def app(runs):
    pool = ModelPool(find_runs([runs]), device="cpu")
    port = free_port()
    demo = launch(pool, port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", pool
    demo.close()


def test_history_becomes_our_conversation():
    history = [{"role": "user", "content": [{"type": "file", "file": {"path": "/a.png"}}]},
               {"role": "user", "content": [{"type": "text", "text": "What color?"}]},
               {"role": "assistant", "content": [{"type": "text", "text": "Red."}]},
               {"role": "user", "content": "And this?"}, {"role": "assistant", "content": ""}]
    messages, paths = to_conversation(history, {"text": "Compare them.", "files": ["/b.png", "/c.png"]})
    assert messages == [{"role": "user", "content": "<image>\nWhat color?"}, {"role": "assistant", "content": "Red."},
                        {"role": "user", "content": "And this?\n<image>\n<image>\nCompare them."}]
    assert paths == ["/a.png", "/b.png", "/c.png"]
    assert to_conversation([], {"text": "", "files": ["/x.png"]})[0] == [
        {"role": "user", "content": "<image>\nDescribe the image."}]


def test_gradio_client_end_to_end(app, runs):
    url, pool = app
    client = gradio_client.Client(url, verbose=False)
    files = [gradio_client.handle_file(str(runs / "red.png")), gradio_client.handle_file(str(runs / "blue.png"))]
    msg = {"text": "Which image has more shapes?", "files": files}
    answer, stats = client.predict(msg, "tiny", 0.0, 1.0, 6, api_name="/chat")
    expected = pool.get("tiny").stream_chat(
        [{"role": "user", "content": "<image>\n<image>\nWhich image has more shapes?"}],
        [Image.open(runs / p).convert("RGB") for p in ("red.png", "blue.png")], max_new_tokens=6).read()
    assert answer == expected
    assert stats.startswith("tiny: ") and "tokens/s" in stats
    # streaming: the answer grows piece by piece; the speed line comes with the last update
    job = client.submit({"text": "Hello! How are you today?", "files": []}, "other", 1.0, 0.9, 8, api_name="/chat")
    updates = list(job)
    texts = [u[0] for u in updates]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])) and "other: " in updates[-1][1]
    with pytest.raises(Exception, match="not a supported image"):
        client.predict({"text": "x", "files": [gradio_client.handle_file(str(runs / "fake.png"))]}, "tiny", 0.0,
                       1.0, 4, api_name="/chat")


def _above_9(fd: int) -> int:
    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium spoken to over the DevTools protocol on a pipe (fds 3/4): no extra packages."""

    def __init__(self, profile: Path):
        cmd_r, self._cmd = os.pipe()
        self._resp, resp_w = os.pipe()
        # the child sees them as fds 3 and 4; numbers >= 10 here cannot collide with 3 and 4 while moving
        cmd_r, resp_w = _above_9(cmd_r), _above_9(resp_w)
        flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 f"--user-data-dir={profile}", "--remote-debugging-pipe", "--window-size=1000,860",
                 "--hide-scrollbars", "about:blank"]
        self.proc = subprocess.Popen(["bash", "-c", f'exec "$0" "$@" 3<&{cmd_r} 4>&{resp_w}', CHROMIUM, *flags],
                                     pass_fds=(cmd_r, resp_w), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        os.close(cmd_r)
        os.close(resp_w)
        self._buf, self._id, self.session = b"", 0, None
        target = self.send("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def send(self, method: str, **params) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params}
        if self.session:
            msg["sessionId"] = self.session
        os.write(self._cmd, json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self._buf:
                data = os.read(self._resp, 1 << 20)
                if not data:
                    raise RuntimeError("chromium closed the DevTools pipe")
                self._buf += data
            raw, self._buf = self._buf.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def js(self, expr: str):
        return self.send("Runtime.evaluate", expression=expr, returnByValue=True)["result"].get("value")

    def wait(self, expr: str, timeout: float = 30.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.js(expr):
                return value
            time.sleep(0.1)
        raise TimeoutError(f"the page never satisfied {expr}")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        os.close(self._cmd)
        os.close(self._resp)


@pytest.mark.skipif(not os.access(CHROMIUM, os.X_OK),
                    reason="needs Debian's chromium package (apt-get install chromium) for the browser test")
def test_headless_chromium_chat_with_an_image(app, runs, tmp_path):
    url, pool = app
    browser = Browser(tmp_path / "profile")
    try:
        browser.send("Page.enable")
        browser.send("Page.navigate", url=url)
        browser.wait("document.querySelector('textarea') !== null")
        doc = browser.send("DOM.getDocument")["root"]["nodeId"]
        file_input = browser.send("DOM.querySelector", nodeId=doc, selector="input[type=file]")["nodeId"]
        browser.send("DOM.setFileInputFiles", nodeId=file_input, files=[str(runs / "red.png")])
        browser.wait("document.querySelectorAll('img').length > 0")  # the upload's thumbnail
        browser.js("document.querySelector('textarea').focus()")
        browser.send("Input.insertText", text="What color is the circle?")
        browser.send("Input.dispatchKeyEvent", type="keyDown", key="Enter", code="Enter", windowsVirtualKeyCode=13,
                     text="\r")
        stats = browser.wait("(document.querySelector('#stats') || {}).innerText?.includes('tokens/s') "
                             "&& document.querySelector('#stats').innerText")
        assert stats.startswith(f"{pool.names[0]}: ")  # the dropdown's first model answered
        assert browser.js("document.body.innerText").count("What color is the circle?") == 1
        shot = base64.b64decode(browser.send("Page.captureScreenshot", format="png")["data"])
    finally:
        browser.close()
    (tmp_path / "web_demo.png").write_bytes(shot)
    im = Image.open(tmp_path / "web_demo.png")
    assert im.size[0] >= 800 and len(set(im.convert("L").getdata())) > 10  # a rendered page, not a blank one
    if out := os.environ.get("MINIMIND_V_SCREENSHOT"):  # to refresh docs/web_demo.png
        im.convert("RGB").quantize(64).save(out, optimize=True)


def test_web_command_offers_every_run_of_a_folder(runs, monkeypatch):
    import minimind_v.infer.web as web
    from minimind_v.cli import main

    seen = {}
    monkeypatch.setattr(web, "launch", lambda pool, host, port: seen.update(pool=pool, host=host, port=port))
    assert main(["web", "--model", str(runs), "--device", "cpu", "--port", "7999"]) == 0
    assert seen["pool"].names == ["other", "tiny"] and (seen["host"], seen["port"]) == ("127.0.0.1", 7999)
    assert main(["web", "--model", str(runs / "nope")]) == 2
