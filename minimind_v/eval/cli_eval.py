"""`minimind-v eval` (what a model answers) and `minimind-v bench` (how fast it learns and talks).

    minimind-v eval --model runs/quickstart                       # shapes-world suite + held-out digits
    minimind-v eval --model runs/x --data my_set.jsonl --no-shapes # your own image questions
    minimind-v eval --model runs/s0 runs/s1 runs/s2 --out runs     # several training seeds: mean and minimum
    minimind-v bench --preset minimind3-small --vision DIR --batch-size 4 --max-len 768 --out bench.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..arguments import device_name, positive_int
from ..config import options_from
from ..infer.cli_infer import add_loading_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("eval", help="evaluate a model: shapes-world kinds, held-out digits, your JSON-lines sets")
    p.add_argument("--model", required=True, nargs="+", metavar="RUN",
                   help="run directory; several (e.g. one per training seed) are scored on the same items, and a "
                        "table of every run, the mean and the minimum per kind is written to eval_runs.md")
    p.add_argument("--n-per-kind", type=int, default=50, help="held-out scenes per question kind")
    p.add_argument("--seed", type=int, default=0, help="which held-out scenes (same seed -> same items)")
    p.add_argument("--image-size", type=int, default=96, help="side of the rendered evaluation images")
    p.add_argument("--digits", type=int, default=360, help="held-out digits to ask about (0..360)")
    p.add_argument("--no-shapes", action="store_true", help="skip the shapes-world suite and the digits")
    p.add_argument("--data", action="append", default=[], metavar="FILE.jsonl",
                   help="a JSON-lines set of image questions with reference answers (repeatable)")
    p.add_argument("--image-dir", default=None, help="folder the --data image paths are relative to")
    p.add_argument("--limit", type=int, default=None, help="at most this many questions per --data file")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--max-new-tokens", type=int, default=48, help="answer length limit (captions: --caption-tokens)")
    p.add_argument("--caption-tokens", type=int, default=128)
    p.add_argument("--grid", type=int, default=24, help="examples in the PNG grid (0: no grid)")
    p.add_argument("--no-unseen", action="store_true", help="skip the wordings held out of training")
    p.add_argument("--out", default=None,
                   help="folder for eval.json / eval.md / eval_grid.png (default: --model); with several runs, "
                        "each run's files go to OUT/<run name> and eval_runs.md / eval_runs.json to OUT "
                        "(default: each run's own folder, and the runs' common parent)")
    p.add_argument("--device", type=device_name, default="auto")
    add_loading_arguments(p)
    p.set_defaults(func=run)

    b = sub.add_parser("bench", help="measure training and decoding speed, FLOPs utilisation and memory")
    _add_bench_arguments(b)
    b.set_defaults(func=run_bench)


def _add_bench_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", default="shapes-tiny", help="LLM preset (see config.LLM_PRESETS)")
    p.add_argument("--model", default=None, help="bench an existing run directory instead of a fresh preset")
    p.add_argument("--vision", default="scratch",
                   help="'scratch' (the embedded encoder) or a local CLIP/SigLIP folder (frozen, as in the reference)")
    p.add_argument("--projector", default="mlp", choices=["mlp", "linear"])
    p.add_argument("--data", default=None, help="parquet / JSON-lines set to read (default: synthetic rows)")
    p.add_argument("--words", default="20,120", help="synthetic answers: min,max words")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--max-len", type=int, default=256, help="longer samples are cut here, as the reference does")
    p.add_argument("--group-by-length", action="store_true",
                   help="the trainer's length-grouped order: batches of similar lengths, little padding")
    p.add_argument("--pack", action="store_true", help="pack each batch's samples into rows of --max-len")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile each decoder block for training (as the trainer can) and the decoding step")
    p.add_argument("--fused-adamw", action="store_true",
                   help="the trainer's AdamW groups with fused=True (one kernel per tensor; the trainer already fuses on CUDA and CPU)")
    p.add_argument("--freeze-llm", type=int, default=0, choices=[0, 1, 2])
    p.add_argument("--dtype", action="append", choices=["auto", "fp32", "bf16", "fp16"],
                   help="repeatable; default fp32, plus bf16 when the device runs bf16 matmuls at full speed; "
                        "auto: what the trainer's --dtype auto picks here (a probe of bf16 against fp32)")
    p.add_argument("--tokenizer", default=None, metavar="DIR",
                   help="tokenise with this tokenizer folder (e.g. another trainer's, to compare like with like); "
                        "default: one trained on the benchmark rows, about one token per word")
    p.add_argument("--image-token", default=None, metavar="TEXT",
                   help="the image placeholder in --tokenizer's vocabulary (default <|image_pad|>; MiniMind2's: @)")
    p.add_argument("--device", default="cpu", help="cpu | cuda | mps | auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=3, help="training steps per repeat")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--decode-tokens", type=int, default=64)
    p.add_argument("--decode-batch", type=int, default=8, help="the batched decoding figure's batch size")
    p.add_argument("--weights", action="append", choices=["fp32", "bf16", "fp16", "int8"],
                   help="decode: weight storage, repeatable (default fp32); bf16/fp16 keep activations fp32")
    p.add_argument("--encoder-weights", choices=["fp32", "bf16", "fp16", "int8"], default=None,
                   help="decode: the vision encoder's weight storage (default: as each --weights)")
    p.add_argument("--rss", action="store_true",
                   help="decode: also the peak RSS of a fresh process that loads the model and answers once")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's peak, for MFU (else measured)")
    p.add_argument("--only", default="train,decode", help="comma list of: train, decode")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="also write the JSON here")


def run(args: argparse.Namespace) -> int:
    from .across_runs import across_runs, across_runs_markdown
    from .jsonl_eval import load_jsonl
    from .shapes import shapes_items

    if args.no_shapes and not args.data:
        raise ValueError("nothing to evaluate: --no-shapes without any --data file")
    if not 0 <= args.digits <= 360:
        raise ValueError(f"--digits must be in 0..360, got {args.digits}")
    runs = [Path(m) for m in args.model]
    if len({r.name for r in runs}) < len(runs):
        raise ValueError(f"--model: several runs share a folder name ({args.model}); their results would mix")
    missing = [str(r) for r in runs if not r.is_dir()]
    if missing:
        raise FileNotFoundError(f"--model: no run directory at {', '.join(missing)}")
    sets = [(Path(f), load_jsonl(f, args.image_dir, args.limit)) for f in args.data]  # fail before loading
    items = None
    if not args.no_shapes:  # drawn once: every run answers the same items
        items = shapes_items(args.n_per_kind, args.seed, args.image_size, args.digits)
        if args.no_unseen:
            items = [it for it in items if it.get("wording") != "unseen"]
    reports = {}
    for run_dir in runs:
        out = Path(args.out) / run_dir.name if args.out and len(runs) > 1 else Path(args.out or run_dir)
        report = _evaluate_run(args, run_dir, items, sets, out)
        if "shapes" in report:
            reports[run_dir.name] = report["shapes"]
    if len(runs) > 1 and reports:
        out = Path(args.out) if args.out else Path(os.path.commonpath([str(r.resolve()) for r in runs]))
        summary = across_runs(reports)
        md = across_runs_markdown(summary)
        (out / "eval_runs.json").write_text(json.dumps(summary, indent=1))
        (out / "eval_runs.md").write_text(md + "\n")
        print(md)
        print(f"wrote {out / 'eval_runs.json'}, {out / 'eval_runs.md'}")
    return 0


def _evaluate_run(args: argparse.Namespace, run_dir: Path, items: list[dict[str, Any]] | None,
                  sets: list[tuple[Path, list[dict[str, Any]]]], out: Path) -> dict[str, Any]:
    """One run: the shapes-world items (if any) and the --data sets; eval.json / eval.md / eval_grid.png in out."""
    from ..infer.api import load
    from .grid import draw_grid, pick_examples
    from .jsonl_eval import evaluate_jsonl, jsonl_table
    from .shapes import evaluate_shapes, report_markdown

    vlm = load(run_dir, device=args.device, weights=args.weights, encoder_weights=args.encoder_weights,
               compile=args.compile, adapter=args.adapter)
    report: dict[str, Any] = {"model": str(run_dir.resolve()), "seed": args.seed}
    md: list[str] = []
    shown: list[dict[str, Any]] = []  # grid candidates: (row, item) pairs of every suite
    if items is not None:
        ev = evaluate_shapes(vlm, n_per_kind=args.n_per_kind, seed=args.seed, image_size=args.image_size,
                             batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
                             caption_tokens=args.caption_tokens, items=items)
        report["shapes"] = {k: v for k, v in ev.items() if k != "items"}
        md += [f"## Shapes world (seed {args.seed}, {args.image_size} px) and held-out digits", "",
               report_markdown(ev), ""]
        shown += [{**r, "images": it["images"], "expected": r["key"]} for r, it in zip(ev["rows"], ev["items"])]
    for path, data in sets:
        ev = evaluate_jsonl(vlm, data, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens)
        report.setdefault("data", {})[str(path)] = ev
        md += [f"## {path.name}", "", jsonl_table(ev["summary"]), ""]
        shown += [{**r, "images": it["images"], "expected": " | ".join(r["references"])}
                  for r, it in zip(ev["rows"], data)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    (out / "eval.md").write_text("\n".join(md))
    if args.grid > 0 and shown:
        draw_grid([shown[i] for i in pick_examples(shown, args.grid, args.seed)], out / "eval_grid.png")
    print(f"# {run_dir}\n" + "\n".join(md))
    print(f"wrote {out / 'eval.json'}, {out / 'eval.md'}" + (f", {out / 'eval_grid.png'}" if args.grid else ""))
    return report


def run_bench(args: argparse.Namespace) -> int:
    from .bench import BenchOptions, run_benchmarks
    from .flops import efficiency_lines

    result = run_benchmarks(options_from(BenchOptions, args))
    if "dtype_auto" in result:
        print(f"--dtype auto: {result['dtype_auto']['dtype']} ({result['dtype_auto']['reason']})", file=sys.stderr)
    for line in efficiency_lines(result):  # the JSON goes to stdout; this summary beside it, on stderr
        print(line, file=sys.stderr)
    text = json.dumps(result, indent=1)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0
