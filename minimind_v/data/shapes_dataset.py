"""The shapes world as a PyTorch dataset: sample i is always the same conversation.

Sample i is drawn from its own seed (`train_seed(offset + i)`), so the stream is identical whatever the number of
DataLoader workers, and a resumed run continues at exactly the sample it stopped at.
"""
from __future__ import annotations

import random
from typing import Any, Callable

from torch.utils.data import Dataset

from .chatmix import MixWeights, make_sample
from .world import train_seed


class ShapesWorldDataset(Dataset):
    def __init__(self, n: int, encode: Callable[[dict[str, Any]], Any] | None = None, *, kinds: str = "sft",
                 image_size: int = 96, offset: int = 0, mix: MixWeights | None = None):
        self.n, self.encode, self.kinds = n, encode, kinds
        self.image_size, self.offset, self.mix = image_size, offset, mix

    def __len__(self) -> int:
        return self.n

    def raw(self, i: int) -> dict[str, Any]:
        rng = random.Random(train_seed(self.offset + i))
        kw = {"mix": self.mix} if self.mix is not None else {}
        return make_sample(rng, image_size=self.image_size, kinds=self.kinds, **kw)

    def __getitem__(self, i: int) -> Any:
        sample = self.raw(i)
        return self.encode(sample) if self.encode else sample
