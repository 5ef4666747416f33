"""The shapes-world suite: held-out scenes, every question kind of the contract, and the held-out digits.

Scenes come from evaluation seeds that training never draws, each kind's answers equally likely
(`data/balanced.py`); answers are scored by the contract's rules (`eval/score.py`). Results: a per-kind table
(accuracy, or mean F1 for captions) for the contract's wordings, the same for wordings training never saw, what the
wrong answers said (a confusion summary), and across several training runs the mean and the minimum per kind.
"""
from __future__ import annotations

import time
from collections import defaultdict
from typing import Any

from ..data.chatmix import eval_items
from .score import read_key, score

# The targets per kind; a caption is scored by F1.
TARGETS = {"color": 0.95, "shape": 0.95, "count": 0.90, "count_color": 0.90, "position": 0.90, "size": 0.90,
           "exists": 0.90, "compare_count": 0.85, "which_has": 0.85, "both_have": 0.85, "digit": 0.90,
           "caption": 0.90}
UNSEEN_TARGET = 0.85  # the unseen wordings' mean over the kinds, and their caption F1


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
                         "score": score(it["kind"], ans, it["key"]), "wording": it.get("wording", "canonical")})
    return rows


def summarise(rows: list[dict[str, Any]], wording: str | None = None) -> dict[str, dict[str, float]]:
    """{kind: {"n", "score"}} over the rows (only those of one wording, "canonical" or "unseen", if given)."""
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        if wording is None or r.get("wording", "canonical") == wording:
            by_kind[r["kind"]].append(r["score"])
    return {k: {"n": len(v), "score": sum(v) / len(v)} for k, v in sorted(by_kind.items())}


def confusion(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """What the wrong answers said, per kind ("color", or "color@unseen" for unseen wordings): counts of
    "expected -> given", the given key read by the kind's rule ("unparsed" where it reads none), most frequent
    first. Captions are scored by F1 and left out."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        if r["kind"] == "caption" or r["score"] >= 1.0:
            continue
        name = r["kind"] + ("@unseen" if r.get("wording") == "unseen" else "")
        expected = "not there" if r["kind"] == "absent" else r["key"]
        out[name][f"{expected} -> {read_key(r['kind'], r['answer'], r['key'])}"] += 1
    return {k: dict(sorted(v.items(), key=lambda kv: (-kv[1], kv[0]))) for k, v in sorted(out.items())}


def confusion_markdown(conf: dict[str, dict[str, int]], top: int = 6) -> str:
    """One line per kind with wrong answers: its `top` most frequent confusions."""
    if not conf:
        return "No wrong answers."
    lines = []
    for kind, pairs in conf.items():
        shown = [f"{p} x{n}" for p, n in list(pairs.items())[:top]]
        more = sum(list(pairs.values())[top:])
        tail = f", others x{more}" if more else ""
        lines.append(f"- {kind} ({sum(pairs.values())} wrong): " + ", ".join(shown) + tail)
    return "\n".join(lines)


def unseen_means(unseen: dict[str, dict[str, float]]) -> dict[str, float]:
    """The unseen wordings' mean score over the kinds that have a target (TARGETS: the contract's kinds and the
    digits), which is what UNSEEN_TARGET applies to, and over every kind scored (motion and absent too)."""
    targeted = [s["score"] for k, s in unseen.items() if k in TARGETS]
    every = [s["score"] for s in unseen.values()]
    return {"targeted": sum(targeted) / max(1, len(targeted)), "all": sum(every) / max(1, len(every))}


def unseen_table(summary: dict[str, dict[str, float]], unseen: dict[str, dict[str, float]]) -> str:
    """Each kind in the contract's wording beside the same scenes in wordings training never saw, and the unseen
    means over the kinds (against its target) and over every kind."""
    lines = ["| kind | n | canonical | unseen |", "|---|---|---|---|"]
    for kind, s in unseen.items():
        seen = summary.get(kind, {}).get("score")
        lines.append(f"| {kind} | {s['n']} | {'' if seen is None else f'{seen:.3f}'} | {s['score']:.3f} |")
    if unseen:
        means = unseen_means(unseen)
        lines.append(f"| mean over the kinds with a target (target {UNSEEN_TARGET:.2f}) |  |  | "
                     f"{means['targeted']:.3f} |")
        lines.append(f"| mean over every kind (motion and absent too) |  |  | {means['all']:.3f} |")
    return "\n".join(lines)


def report_markdown(ev: dict[str, Any]) -> str:
    """The whole suite as markdown: the contract's wordings, the unseen wordings, the confusion summary."""
    parts = [markdown_table(ev["summary"])]
    if ev.get("unseen"):
        parts += ["Unseen wordings (the same scenes, asked in wordings training never used):",
                  unseen_table(ev["summary"], ev["unseen"])]
    if "confusion" in ev:
        parts += ["Wrong answers (expected -> given):", confusion_markdown(ev["confusion"])]
    return "\n\n".join(parts)


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
    """The held-out items: n_per_kind of every contract kind and of "absent", the first n_digits held-out digits
    (all 360 when None), then the same scenes and n_per_kind digits in unseen wordings. Same arguments -> the
    same items, images included."""
    if n_digits is not None and n_digits < 0:
        raise ValueError(f"n_digits must be >= 0, got {n_digits}")
    items = eval_items(n_per_kind, seed=seed, image_size=image_size)
    scenes = [it for it in items if it["kind"] != "digit" and it["wording"] == "canonical"]
    digits = [it for it in items if it["kind"] == "digit" and it["wording"] == "canonical"]
    unseen = [it for it in items if it["wording"] == "unseen"]
    return scenes + (digits if n_digits is None else digits[:n_digits]) + unseen


def evaluate_shapes(vlm: Any, *, n_per_kind: int = 50, seed: int = 0, image_size: int = 96,
                    batch_size: int = 32, n_digits: int | None = None, max_new_tokens: int = 48,
                    caption_tokens: int = 128, items: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """Answer and score the held-out items; rows[i] belongs to items[i] (returned too, for the picture grid)."""
    t0 = time.time()
    if items is None:
        items = shapes_items(n_per_kind, seed, image_size, n_digits)
    rows = run_items(vlm, items, batch_size=batch_size, max_new_tokens=max_new_tokens, caption_tokens=caption_tokens)
    return {"summary": summarise(rows, "canonical"), "unseen": summarise(rows, "unseen"),
            "confusion": confusion(rows), "rows": rows, "items": items, "seconds": round(time.time() - t0, 1),
            "n_per_kind": n_per_kind, "seed": seed, "image_size": image_size}
