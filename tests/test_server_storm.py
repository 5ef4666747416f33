"""The server's reliability suite, fast part: a seeded storm of hostile requests of every kind, then 16
concurrent streams with the real `openai` client. (benchmarks/server_storm.py runs the long version: ten
thousand requests against a separate server process, reporting its peak memory.)"""
from __future__ import annotations

import io
import resource
from concurrent.futures import ThreadPoolExecutor

import pytest
from PIL import Image

pytest.importorskip("fastapi", reason="the server needs fastapi (pip install minimind-v[serve])")
pytest.importorskip("httpx", reason="these tests need httpx")
openai = pytest.importorskip("openai", reason="these tests need the openai client (pip install openai)")

from minimind_v.infer.hostile import HostileGenerator, storm  # noqa: E402
from minimind_v.infer.images import ImageLimits  # noqa: E402
from minimind_v.infer.server import ServerSettings, create_app, serve_in_thread  # noqa: E402

N = 320  # 20 of each kind


@pytest.fixture(scope="module")
def server(vlm, tmp_path_factory):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 20, 20)).save(buf, "PNG")
    limits = ImageLimits(max_bytes=256 * 1024, max_images=2, local_dir=tmp_path_factory.mktemp("images"),
                         allow_remote=True)
    settings = ServerSettings(limits=limits, max_body_bytes=2**20, default_max_tokens=4)
    with serve_in_thread(create_app({"tiny": vlm}, settings)) as url:
        yield url, buf.getvalue(), settings.body_limit()


def test_a_storm_of_hostile_requests_gets_no_5xx_and_drops_no_connection(server):
    url, image, body_limit = server
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report = storm(url, HostileGenerator("tiny", image, body_limit, seed=14)(N), clients=4)
    grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    print(f"\n{report.sent} requests: {dict(report.statuses)}; peak memory grew {grown:.0f} MiB")
    assert report.sent == N
    assert report.server_errors == [] and report.dropped == []
    assert report.malformed == [] and report.valid_failed == []
    assert report.statuses[200] >= N // 8  # the valid requests among them were answered
    assert grown < 512
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    after = client.chat.completions.create(model="tiny", max_tokens=3, messages=[{"role": "user", "content": "Hi"}])
    assert after.usage.completion_tokens >= 1


def test_sixteen_concurrent_openai_streams_are_all_correct(server, vlm):
    url = server[0]
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    question = [{"role": "user", "content": "Describe the image."}]

    def streamed(seed: int) -> tuple[str, str | None]:
        chunks = list(client.chat.completions.create(model="tiny", max_tokens=8, temperature=1.0, seed=seed,
                                                     messages=question, stream=True))
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices), finish

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(streamed, range(16)))
    alone = []
    for seed in range(16):
        s = vlm.stream_chat(question, max_new_tokens=8, temperature=1.0, seed=seed)
        alone.append((s.read(), s.finish_reason))
    assert together == alone
    assert len({text for text, _ in together}) > 1
