"""Row sources: index -> a plain dict of the row's fields, for each on-disk layout, without loading the file.

  - JsonlRows:  a JSON-lines file, scanned once for line offsets (8 bytes per row), rows read by seeking;
  - JsonArrayRows (json_array.py): one JSON array (LLaVA's .json files), indexed the same way;
  - ParquetRows: one parquet file or a folder of them, read one row group at a time (the last few cached);
  - HFDiskRows: a `datasets` dataset written by `save_to_disk` (memory-mapped Arrow; needs `datasets`).

A row that cannot even be parsed raises `BadRow`, like every other problem a row can have (see formats.py).
"""
from __future__ import annotations

import bisect
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

# Every reason a row can be rejected for, in the order reports list them.
REASONS = ("bad_json", "bad_roles", "empty_turn", "missing_image", "corrupt_image", "oversized_image",
           "placeholder_mismatch", "too_long", "duplicate")


class BadRow(ValueError):
    """A row that cannot be trained on; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class OffsetRows:
    """Rows of one file found by byte offset (and length; without one a row is a line). Each DataLoader worker
    opens its own handle; a row that is not a JSON object is a BadRow."""

    what = "line"  # what a row is called in errors

    def __init__(self, path: Path, offsets: np.ndarray, lengths: np.ndarray | None = None):
        self.path, self.offsets, self.lengths = path, offsets, lengths
        self._fh, self._pid = None, -1

    def __len__(self) -> int:
        return len(self.offsets)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if self._pid != os.getpid():  # each DataLoader worker opens its own handle
            self._fh, self._pid = open(self.path, "rb"), os.getpid()
        self._fh.seek(int(self.offsets[i]))
        raw = self._fh.readline() if self.lengths is None else self._fh.read(int(self.lengths[i]))
        try:
            row = json.loads(raw)
        except ValueError as e:
            raise BadRow("bad_json", f"{self.what} {i + 1} is not valid JSON ({e})") from None
        if not isinstance(row, dict):
            raise BadRow("bad_json", f"{self.what} {i + 1} is a JSON {type(row).__name__}, not an object")
        return row

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_fh": None, "_pid": -1}

    def __del__(self) -> None:
        if getattr(self, "_fh", None) is not None and self._pid == os.getpid():
            self._fh.close()


class JsonlRows(OffsetRows):
    """Random access to the lines of a JSON-lines file through an index of line offsets."""

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such JSON-lines file: {str(path)!r}")
        super().__init__(path, index_lines(path))


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
    """Rows of one parquet file (or a folder of them), read one row group at a time (the last few cached)."""

    # The loader shuffles rows within windows of 4 row groups (train/loader.py): keep a window's groups cached.
    LARGE_GROUP_BYTES = 256 << 20

    def __init__(self, path: str | Path, columns: list[str] | None = None, cache_groups: int = 4):
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
        if big > self.LARGE_GROUP_BYTES:
            warnings.warn(f"{path}: a row group holds {big / 2**20:.0f} MB; rows are read a group at a time, so "
                          f"rewrite it with smaller groups: minimind-v data convert {path} OUT.parquet "
                          "--row-group-size 1000", stacklevel=2)

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
        from .json_array import JsonArrayRows, starts_with_array  # LLaVA's files are one JSON array

        return JsonArrayRows(path) if path.is_file() and starts_with_array(path) else JsonlRows(path)
    if not path.exists():
        raise FileNotFoundError(f"no dataset at {str(path)!r}")
    raise ValueError(f"cannot tell the format of {str(path)!r}: use .jsonl, .parquet, or a saved datasets folder")
