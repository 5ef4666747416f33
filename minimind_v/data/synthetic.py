"""Small synthetic datasets in the real formats, for tests, benchmarks and trying the tools without downloads.

Rows look like MiniMind-V's: a user turn with `<image>` and a question, an assistant answer of a few words, the
image a random JPEG of coloured shapes. `broken=0.1` seeds one row in ten with a known fault, one fault kind
after another, and returns which row got which, so a test can check that every broken row is counted.
"""
from __future__ import annotations

import io
import json
import random
from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw

from ..config import IMAGE_MARKER
from ..encoder_files import write_random_encoder

WORDS = ("the a red blue green small large round square picture shows there is an with on in of and near under "
         "over bright dark shape object background left right center top bottom").split()
# The faults `broken` seeds, and the reason a reader must give for each.
FAULTS = {"missing_image": "missing_image", "corrupt_image": "corrupt_image", "extra_marker": "placeholder_mismatch",
          "bad_role": "bad_roles", "empty_answer": "empty_turn", "long": "too_long"}


def random_image(rng: random.Random, size: int = 48, n_shapes: tuple[int, int] = (1, 4)) -> Image.Image:
    """A coloured canvas with a few random ellipses and rectangles."""
    img = Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3)))
    d = ImageDraw.Draw(img)
    for _ in range(rng.randint(*n_shapes)):
        x0, y0 = rng.randint(0, size - 8), rng.randint(0, size - 8)
        box = [x0, y0, rng.randint(x0 + 4, size), rng.randint(y0 + 4, size)]
        (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=tuple(rng.randint(0, 255) for _ in range(3)))
    return img


def random_jpeg(rng: random.Random, size: int = 48) -> bytes:
    img = random_image(rng, size)
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


def synthetic_rows(n: int, *, seed: int = 0, words: tuple[int, int] = (3, 12), images: int = 1,
                   broken: float = 0.0, long_words: int = 400, image_size: int = 48
                   ) -> tuple[list[dict[str, Any]], dict[int, str]]:
    """Rows {"conversations": [...], "images": [bytes | None]}; returns (rows, {row: expected reason})."""
    rng = random.Random(seed)
    faults = list(FAULTS)
    n_broken = round(n * broken)
    broken_at = sorted(rng.sample(range(n), n_broken)) if n_broken else []
    expected: dict[int, str] = {}
    rows = []
    for i in range(n):
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "."
        markers = IMAGE_MARKER * images
        convs = [{"role": "user", "content": f"{markers}\nDescribe the picture."},
                 {"role": "assistant", "content": answer}]
        imgs: list[bytes | None] = [random_jpeg(rng, image_size) for _ in range(images)]
        if i in broken_at:
            fault = faults[len(expected) % len(faults)]
            expected[i] = FAULTS[fault]
            if fault == "missing_image":
                imgs[0] = None
            elif fault == "corrupt_image":
                imgs[0] = imgs[0][: len(imgs[0]) // 3]  # a truncated JPEG
            elif fault == "extra_marker":  # two markers, one image (a row with images and no marker is text-only)
                convs[0]["content"] = f"{IMAGE_MARKER}\n{IMAGE_MARKER}\nDescribe the pictures."
            elif fault == "bad_role":
                convs[1]["role"] = "bot"
            elif fault == "empty_answer":
                convs[1]["content"] = "  "
            elif fault == "long":
                convs[1]["content"] = " ".join(rng.choice(WORDS) for _ in range(long_words))
        rows.append({"conversations": convs, "images": imgs})
    return rows, expected


def write_jsonl(rows: list[dict[str, Any]], path: str | Path, image_dir: str | Path | None = None) -> Path:
    """MiniMind-V's layout: one JSON object per line, images as files named in `image` (comma-separated)."""
    path = Path(path)
    image_dir = Path(image_dir) if image_dir else path.parent / "images"
    image_dir.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            names = []
            for k, data in enumerate(r["images"]):
                name = f"{i:06d}_{k}.jpg"
                if data is not None:  # None: a row that names an image file that does not exist
                    (image_dir / name).write_bytes(data)
                names.append(name)
            obj = {"conversations": r["conversations"]}
            if names:
                obj["image"] = ", ".join(names)
            f.write(json.dumps(obj, ensure_ascii=False) + "\n")
    return path


def write_parquet(rows: list[dict[str, Any]], path: str | Path, row_group_size: int = 64,
                  list_images: bool = False) -> Path:
    """The reference's parquet: `conversations` as a JSON string, `image_bytes` binary (or a list of them)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    convs = [json.dumps(r["conversations"], ensure_ascii=False) for r in rows]
    imgs = [[b or b"" for b in r["images"]] for r in rows]  # a missing image: empty bytes
    multi = list_images or any(len(x) != 1 for x in imgs)
    col = pa.array(imgs, pa.list_(pa.binary())) if multi else pa.array([x[0] for x in imgs], pa.binary())
    pq.write_table(pa.table({"conversations": convs, "image_bytes": col}), str(path), row_group_size=row_group_size)
    return Path(path)


def write_text_jsonl(path: str | Path, n: int, seed: int = 0, words: tuple[int, int] = (10, 60)) -> Path:
    """Pretraining text rows `{"text": ...}`."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "."
            f.write(json.dumps({"text": text}) + "\n")
    return Path(path)


def write_chat_jsonl(path: str | Path, n: int, seed: int = 0) -> Path:
    """Text-only chat rows for LLM SFT (`{"conversations": [...]}` with no image)."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            q = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "?"
            a = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 15))) + "."
            f.write(json.dumps({"conversations": [{"role": "user", "content": q},
                                                  {"role": "assistant", "content": a}]}) + "\n")
    return Path(path)


def write_tiny_encoder(kind: str, out: str | Path, image_size: int = 32, patch_size: int = 8,
                       width: int = 32, seed: int = 0) -> Path:
    """A random one-layer CLIP or SigLIP encoder folder, loadable like the real ones: seconds to build."""
    return write_random_encoder(kind, out, image_size=image_size, patch_size=patch_size, width=width, seed=seed)
