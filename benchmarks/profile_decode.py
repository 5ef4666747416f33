"""Where a greedy decoding step at batch 1 spends its time: the torch profiler's table over `--tokens` tokens.

At batch 1 every weight is read once per token, so the matrix-vector products (`aten::mm`) should be bound by
memory bandwidth; everything else (norms, RoPE, attention, sampling, Python) is per-call overhead. The table says
which of the two a step is made of.

    python benchmarks/profile_decode.py --preset minimind3-small --weights fp32
    python benchmarks/profile_decode.py --preset minimind3-small --weights bf16
    python benchmarks/profile_decode.py --preset minimind3-small --weights int8   # the int8 kernel
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.profiler import ProfilerActivity, profile

from minimind_v.device import machine
from minimind_v.eval.bench_data import build_model
from minimind_v.eval.decode_bench import with_weights
from minimind_v.infer.generate import GenerationConfig, generate_stream


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="minimind3-small")
    p.add_argument("--weights", default="fp32", choices=["fp32", "bf16", "fp16", "int8"])
    p.add_argument("--tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rows", type=int, default=18, help="rows of the profiler table")
    a = p.parse_args()
    name, flags = machine()
    print(f"CPU: {name}; flags: {' '.join(flags or []) or 'none of those the dtype probe reads'}")
    torch.set_num_threads(a.threads)
    model = with_weights(build_model(a.preset, "scratch", "mlp", 768), a.weights).eval()
    image = model.cfg.image_token_id
    prompt = [1, 5, 6] + [image] * model.tokens_per_image + [7, 8, 9, 2, 1, 10, 11]  # a short image question
    pixels = torch.randn(1, 3, model.vision.image_size, model.vision.image_size)
    gen = GenerationConfig(max_new_tokens=a.tokens)

    def decode() -> float:
        stream = generate_stream(model, [prompt], pixels, gen)
        next(stream)  # the prefill is timed apart (it is in the profile: one forward among `tokens`)
        t = time.perf_counter()
        n = sum(1 for _ in stream)
        return n / (time.perf_counter() - t)

    with torch.no_grad():
        rates = [decode() for _ in range(3)]  # the first run warms up
        print(f"{a.preset}, {a.weights} weights: {max(rates[1:]):.1f} tokens/s at batch 1 (best of 2)")
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            decode()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=a.rows))


if __name__ == "__main__":
    main()
