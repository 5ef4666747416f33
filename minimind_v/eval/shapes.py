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


def run_items(vlm: Any, items: list[dict[str, Any]], *, batch_size: int = 32,
              max_new_tokens: int = 48) -> list[dict[str, Any]]:
    """Answer every item greedily (batched) and score it; returns one row per item."""
    rows = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        answers = vlm.answer_batch([(it["images"], it["question"]) for it in chunk], max_new_tokens=max_new_tokens)
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


def evaluate_shapes(vlm: Any, *, n_per_kind: int = 50, seed: int = 0, image_size: int = 96,
                    batch_size: int = 32) -> dict[str, Any]:
    t0 = time.time()
    items = eval_items(n_per_kind, seed=seed, image_size=image_size)
    rows = run_items(vlm, items, batch_size=batch_size)
    return {"summary": summarise(rows), "rows": rows, "seconds": round(time.time() - t0, 1),
            "n_per_kind": n_per_kind, "seed": seed, "image_size": image_size}
