"""What a request may cost before the server takes it on: a place in the queue and memory for its images.

Every request holds a place from the moment its body starts to arrive until its answer is sent, so the queue
bounds everything at once — bodies being read, JSON being parsed, images being decoded, answers being
generated — and a full server answers 429 straight away. Images also reserve memory from a budget before any
pixel is decoded: what decoding and the image processor will allocate is known from the header (the size and
the processor's resize rule), so a request whose images cannot fit is refused, and one that fits waits until
enough memory is free. The reservation ends with preprocessing: what is left is the small pixel tensor the
model reads, bounded by the queue.
"""
from __future__ import annotations

import asyncio
import contextlib
from typing import Any, AsyncIterator

from PIL import Image

from .openai_protocol import APIError

# PIL keeps every pixel in at most 4 bytes (RGB is stored as RGBX); decoding, the RGB conversion and the
# transparency flattening hold up to four such copies at once.
DECODE_BYTES_PER_PIXEL = 16
# The resized image: a PIL copy (4), float64 and float32 copies of three channels (24 + 12), and slack for the
# processor's own intermediates.
RESIZED_BYTES_PER_PIXEL = 56
FALLBACK_SHORT_EDGE = 1024  # an encoder whose processor we cannot read is assumed to resize this far


def resized_size(processor: Any, w: int, h: int) -> tuple[int, int]:
    """(width, height) the image processor resizes a w x h image to, from its `size` rule alone."""
    size = getattr(processor, "size", None)
    get = (lambda k: size.get(k)) if isinstance(size, dict) else (lambda k: getattr(size, k, None))
    if size is not None and get("height") and get("width"):
        return int(get("width")), int(get("height"))
    short = get("shortest_edge") if size is not None else None
    short = int(short) if short else FALLBACK_SHORT_EDGE
    scale = short / min(w, h)
    return max(short, int(w * scale)), max(short, int(h * scale))


def image_cost(im: Image.Image, processor: Any) -> int:
    """Bytes decoding and preprocessing `im` (opened, not decoded) will hold at their peak."""
    w, h = im.size
    rw, rh = resized_size(processor, w, h)
    return w * h * DECODE_BYTES_PER_PIXEL + rw * rh * RESIZED_BYTES_PER_PIXEL


class Admission:
    """Places in the queue (max_pending) and a memory budget for images (budget_bytes), for one event loop."""

    def __init__(self, max_pending: int, budget_bytes: int, wait_s: float = 30.0):
        self.max_pending, self.budget, self.wait_s = max_pending, budget_bytes, wait_s
        self.pending = 0
        self.reserved = 0
        self.peak = 0  # the most ever reserved at once (the reliability checks read it)
        self._freed: asyncio.Condition | None = None  # made on first use, inside the running loop

    def enter(self) -> None:
        """Take a place in the queue, or 429. Pair with leave()."""
        if self.pending >= self.max_pending:
            raise APIError(429, f"the server is busy ({self.pending} requests queued); retry shortly",
                           code="server_busy", type="rate_limit_error")
        self.pending += 1

    def leave(self) -> None:
        self.pending -= 1

    @contextlib.asynccontextmanager
    async def reserve(self, nbytes: int, param: str = "messages") -> AsyncIterator[None]:
        """Hold `nbytes` of the image budget for the block (waiting up to wait_s for it to be free)."""
        if nbytes > self.budget:
            raise APIError(400, f"the images would take {nbytes / 2**20:.0f} MiB to decode; this server allows "
                                f"{self.budget / 2**20:.0f} MiB at a time", param, "image_too_large")
        if self._freed is None:
            self._freed = asyncio.Condition()
        async with self._freed:
            try:
                await asyncio.wait_for(self._freed.wait_for(lambda: self.reserved + nbytes <= self.budget),
                                       self.wait_s)
            except asyncio.TimeoutError:
                raise APIError(429, "the server is busy decoding images; retry shortly", code="server_busy",
                               type="rate_limit_error") from None
            self.reserved += nbytes
            self.peak = max(self.peak, self.reserved)
        try:
            yield
        finally:
            async with self._freed:
                self.reserved -= nbytes
                self._freed.notify_all()
