"""Training datasets that skip broken rows instead of crashing hours into a run.

`RowDataset` turns each row of a `SampleReader` into tensors; a row that cannot be used (missing or corrupt
image, placeholder count != image count, bad roles, empty turn, too long, ...) comes back as a small skip
marker. `SkipCollate` drops the markers from the batch but keeps them in `batch["skipped"]`, so the counts cross
the DataLoader's worker processes and reach the trainer, whose `SkipTally` reports them at the end. A tally that
sees most rows fail stops the run: that is a wrong path or a bug, not dirty data.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch.utils.data import Dataset

from .batches import collate
from .chat import SampleTooLong
from .formats import BadRow, SampleReader


class RowDataset(Dataset):
    """`kind="chat"`: conversations (+ images) through `encode` (a SampleEncoder);
    `kind="text"`: the `text` field through `encode` (a TextEncoder).
    decode=False hands `encode` the images undecoded (bytes or paths), for the feature cache."""

    def __init__(self, reader: SampleReader, encode: Callable[[Any], dict[str, torch.Tensor]], kind: str = "chat",
                 decode: bool = True):
        if kind not in ("chat", "text"):
            raise ValueError(f"kind must be 'chat' or 'text', not {kind!r}")
        self.reader, self.encode, self.kind, self.decode = reader, encode, kind, decode

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            if self.kind == "text":
                return self.encode(self.reader.text(i))
            rec = self.reader[i] if self.decode else self.reader.record(i)
            out = self.encode(rec)
            if rec.get("unmarked_images"):
                out["note"] = UNMARKED_NOTE
            return out
        except BadRow as e:
            return skip(i, e.reason, e.detail)
        except SampleTooLong as e:
            return skip(i, "too_long", str(e))
        except Exception as e:  # anything else about one row must not end the run; the tally reports it
            return skip(i, "invalid", f"{type(e).__name__}: {e}")


UNMARKED_NOTE = "text_only_unmarked_image"  # a row trained as text: its images have no <image> marker
NOTES = {UNMARKED_NOTE: "rows trained as text-only: their images have no <image> marker (placeholder images)"}


def skip(index: int, reason: str, detail: str) -> dict[str, Any]:
    return {"skip": reason, "index": int(index), "detail": detail[:300]}


@dataclass
class TextEncoder:
    """Pretraining text -> ids + labels (every token is a target), ending with <|im_end|> as the document end.

    Longer text is cut at max_len: for pretraining a truncated document is still good data.
    """

    tokenizer: Any
    max_len: int = 512
    eos: str = "<|im_end|>"

    def __call__(self, text: str) -> dict[str, torch.Tensor]:
        backend = self.tokenizer.backend_tokenizer
        ids = backend.encode(text, add_special_tokens=False).ids[: self.max_len - 1]
        ids.append(self.tokenizer.convert_tokens_to_ids(self.eos))
        t = torch.tensor(ids)
        return {"input_ids": t, "labels": t.clone()}


@dataclass
class SkipCollate:
    """Collate the good rows, and carry the skipped ones along as (reason, index, detail)."""

    pad_id: int = 0
    inner: Callable[..., dict[str, torch.Tensor]] = collate

    def __call__(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        good = [x for x in items if "skip" not in x]
        batch: dict[str, Any] = self.inner(good, pad_id=self.pad_id) if good else {}
        batch["skipped"] = [(x["skip"], x["index"], x["detail"]) for x in items if "skip" in x]
        batch["notes"] = [x["note"] for x in good if "note" in x]
        batch["n_samples"] = len(good)  # a packed batch has fewer rows than samples
        return batch


@dataclass
class SkipTally:
    """Counts skipped rows by reason (and distinct rows, since epochs repeat them), with a few examples each."""

    max_fraction: float = 0.5  # more than this share of rows broken (after `min_rows`) stops the run
    min_rows: int = 200
    examples_per_reason: int = 3
    counts: Counter = field(default_factory=Counter)
    rows: set = field(default_factory=set)
    examples: dict = field(default_factory=dict)
    seen: int = 0
    notes: Counter = field(default_factory=Counter)  # rows used, but not as they stood (robust.NOTES)

    def add(self, batch: dict[str, Any]) -> None:
        self.notes.update(batch.get("notes") or [])
        skipped = batch.get("skipped") or []
        self.seen += len(skipped) + batch.get("n_samples", len(batch["input_ids"]) if "input_ids" in batch else 0)
        for reason, index, detail in skipped:
            self.counts[reason] += 1
            self.rows.add(index)
            ex = self.examples.setdefault(reason, [])
            if len(ex) < self.examples_per_reason:
                ex.append(f"row {index}: {detail}")
        total = sum(self.counts.values())
        if self.seen >= self.min_rows and total > self.max_fraction * self.seen:
            raise ValueError(f"{total} of the first {self.seen} rows were unusable ({self.summary()}); "
                             "check the data path, the image folder and `minimind-v data check`")

    def state(self) -> dict[str, Any]:
        """Everything, as plain data: to combine the tallies of several processes, or to resume."""
        return {"counts": dict(self.counts), "rows": sorted(self.rows), "seen": self.seen, "examples": self.examples,
                "notes": dict(self.notes)}

    def merge(self, st: dict[str, Any]) -> None:
        self.counts.update(st["counts"])
        self.rows.update(st["rows"])
        self.seen += st["seen"]
        self.notes.update(st.get("notes", {}))
        for reason, ex in st["examples"].items():
            mine = self.examples.setdefault(reason, [])
            mine += ex[: max(0, self.examples_per_reason - len(mine))]

    def as_dict(self) -> dict[str, Any]:
        return {"skipped": dict(self.counts), "skipped_rows": len(self.rows), "rows_seen": self.seen,
                "examples": self.examples, "notes": dict(self.notes)}

    def summary(self) -> str:
        notes = "".join(f"\n{n} {NOTES.get(k, k)}" for k, n in self.notes.items())
        if not self.counts:
            return f"no rows skipped ({self.seen} read){notes}"
        parts = ", ".join(f"{r} {n}" for r, n in self.counts.most_common())
        lines = [f"skipped {sum(self.counts.values())} of {self.seen} rows read "
                 f"({len(self.rows)} distinct): {parts}"]
        for reason, ex in self.examples.items():
            lines += [f"  {reason}: {e}" for e in ex]
        return "\n".join(lines) + notes
