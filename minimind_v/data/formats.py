"""Real datasets, read lazily: one row at a time, whatever the size of the file.

Three on-disk layouts give the same sample, `{"conversations": [{"role", "content"}, ...], "images": [PIL, ...]}`:

  - JSON-lines (MiniMind-V's format): `{"conversations": [...], "image": "a.jpg"}` or `"image": "0.jpg, 1.jpg"`,
    image names relative to an image folder. The file is scanned once for line offsets (8 bytes per row); a row
    is read by seeking to its offset, so 500K rows cost a few MB of RAM, not the file. LLaVA's `.json` files (one
    JSON array of such rows, ShareGPT's from/value messages) are indexed the same way (json_array.py).
  - parquet: `conversations` (a JSON string or a list of messages) and `image_bytes` (one binary or a list of
    them). Rows are read by row group through pyarrow; the last few groups stay cached per process, so a
    sampler that walks a group's rows together (see `blocks()`) reads each group once per epoch.
  - a Hugging Face `datasets` dataset saved with `save_to_disk` (memory-mapped Arrow; needs `datasets`).

Anything wrong with a row raises `BadRow(reason, detail)`; the training dataset turns that into a counted skip,
and `minimind-v data check` into a report. Rows with no image are text-only samples (an LLM or mixed SFT set).
"""
from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..config import IMAGE_MARKER
from .chat import conversation_problem, count_markers
from .tools import calls_of
from .json_array import JsonArrayRows
from .rows import BadRow, JsonlRows, ParquetRows, open_rows

MAX_IMAGE_PIXELS = 4096 * 4096  # anything larger is a mistake or a decompression bomb, not a training image

ImageRef = bytes | str  # encoded image bytes, or a file path


# ------------------------------------------------------------------------------------------------------------
# From a row's fields to a sample.


def parse_conversations(value: Any) -> list[dict[str, str]]:
    """A JSON string or a list of messages -> [{"role", "content"}] (ShareGPT's from/value is accepted too)."""
    if isinstance(value, (str, bytes)):
        try:
            value = json.loads(value)
        except ValueError as e:
            raise BadRow("bad_json", f"conversations is not valid JSON ({e})") from None
    if not isinstance(value, list) or not value:
        raise BadRow("bad_roles", f"conversations must be a non-empty list of messages, got {value!r:.80}")
    names = {"human": "user", "gpt": "assistant"}
    out = []
    for k, m in enumerate(value):
        if not isinstance(m, dict):
            raise BadRow("bad_roles", f"message {k} is not an object: {m!r:.80}")
        role = m.get("role", m.get("from"))
        content = m.get("content", m.get("value"))
        msg = {"role": names.get(role, role), "content": "" if content is None and m.get("tool_calls") else content}
        if m.get("tool_calls"):
            try:
                msg["tool_calls"] = calls_of(m)
            except ValueError as e:
                raise BadRow("bad_json", f"message {k}: {e}") from None
        out.append(msg)
    return out


def check_conversation(convs: list[dict[str, Any]], n_images: int) -> None:
    """Raise BadRow unless the conversation follows `chat.conversation_problem`'s rule, ending with the
    assistant, and its `<image>` markers match the number of images."""
    if problem := conversation_problem(convs, last_role="assistant"):
        raise BadRow(*problem)
    markers = sum(count_markers(m["content"]) for m in convs)
    if markers != n_images:
        raise BadRow("placeholder_mismatch", f"{markers} {IMAGE_MARKER} markers but {n_images} images")


def image_refs(row: dict[str, Any], image_root: Path | None) -> list[ImageRef]:
    """The row's images as bytes or file paths, from whichever image column it has."""
    for key in ("image_bytes", "images", "image"):
        value = row.get(key)
        if value is None or value == "" or value == []:
            continue
        if isinstance(value, str):  # "a.jpg" or "0.jpg, 1.jpg" (MiniMind-V's multi-image form)
            value = [v.strip() for v in value.split(",") if v.strip()]
        elif not isinstance(value, list):
            value = [value]
        refs: list[ImageRef] = []
        for v in value:
            if isinstance(v, dict):  # datasets' Image(decode=False): {"bytes": ..., "path": ...}
                v = v.get("bytes") or v.get("path")
            if v is None or (isinstance(v, (bytes, str)) and not v):
                raise BadRow("missing_image", f"image column {key!r} has an empty entry")
            if isinstance(v, str):
                p = Path(v)
                v = str(p if p.is_absolute() or image_root is None else image_root / p)
            elif isinstance(v, Image.Image):
                buf = io.BytesIO()
                v.save(buf, format="PNG")
                v = buf.getvalue()
            if not isinstance(v, (bytes, str)):
                raise BadRow("corrupt_image", f"image column {key!r} holds a {type(v).__name__}")
            refs.append(v)
        return refs
    return []


