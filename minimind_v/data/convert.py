"""Rewrite a dataset in another layout, streaming: JSON-lines + image folder <-> parquet (and parquet -> parquet
with smaller row groups, which is what random access needs).

Image bytes are copied as they are, never re-encoded. Parquet output follows the reference: `conversations` as a
JSON string and `image_bytes` as one binary per row, or a list of binaries when some row has several images.
JSON-lines output writes the images into a folder and names them in `image` ("a.jpg" or "0.jpg, 1.jpg").
Rows that cannot be read, and rows listed in `drop` (what `data clean` found), are left out and counted.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Iterator

from tqdm import tqdm

from .check import image_format
from .chat import count_markers
from .formats import BadRow, SampleReader


def _records(reader: SampleReader, n: int, drop: set[int], skipped: dict[str, int]
             ) -> Iterator[tuple[int, dict]]:
    for i in range(n):
        if i in drop:
            continue
        try:
            yield i, reader.record(i)
        except BadRow as e:
            skipped[e.reason] = skipped.get(e.reason, 0) + 1


def _image_counts(reader: SampleReader, n: int, drop: set[int]) -> set[int]:
    """How many images the kept rows hold (from their markers: a valid row has one marker per image)."""
    counts = set()
    for i in range(n):
        if i in drop:
            continue
        try:
            row = reader.rows[i]
            convs = row.get("conversations") or row.get("messages") or []
            if isinstance(convs, str):
                convs = json.loads(convs)
            counts.add(sum(count_markers(str(m.get("content", m.get("value", "")))) for m in convs))
        except (BadRow, ValueError, AttributeError):
            continue
    return counts


def write_parquet_rows(records: Iterable[tuple[int, dict]], out: Path, list_images: bool,
                       row_group_size: int = 1000) -> int:
    import pyarrow as pa
    import pyarrow.parquet as pq

    img_type = pa.list_(pa.binary()) if list_images else pa.binary()
    schema = pa.schema([("conversations", pa.string()), ("image_bytes", img_type)])
    tmp = out.with_name(out.name + ".tmp")
    n, convs, imgs = 0, [], []
    with pq.ParquetWriter(str(tmp), schema) as writer:
        def flush() -> None:
            if convs:
                writer.write_table(pa.table({"conversations": convs, "image_bytes": imgs}, schema=schema))
                convs.clear()
                imgs.clear()

        for _, rec in records:
            data = [_read(ref) for ref in rec["images"]]
            convs.append(json.dumps(rec["conversations"], ensure_ascii=False))
            imgs.append(data if list_images else (data[0] if data else None))
            n += 1
            if len(convs) >= row_group_size:
                flush()
        flush()
    tmp.replace(out)
    return n


def write_jsonl_rows(records: Iterable[tuple[int, dict]], out: Path, images_out: Path,
                     image_root: Path | None) -> int:
    images_out.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for i, rec in records:
            names = []
            for k, ref in enumerate(rec["images"]):
                if isinstance(ref, bytes):
                    name = f"{i:08d}_{k}.{image_format(ref)}"
                    (images_out / name).write_bytes(ref)
                else:  # keep the file's path relative to its image folder
                    src = Path(ref)
                    name = str(src.relative_to(image_root)) if image_root and src.is_relative_to(image_root) \
                        else src.name
                    dst = images_out / name
                    if dst.resolve() != src.resolve():
                        dst.parent.mkdir(parents=True, exist_ok=True)
                        shutil.copyfile(src, dst)
                names.append(name)
            row: dict[str, Any] = {"conversations": rec["conversations"]}
            if names:
                if any("," in nm for nm in names):
                    raise ValueError(f"image name {names} contains a comma, which the JSON-lines format "
                                     "uses to separate several images")
                row["image"] = ", ".join(names)
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(out)
    return n


def _read(ref: bytes | str) -> bytes:
    if isinstance(ref, bytes):
        return ref
    with open(ref, "rb") as f:
        return f.read()


def convert(src: str | Path, out: str | Path, *, image_dir: str | Path | None = None,
            images_out: str | Path | None = None, row_group_size: int = 1000, drop: Iterable[int] = (),
            limit: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Write `src` (any readable format) to `out` (.parquet or .jsonl), the first `limit` rows minus `drop`;
    returns counts."""
    out = Path(out)
    if out.suffix not in (".parquet", ".jsonl"):
        raise ValueError(f"output {str(out)!r} must end in .parquet or .jsonl")
    if Path(src).resolve() == out.resolve():
        raise ValueError("the output must not be the input file")
    reader = SampleReader(src, image_dir=image_dir)
    drop = set(drop)
    skipped: dict[str, int] = {}
    out.parent.mkdir(parents=True, exist_ok=True)
    n_in = min(len(reader), limit) if limit else len(reader)
    records = tqdm(_records(reader, n_in, drop, skipped), total=n_in - len(drop), desc="convert",
                   disable=not progress, dynamic_ncols=True)
    if out.suffix == ".parquet":
        list_images = not _image_counts(reader, n_in, drop) <= {0, 1}
        n = write_parquet_rows(records, out, list_images, row_group_size)
        where = {"out": str(out)}
    else:
        folder = Path(images_out) if images_out else out.with_name(out.stem + "_images")
        n = write_jsonl_rows(records, out, folder, reader.image_root)
        where = {"out": str(out), "images": str(folder)}
    return {**where, "rows_in": n_in, "rows_out": n, "dropped": len(drop), "unreadable": skipped,
            "bytes_out": os.path.getsize(out)}
