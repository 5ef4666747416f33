"""`minimind-v data check | clean | convert`: look at a dataset before training on it.

    minimind-v data check sft.jsonl --images sft_images/ --run runs/llm --max-len 768 --workers 2
    minimind-v data clean sft.jsonl clean/sft.parquet --images sft_images/   # + clean/sft.parquet.report.json
    minimind-v data convert sft.jsonl sft.parquet --images sft_images/
    minimind-v data convert sft.parquet sft.jsonl                            # images into sft_images/
    minimind-v data synth demo/ --rows 200 --broken 0.1                      # a dry-run kit, no downloads
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from .check import CheckOptions, check_dataset, tokens_per_image_of
from .convert import convert


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="check, clean and convert datasets (JSON-lines + images, parquet, datasets)")
    dsub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    c = dsub.add_parser("check", help="report every problem of a dataset with counts and examples")
    _check_args(c)
    c.add_argument("--json", default=None, help="also write the report as JSON here")
    c.set_defaults(func=run_check)

    k = dsub.add_parser("clean", help="write a copy without the broken and duplicate rows, plus a report")
    _check_args(k)
    k.add_argument("out", help="cleaned dataset to write (.jsonl or .parquet)")
    k.add_argument("--images-out", default=None, help="image folder for a .jsonl output (default: OUT_images)")
    k.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicate rows")
    k.add_argument("--row-group-size", type=int, default=1000, help="rows per parquet row group")
    k.set_defaults(func=run_clean)

    v = dsub.add_parser("convert", help="JSON-lines + image folder <-> parquet (image bytes copied as they are)")
    v.add_argument("path", help="input: .jsonl, .parquet, a folder of parquet files, or a saved datasets folder")
    v.add_argument("out", help="output: .jsonl or .parquet")
    v.add_argument("--images", default=None, help="image folder of a .jsonl input (default: beside the file)")
    v.add_argument("--images-out", default=None, help="image folder for a .jsonl output (default: OUT_images)")
    v.add_argument("--row-group-size", type=int, default=1000,
                   help="rows per parquet row group (small groups make random access cheap)")
    v.set_defaults(func=run_convert)

    y = dsub.add_parser("synth", help="write small synthetic datasets and random tiny encoders (a dry run kit)")
    y.add_argument("out", help="folder to write")
    y.add_argument("--rows", type=int, default=200, help="rows per dataset")
    y.add_argument("--broken", type=float, default=0.0, help="share of image rows seeded with a known fault")
    y.set_defaults(func=run_synth)


def _check_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help=".jsonl, .parquet, a folder of parquet files, or a saved datasets folder")
    p.add_argument("--images", default=None, help="image folder of a .jsonl dataset (default: beside the file)")
    p.add_argument("--run", default=None, help="a run directory: its tokenizer and tokens per image")
    p.add_argument("--tokenizer", default=None, help="a tokenizer directory (for the over-length check)")
    p.add_argument("--max-len", type=int, default=0, help="maximum tokens per sample (over-length check)")
    p.add_argument("--tokens-per-image", type=int, default=0, help="placeholder tokens per image")
    p.add_argument("--max-image-mb", type=float, default=20.0, help="images larger than this are reported")
    p.add_argument("--no-decode", action="store_true", help="skip decoding images (faster; misses corrupt ones)")
    p.add_argument("--unmarked-images", choices=["text", "error"], default="text",
                   help="a row whose images no <image> marker uses (MiniMind-V's text-only rows with a placeholder "
                        "image): train it as text (default) or reject it as placeholder_mismatch")
    p.add_argument("--workers", type=int, default=1, help="processes checking rows in parallel")
    p.add_argument("--limit", type=int, default=None, help="check only the first N rows")


def _options(args: argparse.Namespace) -> CheckOptions:
    tok, tpi = args.tokenizer, args.tokens_per_image
    if args.run:
        tok = tok or args.run
        tpi = tpi or tokens_per_image_of(args.run)
    if args.max_len and not tok:
        raise ValueError("--max-len needs --run or --tokenizer to count tokens")
    return CheckOptions(image_dir=args.images, tokenizer=tok if args.max_len else None, max_len=args.max_len,
                        tokens_per_image=tpi, max_image_mb=args.max_image_mb, decode_images=not args.no_decode,
                        unmarked_images=args.unmarked_images)


def run_check(args: argparse.Namespace) -> int:
    report = check_dataset(args.path, _options(args), workers=args.workers, limit=args.limit)
    print(report.text())
    if args.json:
        Path(args.json).write_text(json.dumps(report.as_dict(), indent=2))
    return 0 if not report.bad else 1


def run_clean(args: argparse.Namespace) -> int:
    report = check_dataset(args.path, _options(args), workers=args.workers, limit=args.limit)
    drop = {i for i, r in report.bad.items() if r != "duplicate" or not args.keep_duplicates}
    result = convert(args.path, args.out, image_dir=args.images, images_out=args.images_out,
                     row_group_size=args.row_group_size, drop=drop, limit=args.limit)
    full = {"source": str(args.path), **result, "check": report.as_dict()}
    report_path = Path(str(args.out) + ".report.json")
    report_path.write_text(json.dumps(full, indent=2))
    print(report.text())
    print(f"wrote {result['rows_out']} of {result['rows_in']} rows to {args.out}; report: {report_path}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    result = convert(args.path, args.out, image_dir=args.images, images_out=args.images_out,
                     row_group_size=args.row_group_size)
    print(json.dumps(result, indent=2))
    return 0


def run_synth(args: argparse.Namespace) -> int:
    from .synthetic import (synthetic_rows, write_chat_jsonl, write_jsonl, write_parquet, write_text_jsonl,
                            write_tiny_encoder)

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_text_jsonl(out / "text.jsonl", args.rows)
    write_chat_jsonl(out / "chat.jsonl", args.rows)
    rows, broken = synthetic_rows(args.rows, broken=args.broken)
    write_jsonl(rows, out / "captions.jsonl", out / "images")
    write_parquet(rows, out / "captions.parquet")
    for kind in ("clip", "siglip"):
        write_tiny_encoder(kind, out / f"tiny-{kind}")
    print(json.dumps({"out": str(out), "rows": args.rows, "broken_rows": len(broken),
                      "files": sorted(p.name for p in out.iterdir())}))
    return 0
