"""`minimind-v data check`: every problem of a dataset, counted, with examples, before a GPU hour is spent.

Each row is read exactly as training reads it, then its images are decoded in full (a truncated JPEG only fails
when its last bytes are needed) and, given a tokenizer, its conversation is encoded to catch samples longer than
the maximum length. Exact duplicates are rows whose messages and image bytes hash the same as an earlier row.
A row counts under its first problem. Pretraining rows (`{"text": ...}`) are checked for empty text and
duplicates, and their token lengths summarised (long text is cut at max_len in training, not skipped). Work is split over processes by index range; each returns a partial report.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from pathlib import Path
from typing import Any

from PIL import Image

from ..config import IMAGE_MARKER, IMAGE_TOKEN
from .chat import SampleTooLong, encode_conversation
from .formats import MAX_IMAGE_PIXELS, BadRow, SampleReader, load_image
from .rows import REASONS


@dataclass
class CheckOptions:
    image_dir: str | None = None
    tokenizer: str | None = None  # a tokenizer (or run) directory: enables the over-length check
    max_len: int = 0
    tokens_per_image: int = 0
    image_token: str = IMAGE_TOKEN
    max_image_pixels: int = MAX_IMAGE_PIXELS
    max_image_mb: float = 20.0
    decode_images: bool = True
    unmarked_images: str = "text"  # formats.UNMARKED


@dataclass
class Report:
    rows: int = 0
    problems: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)
    bad: dict[int, str] = field(default_factory=dict)  # row -> reason
    images: int = 0
    tokens: list[int] = field(default_factory=list)  # encoded lengths of good rows (with a tokenizer)
    text_only: int = 0  # rows whose images no <image> marker uses: trained as text (formats.UNMARKED)

    @property
    def ok(self) -> int:
        return self.rows - len(self.bad)

    def add(self, i: int, reason: str, detail: str, n_examples: int = 5) -> None:
        self.bad[i] = reason
        self.problems[reason] += 1
        ex = self.examples.setdefault(reason, [])
        if len(ex) < n_examples:
            ex.append(f"row {i}: {detail}")

    def merge(self, other: "Report", n_examples: int = 5) -> None:
        self.rows += other.rows
        self.images += other.images
        self.text_only += other.text_only
        self.tokens += other.tokens
        self.bad.update(other.bad)
        self.problems.update(other.problems)
        for reason, ex in other.examples.items():
            mine = self.examples.setdefault(reason, [])
            mine += ex[: max(0, n_examples - len(mine))]

    def as_dict(self) -> dict[str, Any]:
        out = {"rows": self.rows, "ok": self.ok, "broken": len(self.bad), "images": self.images,
               "problems": {r: self.problems[r] for r in REASONS + ("invalid",) if self.problems[r]},
               "examples": self.examples, "text_only_unmarked_image": self.text_only}
        if self.tokens:
            t = sorted(self.tokens)
            out["tokens"] = {"mean": round(sum(t) / len(t), 1), "p50": t[len(t) // 2],
                             "p99": t[min(len(t) - 1, int(len(t) * 0.99))], "max": t[-1]}
        return out

    def text(self) -> str:
        lines = [f"{self.rows} rows, {self.images} images: {self.ok} ok, {len(self.bad)} with problems"]
        for reason, n in sorted(self.problems.items(), key=lambda kv: -kv[1]):
            lines.append(f"  {reason:22s} {n:8d}")
            lines += [f"      {e}" for e in self.examples.get(reason, [])]
        if self.text_only:
            lines.append(f"  {self.text_only} rows carry images but no {IMAGE_MARKER} marker: they train as text-only "
                         "samples (the placeholder-image convention); --unmarked-images error rejects them")
        if self.tokens:
            t = self.as_dict()["tokens"]
            lines.append(f"  tokens per good row: mean {t['mean']}, median {t['p50']}, p99 {t['p99']}, max {t['max']}")
        return "\n".join(lines)


def _image_bytes(ref: bytes | str) -> bytes:
    if isinstance(ref, bytes):
        return ref
    with open(ref, "rb") as f:
        return f.read()


def check_range(path: str, start: int, end: int, opts: CheckOptions) -> tuple[Report, list[tuple[int, str]]]:
    """Check rows [start, end); returns the partial report and (row, content hash) of the rows that passed."""
    reader = SampleReader(path, image_dir=opts.image_dir, max_image_pixels=opts.max_image_pixels,
                          unmarked_images=opts.unmarked_images)
    tok = None
    if opts.tokenizer:
        from .tokenizer import load_tokenizer

        tok = load_tokenizer(opts.tokenizer)
    rep, hashes = Report(rows=end - start), []
    for i in range(start, end):
        try:
            row = reader.rows[i]
            if "text" in row and "conversations" not in row and "messages" not in row:  # pretraining text
                text = reader.text(i)
                if tok is not None:
                    rep.tokens.append(len(tok.backend_tokenizer.encode(text, add_special_tokens=False).ids) + 1)
                hashes.append((i, hashlib.sha1(text.encode()).hexdigest()))
                continue
            rec = reader.record(i)
            rep.text_only += bool(rec.get("unmarked_images"))
            h = hashlib.sha1(json.dumps(rec["conversations"], sort_keys=True, ensure_ascii=False).encode())
            for ref in rec["images"]:
                rep.images += 1
                if isinstance(ref, str) and not os.path.isfile(ref):
                    raise BadRow("missing_image", f"no image file {ref!r}")
                data = _image_bytes(ref)
                if len(data) > opts.max_image_mb * 2**20:
                    raise BadRow("oversized_image", f"{len(data) / 2**20:.1f} MB is over {opts.max_image_mb} MB")
                if opts.decode_images:
                    load_image(data, opts.max_image_pixels)
                h.update(hashlib.sha1(data).digest())
            if tok is not None:
                ids, _ = encode_conversation(tok, rec["conversations"], tokens_per_image=opts.tokens_per_image or 1,
                                             image_token=opts.image_token, max_len=opts.max_len or None)
                rep.tokens.append(len(ids))
            hashes.append((i, h.hexdigest()))
        except BadRow as e:
            rep.add(i, e.reason, e.detail)
        except SampleTooLong as e:
            rep.add(i, "too_long", str(e))
        except ValueError as e:
            rep.add(i, "invalid", str(e))
    return rep, hashes


def _check_range_star(args: tuple) -> tuple[Report, list[tuple[int, str]]]:
    return check_range(*args)


def check_dataset(path: str | Path, opts: CheckOptions | None = None, workers: int = 1,
                  limit: int | None = None, progress: bool = True) -> Report:
    """Check every row (or the first `limit`); duplicates are found across all workers' results."""
    opts = opts or CheckOptions()
    if opts.tokenizer and not opts.max_len:
        raise ValueError("the over-length check needs --max-len with --tokenizer")
    reader = SampleReader(path, image_dir=opts.image_dir)
    if opts.tokenizer and not opts.tokens_per_image and _has_images(reader):
        raise ValueError("the over-length check needs --tokens-per-image (e.g. 196 for CLIP ViT-B/16, 64 for "
                         "SigLIP2 P32) to count each image's placeholder tokens")
    n = len(reader)
    n = min(n, limit) if limit else n
    step = max(1, min(2000, -(-n // max(1, workers * 4))))
    jobs = [(str(path), s, min(n, s + step), opts) for s in range(0, n, step)]
    parts = []
    from tqdm import tqdm

    bar = tqdm(total=n, desc="check", disable=not progress, dynamic_ncols=True)
    if workers > 1:
        # fork starts workers in milliseconds (they only read files and decode images); spawn elsewhere
        method = "fork" if "fork" in get_all_start_methods() else "spawn"
        with get_context(method).Pool(workers) as pool:
            for part in pool.imap(_check_range_star, jobs):
                parts.append(part)
                bar.update(part[0].rows)
    else:
        for job in jobs:
            parts.append(check_range(*job))
            bar.update(parts[-1][0].rows)
    bar.close()
    report, seen = Report(), {}
    for rep, hashes in parts:
        report.merge(rep)
        for i, h in hashes:
            if h in seen:
                report.add(i, "duplicate", f"same messages and images as row {seen[h]}")
            else:
                seen[h] = i
    return report


def _has_images(reader: SampleReader, peek: int = 50) -> bool:
    for i in range(min(len(reader), peek)):
        try:
            if reader.record(i)["images"]:
                return True
        except BadRow:
            continue
    return False


def tokens_per_image_of(run_dir: str | Path) -> int:
    """Placeholder tokens per image of a run's encoder, from its config alone (nothing is loaded)."""
    from ..runs import read_config

    cfg, extra = read_config(run_dir)
    if extra.get("kind") == "llm":
        raise ValueError(f"{run_dir} is a language-model run (no encoder): pass --tokens-per-image "
                         "(64 for siglip2-b32, 196 for clip-b16)")
    v = cfg.vision
    size, patch = v.image_size, v.patch_size
    if v.path:
        vc = json.loads((Path(v.path) / "config.json").read_text())
        vc = vc.get("vision_config", vc)
        size, patch = vc["image_size"], vc["patch_size"]
    return (size // patch // v.merge) ** 2


def image_format(data: bytes) -> str:
    """The file extension an image's bytes call for (jpg, png, ...), without decoding the pixels."""
    import io

    with Image.open(io.BytesIO(data)) as im:
        fmt = (im.format or "png").lower()
    return {"jpeg": "jpg"}.get(fmt, fmt)
