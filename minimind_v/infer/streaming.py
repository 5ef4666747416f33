"""From token ids to text pieces a front end can print: whole characters only, stop strings cut out.

The tokenizer is byte-level, so one Chinese character or emoji can span several tokens, and a token can end in
the middle of a character. Decoding the ids so far then ends in U+FFFD (the replacement character); we hold
that tail back until the next token completes the character. Stop strings are held back the same way: while
the text ends with the beginning of a stop string we cannot know yet whether to print it.
"""
from __future__ import annotations

import time
from typing import Any, Iterator

from torch import Tensor

from .generate import GenerationConfig, generate_stream

REPLACEMENT = "\ufffd"


class StreamDecoder:
    """Token ids in (`push`), new complete text out. `text` is everything emitted so far."""

    def __init__(self, tokenizer: Any, stop: list[str] | None = None):
        self.tokenizer = tokenizer
        self.stop = [s for s in (stop or []) if s]
        self.ids: list[int] = []
        self.text = ""
        self.stopped = False  # a stop string appeared; nothing after it is emitted

    def push(self, token_id: int) -> str:
        if self.stopped:
            return ""
        self.ids.append(token_id)
        # Decoding everything again is simple and exact; for answers of a few hundred tokens it costs
        # microseconds next to a model forward.
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True), final=False)

    def finish(self) -> str:
        """The text still held back once generation has ended (a dangling byte shows as U+FFFD)."""
        if self.stopped:
            return ""
        return self._emit(self.tokenizer.decode(self.ids, skip_special_tokens=True), final=True)

    def _emit(self, full: str, final: bool) -> str:
        cut = len(full)
        hits = [i for i in (full.find(s, max(0, len(self.text) - len(s) + 1)) for s in self.stop) if i >= 0]
        if hits:
            cut, self.stopped = max(min(hits), len(self.text)), True
        elif not final:
            if full.endswith(REPLACEMENT):
                cut = len(full.rstrip(REPLACEMENT))
            cut -= self._partial_stop(full[:cut])
        if cut <= len(self.text):
            return ""
        piece = full[len(self.text):cut]
        self.text += piece
        return piece

    def _partial_stop(self, text: str) -> int:
        """Length of the longest end of `text` that begins some stop string."""
        best = 0
        for s in self.stop:
            for k in range(min(len(s) - 1, len(text)), best, -1):
                if text.endswith(s[:k]):
                    best = k
                    break
        return best


class ChatStream:
    """An iterator over the text pieces of one answer, with its numbers once it has run.

    prompt_tokens / completion_tokens: what `usage` reports (the stop token counts as generated);
    finish_reason: "stop" (end of turn or a stop string) or "length" (max_new_tokens reached);
    seconds / first_token_seconds / tokens_per_second: wall time of the whole answer and of the prefill.
    """

    def __init__(self, model: Any, tokenizer: Any, prompt: list[int], pixel_values: Tensor | None,
                 gen: GenerationConfig, pad_id: int = 0, stop: list[str] | None = None):
        self.prompt_tokens = len(prompt)
        self.completion_tokens = 0
        self.finish_reason: str | None = None
        self.seconds = 0.0
        self.first_token_seconds = 0.0
        self._stop_ids = set(gen.stop_ids)
        self._decoder = StreamDecoder(tokenizer, stop)
        self._steps = generate_stream(model, [prompt], pixel_values, gen, pad_id)
        self._pieces = self._run()

    @property
    def text(self) -> str:
        return self._decoder.text

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def __iter__(self) -> Iterator[str]:
        return self._pieces

    def __next__(self) -> str:
        return next(self._pieces)

    def read(self) -> str:
        """Run to the end and return the whole answer."""
        for _ in self._pieces:
            pass
        return self.text

    def close(self) -> None:
        """Stop generating (e.g. the client went away); the numbers keep what was done so far."""
        self._pieces.close()
        self._steps.close()

    def _run(self) -> Iterator[str]:
        t0 = time.perf_counter()
        try:
            for step in self._steps:
                t = int(step[0])
                self.completion_tokens += 1
                if self.completion_tokens == 1:
                    self.first_token_seconds = time.perf_counter() - t0
                if t in self._stop_ids:
                    self.finish_reason = "stop"
                    break
                piece = self._decoder.push(t)
                if self._decoder.stopped:
                    self.finish_reason = "stop"
                if piece:
                    self.seconds = time.perf_counter() - t0
                    yield piece
                if self._decoder.stopped:
                    break
            else:  # one row stops only on a stop id, caught above: running out means max_new_tokens
                self.finish_reason = "length"
            tail = self._decoder.finish()
            if tail:
                yield tail
        finally:
            self._steps.close()
            self.seconds = time.perf_counter() - t0
