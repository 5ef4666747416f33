"""A dataset stored as one JSON array (LLaVA's `blip_laion_cc_sbu_558k.json`, `llava_v1_5_mix665k.json`), read
row by row like a JSON-lines file.

`json.load` of such a file holds every row as Python objects at once: a 1 GB file takes several GB. Here the file
is read once, 16 MiB at a time; each element is parsed by the C decoder only to find where it ends, its byte
offset and length are kept (12 bytes per row), and the parsed object is dropped. A row is read later by seeking
to its offset and parsing its bytes alone.
"""
from __future__ import annotations

import codecs
import json
from pathlib import Path

import numpy as np

from .rows import OffsetRows

CHUNK = 1 << 24
_WS = " \t\r\n\ufeff"  # blanks, and a UTF-8 byte-order mark at the start


def starts_with_array(path: Path) -> bool:
    """Whether the file's first non-blank character is '[' (a JSON array, not JSON lines)."""
    with open(path, "rb") as f:
        head = f.read(4096).lstrip(b" \t\r\n\xef\xbb\xbf")  # a UTF-8 byte-order mark is blank here too
    return head[:1] == b"["


def index_array(path: Path, chunk: int = CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Byte offsets and lengths of the top-level elements of the JSON array in `path`."""
    decoder, dec = json.JSONDecoder(), codecs.getincrementaldecoder("utf-8")()
    offsets: list[int] = []
    lengths: list[int] = []
    with open(path, "rb") as f:
        buf, pos, at, eof = "", 0, 0, False  # at: the byte offset of buf[pos]

        def read_more() -> None:
            nonlocal buf, pos, eof
            block = f.read(chunk)
            eof = not block
            buf, pos = buf[pos:] + dec.decode(block, final=eof), 0  # once per chunk, not per row

        def skip(chars: str) -> None:
            nonlocal pos, at
            start = pos
            while pos < len(buf) and buf[pos] in chars:
                pos += 1
            at += len(buf[start:pos].encode())

        opened = False
        while True:
            skip(_WS + ("," if opened else ""))
            if pos == len(buf):
                if eof:
                    raise _cut_off(path, len(offsets), at, None)
                read_more()
                continue
            if not opened:
                if buf[pos] != "[":
                    raise ValueError(f"{path} is neither JSON lines nor a JSON array (it starts with {buf[pos]!r})")
                opened, pos, at = True, pos + 1, at + 1
                continue
            if buf[pos] == "]":
                return np.asarray(offsets, dtype=np.int64), np.asarray(lengths, dtype=np.int64)
            try:
                _, end = decoder.raw_decode(buf, pos)
            except ValueError as e:
                if eof:
                    raise _cut_off(path, len(offsets), at, e) from None
                read_more()  # the element runs past what has been read: read on and parse it again
                continue
            size = len(buf[pos:end].encode())
            offsets.append(at)
            lengths.append(size)
            pos, at = end, at + size


def _cut_off(path: Path, rows: int, at: int, err: Exception | None) -> ValueError:
    why = f" ({err})" if err else " (no closing ']')"
    return ValueError(f"the JSON array in {path} is cut off or broken after {rows} complete rows, at byte {at}{why}; "
                      f"the file is incomplete: download it again")


class JsonArrayRows(OffsetRows):
    """Random access to the elements of a JSON array through an index of byte offsets and lengths."""

    what = "element"

    def __init__(self, path: str | Path):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"no such JSON file: {str(path)!r}")
        super().__init__(path, *index_array(path))
