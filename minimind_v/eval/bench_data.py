"""What a benchmark measures on: a fresh model of a preset, synthetic or given rows, and their encoding.

Rows are encoded the way the trainer encodes them, except that a conversation longer than `max_len` is cut
(as the reference implementation cuts it) instead of refused, so every benchmark row counts.
"""
from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any, Callable

import torch

from ..config import IMAGE_TOKEN, VisionConfig, VLMConfig, llm_preset
from ..data.chat import encode_conversation
from ..data.encode import SampleEncoder
from ..data.synthetic import random_image
from ..model.vlm import MiniMindVLM

WORDS = ("the a red blue green small large round square cat dog car tree house sky cloud sun river road bird "
         "flower picture shows there is an with on in of and near under over bright dark shape left right").split()


def build_model(preset: str, vision: str, projector: str, max_len: int, seed: int = 0,
                image_token: str = IMAGE_TOKEN, image_token_id: int | None = None) -> MiniMindVLM:
    """A fresh model: the preset's decoder and either the embedded encoder or a local pretrained one.

    image_token_id: the placeholder's id in the tokenizer the rows are encoded with (default: ours, 3)."""
    llm = llm_preset(preset)
    llm = dataclasses.replace(llm, max_seq_len=max(llm.max_seq_len, max_len))
    if vision == "scratch":
        vcfg = VisionConfig()
    else:
        cfg_file = Path(vision) / "config.json"
        if not cfg_file.is_file():
            raise FileNotFoundError(f"--vision {vision!r} is neither 'scratch' nor an encoder folder with config.json")
        kind = "siglip" if json.loads(cfg_file.read_text()).get("model_type", "").startswith("siglip") else "clip"
        vcfg = VisionConfig(kind=kind, path=str(vision))
    torch.manual_seed(seed)
    ids = {} if image_token_id is None else {"image_token_id": image_token_id}
    return MiniMindVLM(VLMConfig(llm=llm, vision=vcfg, projector=projector, image_token=image_token, **ids))


def synthetic_samples(n: int, words: tuple[int, int], image_size: int, seed: int = 0) -> list[dict[str, Any]]:
    """Describe-the-picture conversations on random shapes, answers of words[0]..words[1] words."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        im = random_image(rng, image_size, n_shapes=(2, 6))
        answer = " ".join(rng.choice(WORDS) for _ in range(rng.randint(*words))) + "."
        out.append({"conversations": [{"role": "user", "content": "<image>\nDescribe this image."},
                                      {"role": "assistant", "content": answer}], "images": [im]})
    return out


class CutEncoder(SampleEncoder):
    """SampleEncoder that cuts a too-long conversation at max_len (as the reference does) instead of refusing it.

    Only benchmarks use this: cutting is safe here because the image run comes first in every sample."""

    def __call__(self, sample: dict[str, Any]) -> dict[str, torch.Tensor]:
        ids, labels = encode_conversation(self.tokenizer, sample["conversations"],
                                          tokens_per_image=self.tokens_per_image, image_token=self.image_token)
        out = {"input_ids": torch.tensor(ids[:self.max_len]), "labels": torch.tensor(labels[:self.max_len])}
        if sample.get("images"):
            out["pixel_values"] = self.preprocess(sample["images"])
        return out


class EncodedRows(torch.utils.data.Dataset):
    """rows[i] through the encoder: what the trainer's RowDataset does, minus its skipping of broken rows."""

    def __init__(self, rows: Any, encode: Callable[[dict[str, Any]], dict[str, torch.Tensor]]):
        self.rows, self.encode = rows, encode

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return self.encode(self.rows[int(i)])


def tokenizer_for(rows: Any, n: int, vocab_size: int) -> Any:
    from ..data.tokenizer import train_tokenizer

    texts = [m["content"] for i in range(min(n, len(rows))) for m in record(rows, i)["conversations"]]
    return train_tokenizer(texts, vocab_size=vocab_size)


def record(rows: Any, i: int) -> dict[str, Any]:
    return rows.record(i) if hasattr(rows, "record") else rows[i]
