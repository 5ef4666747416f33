"""What LoRA saves: training step time and peak memory, full fine-tuning against a LoRA adapter, same model and rows.

Each measurement is a fresh process (so its peak RSS is its own), alternating full and LoRA for `--rounds`
rounds. A process builds the preset's VLM (random weights, the from-scratch encoder), freezes as `sft` does
(encoder frozen; full: projector + LLM train; LoRA: only the adapter on q,k,v,o,gate,up,down), and times
`--steps` AdamW steps on one packed batch of synthetic rows after two warm-up steps.

    python benchmarks/lora_cost.py --preset minimind2-small --rounds 3
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time


def child(preset: str, rank: int, steps: int, batch: int, threads: int) -> None:
    import torch

    from minimind_v.data.batches import PackCollate
    from minimind_v.data.encode import SampleEncoder
    from minimind_v.data.synthetic import synthetic_rows
    from minimind_v.data.tokenizer import train_tokenizer
    from minimind_v.eval.bench_data import build_model
    from minimind_v.eval.memory import PeakMemory
    from minimind_v.model.lora import LoraConfig, apply_lora
    from minimind_v.quickstart import corpus
    from minimind_v.train.freeze import apply_freeze
    from minimind_v.train.trainer import LossModule

    torch.set_num_threads(threads)
    from io import BytesIO

    from PIL import Image

    model = build_model(preset, "scratch", "mlp", 512)
    trainable = sum(apply_freeze(model, 0).values())  # as `train sft --freeze-llm 0`: the encoder frozen
    if rank:
        trainable = apply_lora(model, LoraConfig(rank=rank))
    tok = train_tokenizer(corpus(200), vocab_size=6400)
    rows, _ = synthetic_rows(batch, seed=0, words=(20, 60))
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=512)
    b = PackCollate(512)([enc({"conversations": r["conversations"],
                               "images": [Image.open(BytesIO(x)) for x in r["images"]]}) for r in rows])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    f, times = LossModule(model), []
    for s in range(steps + 2):
        t = time.perf_counter()
        loss, n, _ = f(b)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if s >= 2:
            times.append(time.perf_counter() - t)
    print(json.dumps({"rank": rank, "trainable": trainable, "step_s": statistics.median(times),
                      "peak_rss_mb": PeakMemory(torch.device("cpu")).read()["peak_mb"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="minimind2-small")
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child is not None:
        return child(a.preset, a.child, a.steps, a.batch, a.threads)
    from minimind_v.device import machine

    name, flags = machine()
    print(f"CPU: {name}; flags: {' '.join(flags or [])}")
    res: dict[int, list[dict]] = {0: [], a.rank: []}
    for _ in range(a.rounds):
        for rank in (0, a.rank):
            out = subprocess.run([sys.executable, __file__, "--child", str(rank), "--preset", a.preset, "--steps",
                                  str(a.steps), "--batch", str(a.batch), "--threads", str(a.threads)],
                                 capture_output=True, text=True, check=True)
            res[rank].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(res[rank][-1], flush=True)
    print(f"\n{a.preset}, batch {a.batch} packed rows, {a.rounds} alternated rounds (medians), fp32")
    print("| training | trainable | step (s) | peak RSS (MiB) |\n|---|---|---|---|")
    for rank, rows in res.items():
        label = f"LoRA rank {rank}" if rank else "full (projector + LLM)"
        print(f"| {label} | {rows[0]['trainable'] / 1e6:.2f}M | {statistics.median(r['step_s'] for r in rows):.3f} | "
              f"{statistics.median(r['peak_rss_mb'] for r in rows):.0f} |")


if __name__ == "__main__":
    main()
