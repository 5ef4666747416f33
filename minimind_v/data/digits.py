"""Real handwriting: the 8 x 8 UCI optical digits that scikit-learn ships (no download).

Split by index in `load_digits()`: a multiple of 5 is held out for evaluation (360 images), the rest (1,437)
may be trained on. Drawn dark on light: pixel value v (0..16) becomes grey 255 - 255 * v / 16.
"""
from __future__ import annotations

import functools
import random

import numpy as np
from PIL import Image

from .wording import question as worded
from .wording import templates
from .world_text import NUMBER_NAMES, QA

DIGIT_QUESTION = templates("digit")[0]  # the contract's "What digit is this?"; other wordings from `wording.py`


@functools.lru_cache(maxsize=1)
def _all_digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits  # imported here: sklearn takes a second to import

    d = load_digits()
    return d.images.astype(np.uint8), d.target.astype(np.int64)


def load_digit_split(split: str) -> tuple[np.ndarray, np.ndarray]:
    """("train" | "eval") -> (images [N, 8, 8] with values 0..16, labels [N]); train N=1437, eval N=360."""
    if split not in ("train", "eval"):
        raise ValueError(f"digit split must be 'train' or 'eval', got {split!r}")
    images, labels = _all_digits()
    held_out = np.arange(len(labels)) % 5 == 0
    keep = held_out if split == "eval" else ~held_out
    return images[keep], labels[keep]


def render_digit(pixels8x8: np.ndarray, size: int = 96, resample: str = "nearest") -> Image.Image:
    """The digit as an RGB size x size image, grey 255 - 255 * v / 16.

    NEAREST by default: every one of the 64 cells keeps exactly the contract's grey, so any renderer that
    applies the rule literally draws the same image. Training also uses "bilinear"/"bicubic" so the model
    does not depend on which of the common upscalers an evaluator picked."""
    px = np.asarray(pixels8x8)
    if px.shape != (8, 8):
        raise ValueError(f"a digit is an 8 x 8 array, got shape {px.shape}")
    if px.min() < 0 or px.max() > 16:
        raise ValueError(f"digit pixel values must be in 0..16, got {px.min()}..{px.max()}")
    filters = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
               "bicubic": Image.Resampling.BICUBIC}
    if resample not in filters:
        raise ValueError(f"resample must be one of {list(filters)}, got {resample!r}")
    grey = np.rint(255 - 255 * px.astype(np.float32) / 16).astype(np.uint8)
    return Image.fromarray(grey, "L").resize((size, size), filters[resample]).convert("RGB")


def digit_qa(label: int, rng: random.Random | None = None) -> QA:
    """The digit question; rng None -> canonical ("What digit is this?" / "The digit is 7."), else varied."""
    key = str(int(label))
    if rng is None:
        return QA("digit", DIGIT_QUESTION, f"The digit is {key}.", key)
    word = NUMBER_NAMES[int(label)]
    answer = rng.choice([f"The digit is {key}.", f"{key}.", f"{word.capitalize()}.", f"It is the digit {word}.",
                         f"This is the digit {key}.", f"It is a handwritten {key}."])
    question = DIGIT_QUESTION if rng.random() < 0.6 else worded("digit", {}, rng, "train")
    return QA("digit", question, answer, key)
