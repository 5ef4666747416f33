"""`minimind-v quickstart`: train on the embedded default, evaluate, show answers."""
from __future__ import annotations

import argparse
import dataclasses

from .quickstart import QUICKSTART_PRESETS, run_quickstart


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a VLM on the embedded shapes world, evaluate it, show answers")
    p.add_argument("--out", default="runs/quickstart", help="run directory to write (default: runs/quickstart)")
    p.add_argument("--preset", default="default", choices=sorted(QUICKSTART_PRESETS),
                   help="default: the full recipe (~15 min on 2 CPU cores); smoke: the same path in seconds")
    p.add_argument("--device", default="auto", help="auto (CUDA, then MPS, then CPU), cpu, cuda, mps")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16", "fp16"], help="autocast precision")
    p.add_argument("--sft-steps", type=int, default=None, help="override the SFT step count")
    p.add_argument("--workers", type=int, default=None, help="DataLoader workers rendering the data")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    qs = dataclasses.replace(QUICKSTART_PRESETS[args.preset])
    if args.dtype:
        qs.dtype = args.dtype
    if args.sft_steps:
        qs.sft = dataclasses.replace(qs.sft, steps=args.sft_steps)
    if args.workers is not None:
        qs.workers = args.workers
    run_quickstart(args.out, qs, device=args.device, evaluate=not args.no_eval)
    return 0
