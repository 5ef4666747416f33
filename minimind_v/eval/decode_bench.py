"""Decoding speed and inference memory: what a user of `ask`, `serve` or `web` feels.

`bench_decode` times greedy decoding of one image + question at batch 1 and batched: time to first token (image
preprocessing + encoder + prefill) and decode tokens/s after it. `--weights bf16` times the same model with its
weights stored in half precision (model/half.py).

`inference_rss` measures memory the way a user meets it: a fresh Python process that does nothing but
`minimind_v.load(run, weights=...)` and answer one question; its resident-set high-water mark is the figure.
Measuring inside the benchmark process instead would count the training benchmark's imports and buffers.
"""
from __future__ import annotations

import copy
import functools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..data.chat import encode_prompt
from ..data.synthetic import random_image
from ..device import autocast, sync
from ..infer.generate import GenerationConfig, generate_stream
from ..model.half import STORAGE_DTYPES, store_encoder_weights, store_weights
from ..model.vlm import MiniMindVLM
from .flops import summary
from .memory import PeakMemory

QUESTION = "<image>\nDescribe this image."


def with_weights(model: MiniMindVLM, weights: str, encoder_weights: str | None = None) -> MiniMindVLM:
    """The model itself for fp32, else a copy whose LLM and encoder weights are stored as asked."""
    encoder_weights = encoder_weights or weights
    if weights == encoder_weights == "fp32":
        return model
    low = copy.deepcopy(model)
    if weights != "fp32":
        store_weights(low.llm, STORAGE_DTYPES[weights])
    store_encoder_weights(low.vision, STORAGE_DTYPES[encoder_weights])
    return low


def weight_bytes_per_token(model: MiniMindVLM) -> int:
    """Bytes of weights one decoding step at batch 1 reads: every LLM parameter in its storage dtype (int8 rows
    and their scales, half or float), except the embedding table, of which a step reads one row (unless the
    output head shares it, and then the head reads it whole)."""
    llm = model.llm
    embedding = getattr(llm.embed_tokens, "weight", None)
    head = getattr(llm.lm_head, "weight", None)
    skip = {id(embedding)} if embedding is not None and embedding is not head else set()
    return sum(p.numel() * p.element_size() for p in llm.parameters() if id(p) not in skip)


