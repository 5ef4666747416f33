"""minimind-v: a super-small vision-language model you can train, read, measure and serve on one machine."""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def load(path: str, device: str = "auto", weights: str = "fp32", encoder_weights: str | None = None,
         compile: bool = False, adapter: str | None = None) -> Any:
    """Load a run directory; returns a VLMChat with `.answer(images, question)` and `.stream_chat(...)`.
    weights="bf16" halves the memory and speeds up decoding (answers within rounding of float32);
    encoder_weights="int8" shrinks the vision encoder to a quarter; compile=True speeds up decoding after a
    first answer that compiles it; adapter: a LoRA adapter folder trained on this run, applied at load."""
    from .infer.api import load as _load

    return _load(path, device=device, weights=weights, encoder_weights=encoder_weights, compile=compile,
                 adapter=adapter)


__all__ = ["load", "__version__"]
