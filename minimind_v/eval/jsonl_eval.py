"""Your own evaluation set: a JSON-lines file of image questions with reference answers.

One question per line, in either of two shapes (image paths are relative to the file's folder or `image_dir`):

    {"image": "cat.png", "question": "What animal is this?", "answer": "a cat"}
    {"images": ["a.png", "b.png"], "question": "<image>\\n<image>\\nWhich has more shapes?",
     "answer": ["first", "the first image"], "kind": "which_has"}
    {"conversations": [{"role": "user", "content": "<image>\\nDescribe it."},
                       {"role": "assistant", "content": "A red circle."}], "image": "x.png"}   (MiniMind-V's format)

`answer` may be a list of acceptable answers. `<image>` markers are added in front of the question when it has none.
Every answer gets two plain scores against the best-matching reference:
  - exact:    the same words (lower-cased, punctuation ignored: `score.words`),
  - contains: the reference's words appear, in order and adjacent, somewhere in the answer.
A line whose `kind` is one of the shapes-world contract's kinds is also scored by the contract's rule (`score.py`),
so `"kind": "caption"` gets the contract's caption F1 and `"kind": "count"` reads the first number.
"""
from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import IMAGE_MARKER
from .score import KINDS, score, words


def exact_match(answer: str, reference: str) -> float:
    return float(words(answer) == words(reference))


def contains_match(answer: str, reference: str) -> float:
    """1.0 if the reference's words occur as one contiguous run of the answer's words."""
    a, r = words(answer), words(reference)
    if not r:
        return float(not a)
    return float(any(a[i:i + len(r)] == r for i in range(len(a) - len(r) + 1)))


def score_answer(answer: str, references: list[str], kind: str | None = None) -> dict[str, float]:
    """exact / contains (best over the references) and, for a contract kind, the contract's score."""
    out = {"exact": max(exact_match(answer, r) for r in references),
           "contains": max(contains_match(answer, r) for r in references)}
    if kind in KINDS:
        out["contract"] = max(score(kind, answer, r) for r in references)
    return out


def _open_image(path: Path, where: str) -> Image.Image:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: image {str(path)!r} does not exist")
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except OSError as e:
        raise ValueError(f"{where}: image {str(path)!r} could not be read: {e}") from None


def _parse_line(row: Any, where: str) -> tuple[str, list[str], list[str], str | None]:
    """-> (question, references, image paths, kind)."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
    if "conversations" in row:
        convs = row["conversations"]
        users = [m for m in convs if isinstance(m, dict) and m.get("role", m.get("from")) in ("user", "human")]
        bots = [m for m in convs if isinstance(m, dict) and m.get("role", m.get("from")) in ("assistant", "gpt")]
        if not users or not bots:
            raise ValueError(f"{where}: 'conversations' needs a user turn and an assistant turn")
        question = users[0].get("content", users[0].get("value"))
        answer: Any = bots[0].get("content", bots[0].get("value"))
    else:
        if "question" not in row or "answer" not in row:
            raise ValueError(f"{where}: a line needs 'question' and 'answer' (or 'conversations'); "
                             f"it has {sorted(row)}")
        question, answer = row["question"], row["answer"]
    refs = answer if isinstance(answer, list) else [answer]
    if not isinstance(question, str) or not refs or not all(isinstance(r, (str, int)) for r in refs):
        raise ValueError(f"{where}: 'question' must be a string and 'answer' a string or a list of strings")
    images = row.get("images", row.get("image", []))
    if isinstance(images, str):  # MiniMind-V writes several images as "0.jpg, 1.jpg"
        images = [p.strip() for p in images.split(",") if p.strip()]
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError(f"{where}: 'image'/'images' must be a path or a list of paths")
    kind = row.get("kind")
    if kind is not None and not isinstance(kind, str):
        raise ValueError(f"{where}: 'kind' must be a string")
    return question, [str(r) for r in refs], images, kind


def load_jsonl(path: str | Path, image_dir: str | Path | None = None, limit: int | None = None
               ) -> list[dict[str, Any]]:
    """Read a JSON-lines set into items {kind, question, references, images (PIL)}; errors name file:line."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no evaluation file {str(path)!r}")
    root = Path(image_dir) if image_dir else path.parent
    default_kind = path.stem
    items = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name}:{n}"
        try:
            row = json.loads(line)
        except ValueError as e:
            raise ValueError(f"{where}: not valid JSON ({e})") from None
        question, refs, paths, kind = _parse_line(row, where)
        images = [_open_image(p if (p := Path(s)).is_absolute() else root / p, where) for s in paths]
        n_markers = question.count(IMAGE_MARKER)
        if n_markers == 0:
            question = "<image>\n" * len(images) + question
        elif n_markers != len(images):
            raise ValueError(f"{where}: the question has {n_markers} <image> markers but {len(images)} images")
        items.append({"kind": kind or default_kind, "question": question, "references": refs, "images": images,
                      "line": n})
        if limit and len(items) >= limit:
            break
    if not items:
        raise ValueError(f"{str(path)!r} holds no questions")
    return items


def evaluate_jsonl(vlm: Any, items: list[dict[str, Any]], *, batch_size: int = 16,
                   max_new_tokens: int = 64) -> dict[str, Any]:
    """Answer every item greedily (batched) and score it; returns {"summary": per kind, "rows": per item}."""
    rows = []
    for i in range(0, len(items), batch_size):
        chunk = items[i:i + batch_size]
        answers = vlm.answer_batch([(it["images"], it["question"]) for it in chunk], max_new_tokens=max_new_tokens)
        for it, ans in zip(chunk, answers):
            s = score_answer(ans, it["references"], it["kind"])
            rows.append({"kind": it["kind"], "line": it["line"], "question": it["question"],
                         "references": it["references"], "answer": ans, **s,
                         "score": s.get("contract", s["contains"])})
    return {"summary": summarise_jsonl(rows), "rows": rows}


def summarise_jsonl(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    by_kind: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_kind[r["kind"]].append(r)
    out = {}
    for kind, rs in sorted(by_kind.items()):
        s = {"n": len(rs), "exact": _mean(r["exact"] for r in rs), "contains": _mean(r["contains"] for r in rs)}
        if all("contract" in r for r in rs):
            s["contract"] = _mean(r["contract"] for r in rs)
        out[kind] = s
    return out


def _mean(xs) -> float:
    xs = list(xs)
    return sum(xs) / len(xs)


def jsonl_table(summary: dict[str, dict[str, float]]) -> str:
    """Markdown: one row per kind; `contract` is the shapes-world rule (caption F1 for captions)."""
    lines = ["| kind | n | exact | contains | contract |", "|---|---|---|---|---|"]
    for kind, s in summary.items():
        contract = f"{s['contract']:.3f}" if "contract" in s else ""
        lines.append(f"| {kind} | {s['n']} | {s['exact']:.3f} | {s['contains']:.3f} | {contract} |")
    return "\n".join(lines)
