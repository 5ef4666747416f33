"""The server's reliability benchmark, long part: N hostile requests against `minimind-v serve` in its own
process, then 16 concurrent streams with the real `openai` client and one valid request; reports the status
codes, server errors, dropped connections and the server's peak memory (VmHWM) against a budget.

    python benchmarks/server_storm.py                      # 10,000 requests against a tiny random model
    python benchmarks/server_storm.py --model runs/quickstart --requests 1000 --rss-budget-mb 2048

Exits 1 unless there were no responses >= 500, no dropped connections, no malformed errors, every valid
request answered, and the peak resident memory stayed within --rss-budget-mb. Only loopback is contacted:
the remote image URLs among the requests all name private addresses, which the server refuses unresolved
or resolves to loopback through the hosts file.
"""
from __future__ import annotations

import argparse
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def tiny_run(out: Path) -> Path:
    """A randomly initialised run directory small enough to answer in milliseconds."""
    import torch

    from minimind_v.config import LLMConfig, VisionConfig, VLMConfig
    from minimind_v.data.tokenizer import train_tokenizer
    from minimind_v.model.vlm import MiniMindVLM
    from minimind_v.train.checkpoint import save_run

    torch.manual_seed(0)
    tok = train_tokenizer(["What color is the circle?", "The circle is red.", "Describe the image."] * 50,
                          vocab_size=300)
    cfg = VLMConfig(llm=LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=320,
                                  max_seq_len=256),
                    vision=VisionConfig(kind="scratch", image_size=32, patch_size=8, width=16, layers=1, heads=2,
                                        merge=2),
                    image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"))
    return save_run(MiniMindVLM(cfg).eval(), tok, out / "tiny")


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, port: int, images: Path, a: argparse.Namespace) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "minimind_v.cli", "serve", "--model", str(model), "--port", str(port),
           "--device", "cpu", "--max-tokens", "4", "--max-image-mb", str(a.max_image_mb), "--max-images", "2",
           "--image-memory-mb", str(a.image_memory_mb), "--allow-local-dir", str(images), "--allow-remote-images"]
    # One intra-op thread: a tiny model gains nothing from more, and on a busy machine a parallel region waits
    # for its slowest thread (measured here: 50x slower answers with two threads on two loaded cores).
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)


def wait_ready(base: str, proc: subprocess.Popen, timeout: float = 180) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.3)
    raise SystemExit("the server did not start")


def streams_ok(base: str, model: str) -> bool:
    import openai

    client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)

    def one(seed: int) -> str:
        chunks = client.chat.completions.create(model=model, max_tokens=6, temperature=1.0, seed=seed, stream=True,
                                                messages=[{"role": "user", "content": "Describe the image."}])
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(one, range(16)))
    return together == [one(seed) for seed in range(16)]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="run directory (default: a tiny random model)")
    p.add_argument("--requests", type=int, default=10_000)
    p.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rss-budget-mb", type=float, default=1024, help="peak resident memory the server may reach")
    p.add_argument("--image-memory-mb", type=int, default=256)
    p.add_argument("--max-image-mb", type=float, default=1.0)
    a = p.parse_args()

    from PIL import Image

    from minimind_v.infer.hostile import HostileGenerator, storm

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(a.model) if a.model else tiny_run(Path(tmp))
        images = Path(tmp) / "images"
        images.mkdir()
        buf = io.BytesIO()
        Image.new("RGB", (40, 40), (200, 20, 20)).save(buf, "PNG")
        (images / "red.png").write_bytes(buf.getvalue())
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        proc = start_server(model, port, images, a)
        try:
            wait_ready(base, proc)
            idle = peak_rss_mib(proc.pid)
            body_limit = a.max_image_mb * 2**20 * 2 * 4 // 3 + 2 * 1024 + 2**20
            t = time.monotonic()
            report = storm(base, HostileGenerator(model.name, buf.getvalue(), int(body_limit), a.seed)(a.requests),
                           clients=a.clients)
            seconds = time.monotonic() - t
            streams = streams_ok(base, model.name)
            peak = peak_rss_mib(proc.pid)
            alive = proc.poll() is None
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{report.sent} hostile requests in {seconds:.0f} s over {a.clients} keep-alive connections "
          f"(seed {a.seed}, {os.cpu_count()} CPUs)")
    print("status codes: " + ", ".join(f"{code}: {n}" for code, n in sorted(report.statuses.items())))
    print(f"responses >= 500: {len(report.server_errors)}; dropped connections: {len(report.dropped)}; "
          f"malformed errors: {len(report.malformed)}; valid requests not answered: {len(report.valid_failed)}")
    print(f"16 concurrent openai streams correct: {streams}; server alive after: {alive}")
    print(f"server peak RSS: {peak:.0f} MiB (idle {idle:.0f} MiB; budget {a.rss_budget_mb:.0f} MiB)")
    for problem in (report.server_errors + report.dropped + report.malformed + report.valid_failed)[:10]:
        print("  " + problem[:300])
    ok = report.clean and streams and alive and peak <= a.rss_budget_mb
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
