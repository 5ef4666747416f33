"""Real datasets, read lazily: one row at a time, whatever the size of the file.

Three on-disk layouts give the same sample, `{"conversations": [{"role", "content"}, ...], "images": [PIL, ...]}`:

  - JSON-lines (MiniMind-V's format): `{"conversations": [...], "image": "a.jpg"}` or `"image": "0.jpg, 1.jpg"`,
    image names relative to an image folder. The file is scanned once for line offsets (8 bytes per row); a row
    is read by seeking to its offset, so 500K rows cost a few MB of RAM, not the file.
  - parquet: `conversations` (a JSON string or a list of messages) and `image_bytes` (one binary or a list of
    them). Rows are read by row group through pyarrow; the last couple of groups stay cached per process, so a
    sampler that walks a group's rows together (see `blocks()`) reads each group once per epoch.
  - a Hugging Face `datasets` dataset saved with `save_to_disk` (memory-mapped Arrow; needs `datasets`).

Anything wrong with a row raises `BadRow(reason, detail)`; the training dataset turns that into a counted skip,
and `minimind-v data check` into a report. Rows with no image are text-only samples (an LLM or mixed SFT set).
"""
from __future__ import annotations

import bisect
import io
import json
import os
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .chat import IMAGE_MARKER, ROLES, count_markers

MAX_IMAGE_PIXELS = 4096 * 4096  # anything larger is a mistake or a decompression bomb, not a training image

# Every reason a row can be rejected for, in the order reports list them.
REASONS = ("bad_json", "bad_roles", "empty_turn", "missing_image", "corrupt_image", "oversized_image",
           "placeholder_mismatch", "too_long", "duplicate")


class BadRow(ValueError):
    """A row that cannot be trained on; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


ImageRef = bytes | str  # encoded image bytes, or a file path


# ------------------------------------------------------------------------------------------------------------
# Row sources: index -> a plain dict of the row's fields.


class JsonlRows:
    """Random access to the lines of a JSON-lines file through an index of line offsets."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"no such JSON-lines file: {str(self.path)!r}")
        self.offsets = index_lines(self.path)
        self._fh, self._pid = None, -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._pid != os.getpid():  # each DataLoader worker opens its own handle
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        self._fh.seek(int(self.offsets[i]))
        line = self._fh.readline()
        try:
            row = json.loads(line)
        except ValueError as e:
            raise BadRow("bad_json", f"line {i + 1} is not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise BadRow("bad_json", f"line {i + 1} is a JSON {type(row).__name__}, not an object")
        return row

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fh": None, "_pid": -1}


def index_lines(path: Path, chunk: int = 1 << 24) -> np.ndarray:
    """Byte offsets of the non-blank lines of a file, found with numpy 16 MiB at a time."""
    starts, lengths, pos, prev = [], [], 0, 0
    with open(path, "rb") as f:
        while block := f.read(chunk):
            nl = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10) + pos
            s = np.concatenate(([prev], nl[:-1] + 1)) if len(nl) else np.array([], dtype=np.int64)
            starts.append(s)
            lengths.append(nl - s)
            if len(nl):
                prev = int(nl[-1]) + 1
            pos += len(block)
    if prev < pos:  # a last line without a newline
        starts.append(np.array([prev]))
        lengths.append(np.array([pos - prev]))
    if not starts:
        return np.zeros(0, dtype=np.int64)
    s, n = np.concatenate(starts).astype(np.int64), np.concatenate(lengths)
    keep = n > 0
    if keep.any():  # drop lines that are only "\r" (Windows blank lines)
        with open(path, "rb") as f:
            for j in np.flatnonzero(keep & (n == 1)):
                f.seek(int(s[j]))
                keep[j] = f.read(1) not in (b"\r", b" ", b"\t")
    return s[keep]


class ParquetRows:
    """Rows of one parquet file (or a folder of them), read one row group at a time."""

    def __init__(self, path: str | Path, columns: list[str] | None = None, cache_groups: int = 2):
        import pyarrow.parquet as pq

        path = Path(path)
        self.files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
        if not self.files or not all(f.is_file() for f in self.files):
            raise FileNotFoundError(f"no parquet file at {str(path)!r}")
        self.groups: list[tuple[int, int]] = []  # (file index, row group)
        sizes, big = [], 0
        names = None
        for fi, f in enumerate(self.files):
            meta = pq.ParquetFile(f).metadata
            names = names or meta.schema.to_arrow_schema().names
            for g in range(meta.num_row_groups):
                self.groups.append((fi, g))
                sizes.append(meta.row_group(g).num_rows)
                big = max(big, meta.row_group(g).total_byte_size)
        self.columns = [c for c in (columns or names) if c in names]
        self.starts = [0, *np.cumsum(sizes).tolist()]
        self.cache_groups = cache_groups
        self._cache: OrderedDict[int, Any] = OrderedDict()
        self._files: dict[int, Any] = {}
        self.largest_group_bytes = big

    def __len__(self) -> int:
        return self.starts[-1]

    def blocks(self) -> list[tuple[int, int]]:
        """[start, end) row ranges of the row groups: reading a block's rows together reads the group once."""
        return list(zip(self.starts[:-1], self.starts[1:]))

    def _group(self, g: int) -> Any:
        if g in self._cache:
            self._cache.move_to_end(g)
            return self._cache[g]
        import pyarrow.parquet as pq

        fi, rg = self.groups[g]
        if fi not in self._files:
            self._files[fi] = pq.ParquetFile(self.files[fi])
        table = self._files[fi].read_row_group(rg, columns=self.columns)
        self._cache[g] = table
        while len(self._cache) > self.cache_groups:
            self._cache.popitem(last=False)
        return table

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(f"row {i} out of range (0..{len(self) - 1})")
        g = bisect.bisect_right(self.starts, i) - 1
        table = self._group(g)
        j = i - self.starts[g]
        return {c: table.column(c)[j].as_py() for c in table.column_names}

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_cache": OrderedDict(), "_files": {}}


