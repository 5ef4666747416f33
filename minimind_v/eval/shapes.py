"""The shapes-world suite: held-out scenes, every question kind of the contract, and the held-out digits.

Scenes come from evaluation seeds that training never draws; answers are scored by the contract's rules
(`eval/score.py`). Results are a per-kind table (accuracy, or mean F1 for captions).
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ..data.chatmix import eval_items
from .score import score

# The targets, per kind; a caption is scored by F1.
TARGETS = {"color": 0.95, "shape": 0.95, "count": 0.90, "count_color": 0.90, "position": 0.90, "size": 0.90,
           "exists": 0.90, "compare_count": 0.85, "which_has": 0.85, "both_have": 0.85, "digit": 0.90,
           "caption": 0.90}


def run_items(vlm: Any, items: list[dict[str, Any]], *, batch_size: int = 32, max_new_tokens: int = 48,
              caption_tokens: int = 128) -> list[dict[str, Any]]:
    """Answer every item greedily (batched, one kind per batch) and score it; returns one row per item.

    Captions name up to five objects, so they get their own, longer limit; a batch stops as soon as all its rows
    have ended, so a generous limit costs nothing on a model that answers briefly."""
    rows = []
    starts = [i for i in range(len(items)) if i == 0 or items[i]["kind"] != items[i - 1]["kind"]] + [len(items)]
    chunks = [(a, min(a + batch_size, b)) for s, b in zip(starts, starts[1:]) for a in range(s, b, batch_size)]
    for lo, hi in chunks:
        chunk = items[lo:hi]
        limit = caption_tokens if chunk[0]["kind"] == "caption" else max_new_tokens
        answers = vlm.answer_batch([(it["images"], it["question"]) for it in chunk], max_new_tokens=limit)
        for it, ans in zip(chunk, answers):
            rows.append({"kind": it["kind"], "question": it["question"], "key": it["key"], "answer": ans,
                         "score": score(it["kind"], ans, it["key"])})
    return rows


def summarise(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r["score"])
    return {k: {"n": len(v), "score": sum(v) / len(v)} for k, v in sorted(by_kind.items())}


def markdown_table(summary: dict[str, dict[str, float]]) -> str:
    lines = ["| kind | n | score | target | met |", "|---|---|---|---|---|"]
    for kind, s in summary.items():
        target = TARGETS.get(kind)
        met = "" if target is None else ("yes" if s["score"] >= target else "no")
        tgt = "" if target is None else f"{target:.2f}"
        lines.append(f"| {kind} | {s['n']} | {s['score']:.3f} | {tgt} | {met} |")
    return "\n".join(lines)


def shapes_items(n_per_kind: int = 50, seed: int = 0, image_size: int = 96,
                 n_digits: int | None = None) -> list[dict[str, Any]]:
    """The held-out items: n_per_kind of every contract kind, then the first n_digits held-out digits (all 360
    when None). Same arguments -> the same items, images included."""
    if n_digits is not None and n_digits < 0:
        raise ValueError(f"n_digits must be >= 0, got {n_digits}")
    items = eval_items(n_per_kind, seed=seed, image_size=image_size)
    scenes = [it for it in items if it["kind"] != "digit"]
    digits = [it for it in items if it["kind"] == "digit"]
    return scenes + (digits if n_digits is None else digits[:n_digits])


def evaluate_shapes(vlm: Any, *, n_per_kind: int = 50, seed: int = 0, image_size: int = 96,
                    batch_size: int = 32, n_digits: int | None = None, max_new_tokens: int = 48,
                    caption_tokens: int = 128, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Answer and score the held-out items; rows[i] belongs to items[i] (returned too, for the picture grid)."""
    t0 = time.time()
    if items is None:
        items = shapes_items(n_per_kind, seed, image_size, n_digits)
    rows = run_items(vlm, items, batch_size=batch_size, max_new_tokens=max_new_tokens, caption_tokens=caption_tokens)
    return {"summary": summarise(rows), "rows": rows, "items": items, "seconds": round(time.time() - t0, 1),
            "n_per_kind": n_per_kind, "seed": seed, "image_size": image_size}