def load_image(ref: ImageRef, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """Decode one image fully (a truncated file fails here, not inside the collate) and convert it to RGB."""
    if isinstance(ref, str) and not os.path.isfile(ref):
        raise BadRow("missing_image", f"no image file {ref!r}")
    try:
        with Image.open(io.BytesIO(ref) if isinstance(ref, bytes) else ref) as im:
            if im.width * im.height > max_pixels:
                raise BadRow("oversized_image", f"{im.width}x{im.height} is over {max_pixels} pixels")
            return im.convert("RGB")
    except BadRow:
        raise
    except Exception as e:  # PIL raises many types (UnidentifiedImageError, OSError, DecompressionBomb...)
        name = ref if isinstance(ref, str) else f"{len(ref)} bytes"
        raise BadRow("corrupt_image", f"cannot decode image ({name}): {type(e).__name__}: {e}") from None


# What a row whose images no `<image>` marker refers to becomes. "text": a text-only sample (the image is not
# used; the record says `unmarked_images: n`). MiniMind-V's SFT set holds ~230K such rows on purpose, each with an
# 8 x 8 black placeholder image, to keep the model's language ability. "error": a placeholder_mismatch row.
UNMARKED = ("text", "error")


def _markers(convs: list[dict[str, Any]]) -> int:
    return sum(count_markers(m["content"]) for m in convs if isinstance(m.get("content"), str))


class SampleReader:
    """Any supported dataset -> samples `{"conversations": [...], "images": [PIL...]}`, validated.

    `record(i)` gives the conversation and the undecoded image refs (for checks, hashing and conversion);
    `[i]` also decodes the images. Both raise BadRow for a row that cannot be used.
    """

    def __init__(self, path: str | Path, image_dir: str | Path | None = None,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, split: str = "train", unmarked_images: str = "text"):
        if unmarked_images not in UNMARKED:
            raise ValueError(f"unmarked_images must be one of {UNMARKED}, not {unmarked_images!r}")
        self.path, self.unmarked_images = Path(path), unmarked_images
        self.rows = open_rows(self.path, split)
        # JSON-lines image names are relative to the image folder (default: beside the file).
        self.image_root = Path(image_dir) if image_dir else (self.path.parent if self.path.is_file() else None)
        if image_dir and not self.image_root.is_dir():
            raise FileNotFoundError(f"image folder {str(image_dir)!r} does not exist")
        self.max_image_pixels = max_image_pixels

    def __len__(self) -> int:
        return len(self.rows)

    def blocks(self) -> list[tuple[int, int]] | None:
        return self.rows.blocks() if hasattr(self.rows, "blocks") else None

    def approx_lengths(self) -> np.ndarray:
        """A cheap per-row size estimate (bytes of the row's text) for length-grouped batching."""
        if isinstance(self.rows, JsonlRows):
            ends = np.append(self.rows.offsets[1:], self.path.stat().st_size)
            return ends - self.rows.offsets
        if isinstance(self.rows, JsonArrayRows):
            return self.rows.lengths.copy()
        if isinstance(self.rows, ParquetRows):
            import pyarrow.compute as pc
            import pyarrow.parquet as pq

            col = "text" if "text" in self.rows.columns else "conversations"
            parts = [pc.binary_length(pq.read_table(f, columns=[col]).column(col)).to_numpy(zero_copy_only=False)
                     for f in self.rows.files]
            return np.concatenate(parts)
        raise ValueError("length-grouped batching needs a JSON-lines or parquet dataset")

    def record(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        convs = parse_conversations(row.get("conversations", row.get("messages")))
        refs = image_refs(row, self.image_root)
        tools = {"tools": row["tools"]} if row.get("tools") else {}
        if refs and self.unmarked_images == "text" and not _markers(convs):
            check_conversation(convs, 0)  # a text-only row that carries a placeholder image: train it as text
            return {"conversations": convs, "images": [], "unmarked_images": len(refs), **tools}
        check_conversation(convs, len(refs))
        return {"conversations": convs, "images": refs, **tools}

    def __getitem__(self, i: int) -> dict[str, Any]:
        rec = self.record(i)
        rec["images"] = [load_image(r, self.max_image_pixels) for r in rec["images"]]
        return rec

    def text(self, i: int) -> str:
        """The `text` field of a pretraining row."""
        value = self.rows[i].get("text")
        if not isinstance(value, str) or not value.strip():
            raise BadRow("empty_turn", f"row {i} has no 'text' string")
        return value