class HFDiskRows:
    """A `datasets` dataset written by `save_to_disk` (memory-mapped; images kept as bytes, decoded here)."""

    def __init__(self, path: str | Path, split: str = "train"):
        try:
            import datasets
        except ImportError:
            raise ValueError("reading a saved Hugging Face dataset needs `pip install datasets` "
                             "(or `pip install minimind-v[datasets]`)") from None
        ds = datasets.load_from_disk(str(path))
        if isinstance(ds, datasets.DatasetDict):
            if split not in ds:
                raise ValueError(f"{str(path)!r} has splits {list(ds)}, not {split!r}")
            ds = ds[split]
        for name, feat in ds.features.items():  # keep images as bytes: decoding belongs to the reader
            if isinstance(feat, datasets.Image):
                ds = ds.cast_column(name, datasets.Image(decode=False))
            elif isinstance(getattr(feat, "feature", None), datasets.Image):  # a list of images
                ds = ds.cast_column(name, type(feat)(datasets.Image(decode=False)))
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.ds[int(i)]


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
        out.append({"role": names.get(role, role), "content": content})
    return out


def check_conversation(convs: list[dict[str, Any]], n_images: int) -> None:
    """Raise BadRow unless turns alternate user/assistant (optional system first), are non-empty strings,
    end with the assistant, and the `<image>` markers (user turns only) match the number of images."""
    expected = "user"
    for k, m in enumerate(convs):
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadRow("bad_roles", f"message {k} has role {role!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(content, str):
            raise BadRow("bad_json", f"message {k} ({role}) content is a {type(content).__name__}, not a string")
        if not content.replace(IMAGE_MARKER, "").strip() and not (role == "user" and IMAGE_MARKER in content):
            raise BadRow("empty_turn", f"message {k} ({role}) is empty")
        if role == "system":
            if k:
                raise BadRow("bad_roles", f"message {k} is a system message; only the first may be")
            continue
        if role != expected:
            raise BadRow("bad_roles", f"message {k} is from {role}, expected {expected} (turns must alternate)")
        if role != "user" and IMAGE_MARKER in content:
            raise BadRow("placeholder_mismatch", f"message {k} ({role}) holds {IMAGE_MARKER}")
        expected = "assistant" if role == "user" else "user"
    if convs[-1].get("role") != "assistant":
        raise BadRow("bad_roles", "the conversation does not end with an assistant answer")
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


class SampleReader:
    """Any supported dataset -> samples `{"conversations": [...], "images": [PIL...]}`, validated.

    `record(i)` gives the conversation and the undecoded image refs (for checks, hashing and conversion);
    `[i]` also decodes the images. Both raise BadRow for a row that cannot be used.
    """

    def __init__(self, path: str | Path, image_dir: str | Path | None = None,
                 max_image_pixels: int = MAX_IMAGE_PIXELS, split: str = "train"):
        self.path = Path(path)
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
        check_conversation(convs, len(refs))
        return {"conversations": convs, "images": refs}

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


def open_rows(path: Path, split: str = "train") -> JsonlRows | ParquetRows | HFDiskRows:
    """Pick the reader from what is at `path`."""
    if path.is_dir():
        if (path / "dataset_info.json").is_file() or (path / "dataset_dict.json").is_file() \
                or (path / "state.json").is_file():
            return HFDiskRows(path, split)
        if any(path.glob("*.parquet")):
            return ParquetRows(path)
        raise ValueError(f"{str(path)!r} is a folder with neither parquet files nor a saved datasets dataset")
    if path.suffix == ".parquet":
        return ParquetRows(path)
    if path.suffix in (".jsonl", ".json", ".jsonlines"):
        return JsonlRows(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {str(path)!r}")
    raise ValueError(f"cannot tell the format of {str(path)!r}: use .jsonl, .parquet, or a saved datasets folder")
