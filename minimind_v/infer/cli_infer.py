"""`minimind-v ask`: one question about one or more images."""
from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, UnidentifiedImageError


def open_image(path: str) -> Image.Image:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"image {path!r} does not exist")
    try:
        im = Image.open(p)
        im.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"image {path!r} could not be read: {e}") from None
    return im.convert("RGB")


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="ask one question about images")
    p.add_argument("--model", required=True, help="run directory")
    p.add_argument("--image", action="append", default=[], help="image file (repeat for several)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument("question", help="the question; '<image>\\n' per image is prepended when missing")
    p.set_defaults(func=ask)


def ask(args: argparse.Namespace) -> int:
    from ..infer.api import load

    images = [open_image(p) for p in args.image]
    q = args.question.replace("\\n", "\n")
    if "<image>" not in q:
        q = "<image>\n" * len(images) + q
    vlm = load(args.model, device=args.device)
    print(vlm.answer(images, q, max_new_tokens=args.max_new_tokens, temperature=args.temperature))
    return 0
