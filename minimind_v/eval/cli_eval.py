"""`minimind-v eval`: the shapes-world suite on a trained model."""
from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model on held-out shapes-world scenes and digits")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--n-per-kind", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=96, help="side of the rendered evaluation images")
    p.add_argument("--out", default=None, help="folder for eval.json / eval.md (default: the model's folder)")
    p.add_argument("--device", default="auto")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..infer.api import load
    from .shapes import evaluate_shapes, markdown_table

    vlm = load(args.model, device=args.device)
    ev = evaluate_shapes(vlm, n_per_kind=args.n_per_kind, seed=args.seed, image_size=args.image_size)
    out = Path(args.out or args.model)
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps({k: v for k, v in ev.items() if k != "rows"}, indent=2))
    table = markdown_table(ev["summary"])
    (out / "eval.md").write_text(table + "\n")
    print(table)
    return 0
