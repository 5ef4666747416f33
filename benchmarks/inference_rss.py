"""Peak memory of inference, process after process: does the bound hold every time, not only on average?

Saves a model of a preset with a local encoder folder (random LLM weights) to a temporary run directory once, then
starts `--runs` fresh processes per weight storage, alternating the storages. Each process imports the package,
loads the run, answers one image question with 100 new tokens and reports its peak RSS (VmHWM: its whole life,
imports included). Prints min / median / max per storage and how many runs stayed within `--budget-mib`.

    python benchmarks/inference_rss.py --vision VE/siglip2-base-p32-256-ve --runs 20
    python benchmarks/inference_rss.py --vision VE/siglip2-base-p32-256-ve --runs 20 --storage bf16+int8
    python benchmarks/inference_rss.py --vision VE/siglip2-base-p32-256-ve --runs 20 --compare-allocator

A storage with ":keep" (from --compare-allocator) runs with MINIMIND_V_MALLOC=keep: glibc's default settings.
"""
from __future__ import annotations

import argparse
import os
import statistics
import tempfile

import torch

from minimind_v.allocator import ENV
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.device import machine
from minimind_v.eval.bench_data import build_model
from minimind_v.eval.decode_bench import inference_rss
from minimind_v.model.checkpoint import save_run
from minimind_v.quickstart import corpus


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--vision", required=True, help="a CLIP / SigLIP folder saved by transformers")
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--runs", type=int, default=20, help="fresh processes per storage")
    ap.add_argument("--storage", action="append", default=None,
                    help="LLM[+encoder] weight storage, e.g. bf16+int8 (repeatable; default bf16+int8 and bf16)")
    ap.add_argument("--budget-mib", type=float, default=476.8, help="the bound to count runs against (0.5 GB)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--compare-allocator", action="store_true",
                    help="also run each storage with MINIMIND_V_MALLOC=keep (glibc's own allocator settings)")
    a = ap.parse_args()
    storages = a.storage or ["bf16+int8", "bf16"]
    if a.compare_allocator:
        storages += [s + ":keep" for s in storages]
    name, flags = machine()
    print(f"CPU: {name}; flags: {' '.join(flags or [])}; torch {torch.__version__}")
    peaks: dict[str, list[float]] = {s: [] for s in storages}
    with tempfile.TemporaryDirectory(prefix="minimind-v-rss-") as tmp:
        tok = train_tokenizer(corpus(300), vocab_size=6400)
        save_run(build_model(a.preset, a.vision, "mlp", 512), tok, tmp)
        for r in range(a.runs):
            for s in storages:
                spec, _, keep = s.partition(":")
                weights, _, encoder = spec.partition("+")
                os.environ.pop(ENV, None)
                if keep:
                    os.environ[ENV] = "keep"
                res = inference_rss(tmp, weights, encoder or weights, 100, threads=a.threads)
                peaks[s].append(res["peak_rss_mb"])
                print(f"run {r + 1:2d} {s:10s} peak {res['peak_rss_mb']:.0f} MiB (after loading "
                      f"{res['peak_after_load_mb']:.0f})", flush=True)
    print(f"\n{a.preset} + {a.vision}, {a.runs} fresh processes each; peak RSS in MiB")
    print("| storage | min | median | max | within {:.0f} MiB |".format(a.budget_mib))
    print("|---|---|---|---|---|")
    for s, v in peaks.items():
        within = sum(p <= a.budget_mib for p in v)
        print(f"| {s} | {min(v):.0f} | {statistics.median(v):.0f} | {max(v):.0f} | {within} of {len(v)} |")


if __name__ == "__main__":
    main()
