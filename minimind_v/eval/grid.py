"""A picture of the evaluation: a grid of examples, each with its image(s), question, answer and a ✓ or ✗.

The marks are drawn as strokes, so the grid looks the same whatever fonts the machine has; text uses DejaVu Sans
(shipped inside matplotlib) when it is there, else Pillow's built-in font.
"""
from __future__ import annotations

import functools
import importlib.util
import random
import textwrap
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from ..config import IMAGE_MARKER

GREEN, RED, INK, GREY = (20, 140, 60), (200, 40, 40), (20, 20, 20), (110, 110, 110)


@functools.lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.ImageFont:
    spec = importlib.util.find_spec("matplotlib")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "mpl-data" / "fonts" / "ttf" / "DejaVuSans.ttf"
        if path.is_file():
            return ImageFont.truetype(str(path), size)
    return ImageFont.load_default()


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, s: int, ok: bool) -> None:
    """A ✓ (green) or ✗ (red) of side s with its top-left corner at (x, y)."""
    w = max(2, s // 6)
    if ok:
        draw.line([(x, y + s * 0.55), (x + s * 0.38, y + s * 0.9), (x + s, y + s * 0.1)], fill=GREEN, width=w)
    else:
        draw.line([(x, y), (x + s, y + s)], fill=RED, width=w)
        draw.line([(x, y + s), (x + s, y)], fill=RED, width=w)


def pick_examples(rows: list[dict[str, Any]], n: int, seed: int = 0) -> list[int]:
    """Indices of up to n rows, spread evenly over kinds (round robin), the same for the same seed."""
    by_kind: dict[str, list[int]] = defaultdict(list)
    for i, r in enumerate(rows):
        by_kind[r["kind"]].append(i)
    rng = random.Random(seed)
    queues = {k: rng.sample(v, len(v)) for k, v in sorted(by_kind.items())}
    picked: list[int] = []
    while len(picked) < n and any(queues.values()):
        for k in list(queues):
            if queues[k] and len(picked) < n:
                picked.append(queues[k].pop())
    return sorted(picked)


def draw_grid(examples: list[dict[str, Any]], path: str | Path, *, cols: int = 4, thumb: int = 160) -> Path:
    """examples: {"images": [PIL], "question", "answer", "expected", "score" (0..1), "kind"} -> a PNG at path."""
    if not examples:
        raise ValueError("draw_grid needs at least one example")
    font, small = _font(13), _font(11)
    chars = max(12, thumb // 7)  # wrap width in characters for ~7 px wide glyphs
    cells = []
    for ex in examples:
        q = ex["question"].replace(IMAGE_MARKER, "").strip()
        text = [("Q: " + q, INK), ("A: " + ex["answer"], INK), ("expected: " + str(ex["expected"]), GREY)]
        lines = [(piece, colour) for t, colour in text for piece in textwrap.wrap(t, chars)[:4] or [""]]
        cells.append((ex, lines))
    line_h = 16
    text_h = max(len(lines) for _, lines in cells) * line_h + 26
    cell_w, cell_h = thumb + 16, thumb + text_h + 16
    rows = (len(cells) + cols - 1) // cols
    canvas = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (ex, lines) in enumerate(cells):
        x0, y0 = (k % cols) * cell_w + 8, (k // cols) * cell_h + 8
        ims = ex["images"] or []
        if ims:  # several images side by side in the thumbnail square
            w = thumb // len(ims)
            for j, im in enumerate(ims):
                canvas.paste(im.convert("RGB").resize((w - 2, w - 2) if len(ims) > 1 else (thumb, thumb)),
                             (x0 + j * w, y0 + (thumb - w) // 2 if len(ims) > 1 else y0))
        else:
            draw.rectangle([x0, y0, x0 + thumb, y0 + thumb], outline=GREY)
        ty = y0 + thumb + 4
        ok = ex["score"] >= 0.999
        _mark(draw, x0, ty + 2, 14, ok)
        label = ex["kind"] + ("" if ex["score"] in (0, 1) else f"  F1 {ex['score']:.2f}")
        draw.text((x0 + 20, ty), label, fill=GREEN if ok else RED, font=font)
        for j, (line, colour) in enumerate(lines):
            draw.text((x0, ty + 20 + j * line_h), line, fill=colour, font=small)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)
    return path
