"""Read a safetensors file one tensor at a time, converting each to the dtype its parameter wants.

safetensors' own loader maps the whole file into memory: every page it touches counts in the process's resident
set until the last tensor viewing it is gone, so loading a 380 MB float32 encoder into bf16 parameters peaks near
380 + 190 MB. Here each tensor is read with a plain file read into one reused buffer and cast into its own new
tensor, so the peak is the converted weights plus the largest single tensor. The format is small enough to read
by hand: an 8-byte little-endian header length, a JSON header {name: {dtype, shape, data_offsets}}, the bytes.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterator

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def read_header(path: str | Path) -> tuple[dict, int]:
    """The header {name: {"dtype", "shape", "data_offsets"}} and the offset where tensor data starts."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def stream_tensors(path: str | Path, target: Callable[[str], torch.dtype | None]) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) for every tensor whose `target(name)` is a dtype (None: skip it, without reading it)."""
    header, start = read_header(path)
    wanted = {k: v for k, v in header.items() if target(k) is not None}
    if not wanted:
        return
    biggest = max(v["data_offsets"][1] - v["data_offsets"][0] for v in wanted.values())
    buf = bytearray(max(biggest, 1))
    with open(path, "rb") as f:
        for name, info in sorted(wanted.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if info["dtype"] not in DTYPES:
                raise ValueError(f"{path}: tensor {name!r} has dtype {info['dtype']}, which is not supported")
            begin, end = info["data_offsets"]
            shape, src = info["shape"], DTYPES[info["dtype"]]
            if end == begin:
                yield name, torch.empty(shape, dtype=target(name))
                continue
            view = memoryview(buf)[:end - begin]
            f.seek(start + begin)
            if f.readinto(view) != end - begin:
                raise ValueError(f"{path} is truncated: tensor {name!r} runs past the end of the file")
            raw = torch.frombuffer(view, dtype=src).view(shape)
            yield name, raw.to(target(name), copy=True)  # a copy: the buffer is reused for the next tensor