@functools.lru_cache(maxsize=None)
def copy_bandwidth_gb_s(device: torch.device, mb: int = 256, reps: int = 5) -> float:
    """Memory bandwidth as a large copy sees it: bytes read + written per second, the best of `reps` copies.
    Measured once per device and process, so every weight storage of one run is held to the same limit."""
    src = torch.ones(mb * 2**20 // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(reps + 1):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        best = min(best, time.perf_counter() - t0)
    return 2 * src.numel() * src.element_size() / best / 1e9


def bandwidth_limit(model: MiniMindVLM, device: torch.device, tokens_per_s: float) -> dict[str, float]:
    """Decoding at batch 1 against the memory-bandwidth limit: a step must at least read every weight once, so
    no step beats weight bytes / bandwidth (activations and the KV cache are left out: the limit is generous)."""
    weights = weight_bytes_per_token(model)
    bandwidth = copy_bandwidth_gb_s(device)
    limit = bandwidth * 1e9 / weights
    return {"weights_mb_per_token": round(weights / 2**20, 2), "copy_gb_s": round(bandwidth, 1),
            "limit_tokens_per_s": round(limit, 1), "share_of_limit": round(tokens_per_s / limit, 3)}


def bench_decode(model: MiniMindVLM, tokenizer: Any, *, device: torch.device, dtype: str, new_tokens: int,
                 batch_sizes: list[int], repeats: int, image_size: int) -> dict[str, Any]:
    """Greedy decoding of `new_tokens` tokens (no early stop) for one image + question, per batch size."""
    model.to(device).eval()
    prompt = encode_prompt(tokenizer, [{"role": "user", "content": QUESTION}],
                           tokens_per_image=model.tokens_per_image, image_token=model.cfg.image_token)
    image = random_image(random.Random(1), image_size, n_shapes=(2, 6))
    gen = GenerationConfig(max_new_tokens=new_tokens)  # no stop ids: always the full count
    out: dict[str, Any] = {"prompt_tokens": len(prompt), "new_tokens": new_tokens}
    for b in batch_sizes:
        ttft, rate = [], []
        for r in range(repeats + 1):
            with autocast(device, dtype):
                t0 = time.perf_counter()
                pixels = model.vision.preprocess([image] * b).to(device)
                stream = generate_stream(model, [prompt] * b, pixels, gen)
                next(stream)
                sync(device)
                t1 = time.perf_counter()
                n = 1 + sum(1 for _ in stream)
                sync(device)
                t2 = time.perf_counter()
            if r:  # the first run warms up
                ttft.append(t1 - t0)
                rate.append(b * (n - 1) / (t2 - t1))
        out[f"batch{b}"] = {"time_to_first_token_s": summary(ttft, 4), "decode_tokens_per_s": summary(rate, 1)}
        if b == 1:
            out["batch1"]["bandwidth"] = bandwidth_limit(model, device, statistics.median(rate))
    return out


def inference_rss(run_dir: str | Path, weights: str, encoder_weights: str | None = None, new_tokens: int = 100,
                  threads: int | None = None) -> dict:
    """Peak RSS of a fresh process that loads `run_dir` with `weights` and answers one image question."""
    env = {**os.environ, "MINIMIND_V_THREADS": str(threads or torch.get_num_threads())}
    p = subprocess.run([sys.executable, "-m", "minimind_v.eval.decode_bench", str(run_dir), weights,
                        encoder_weights or weights, str(new_tokens)], capture_output=True, text=True, env=env)
    if p.returncode:
        raise RuntimeError(f"the inference-memory process failed:\n{p.stderr[-2000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def inference_rss_of(model: MiniMindVLM, tokenizer: Any, weights: list[str], encoder_weights: str | None = None,
                     new_tokens: int = 100) -> dict:
    """inference_rss for a model in memory, saved to a temporary run directory first; keyed by the weights."""
    from ..model.checkpoint import save_run

    with tempfile.TemporaryDirectory(prefix="minimind-v-rss-") as tmp:
        save_run(model, tokenizer, tmp)
        return {weights_label(w, encoder_weights): inference_rss(tmp, w, encoder_weights, new_tokens) for w in weights}


def weights_label(weights: str, encoder_weights: str | None) -> str:
    return weights if encoder_weights in (None, weights) else f"{weights}+encoder_{encoder_weights}"


def _child(run_dir: str, weights: str, encoder_weights: str, new_tokens: int) -> None:
    """The measured process: load, answer, report VmHWM (its whole life, imports included)."""
    import minimind_v

    torch.set_num_threads(int(os.environ.get("MINIMIND_V_THREADS", "0")) or torch.get_num_threads())
    t = time.perf_counter()
    vlm = minimind_v.load(run_dir, device="cpu", weights=weights, encoder_weights=encoder_weights)
    loaded = PeakMemory(torch.device("cpu")).read()["peak_mb"]
    image = random_image(random.Random(1), vlm.model.vision.image_size, n_shapes=(2, 6))
    vlm.stop_ids = []  # always the full count of new tokens
    answer = vlm.answer([image], QUESTION, max_new_tokens=new_tokens)
    print(json.dumps({"weights": weights, "encoder_weights": encoder_weights, "peak_rss_mb": PeakMemory(torch.device("cpu")).read()["peak_mb"],
                      "peak_after_load_mb": loaded, "seconds": round(time.perf_counter() - t, 2),
                      "answer_chars": len(answer), "transformers_imported": "transformers.modeling_utils" in
                      sys.modules}))


if __name__ == "__main__":
    _child(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
