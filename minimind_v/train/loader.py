"""The order samples are read in: deterministic, resumable, shardable over processes.

Epoch e reads a permutation drawn from (seed, e) and cut into global batches of `batch_size x world` samples;
rank r takes the r-th slice of each. So the samples of global batch k are the same whatever the number of
processes, a run can restart at any sample (`batches(start)`), and 1 process with batch 8 sees exactly what 2
processes with batch 4 see together. Three orders:
  - shuffle:     a full permutation (JSON-lines, saved datasets: any row is one seek away);
  - blocks:      parquet row groups in random order, rows shuffled inside each group and its neighbours
                 (a window of `block_window` groups), so each group is read about once per epoch;
  - by length:   samples sorted by length inside windows of `50 x global batch`, batches shuffled: rows of a
                 batch have similar lengths, so padding wastes little (lengths come from a cheap estimate).
"""
from __future__ import annotations

import signal
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset


class EpochLoader:
    def __init__(self, dataset: Dataset, batch_size: int, *, collate_fn: Callable, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world: int = 1, workers: int = 0,
                 blocks: Sequence[tuple[int, int]] | None = None, block_window: int = 4,
                 lengths: Sequence[int] | None = None, pin_memory: bool = False):
        self.dataset, self.batch_size, self.collate_fn = dataset, batch_size, collate_fn
        self.seed, self.shuffle, self.rank, self.world = seed, shuffle, rank, world
        self.workers, self.blocks, self.block_window, self.pin_memory = workers, blocks, block_window, pin_memory
        self.lengths = np.asarray(lengths) if lengths is not None else None
        self.global_batch = batch_size * world
        self.n = len(dataset)
        if self.n < self.global_batch:
            raise ValueError(f"the dataset has {self.n} rows, fewer than one global batch "
                             f"({batch_size} x {world} processes)")
        self.per_epoch = self.n // self.global_batch  # global batches per epoch (the tail is dropped)

    def order(self, epoch: int) -> np.ndarray:
        """Every sample index of an epoch, in reading order (the same on every rank)."""
        rng = np.random.default_rng([self.seed, epoch])
        if not self.shuffle:
            return np.arange(self.n)
        if self.lengths is not None:
            perm = rng.permutation(self.n)
            window = self.global_batch * 50
            chunks = [perm[i:i + window] for i in range(0, self.n, window)]
            perm = np.concatenate([c[np.argsort(-self.lengths[c], kind="stable")] for c in chunks])
            usable = self.per_epoch * self.global_batch
            batches = perm[:usable].reshape(self.per_epoch, self.global_batch)
            return np.concatenate([batches[rng.permutation(self.per_epoch)].reshape(-1), perm[usable:]])
        if self.blocks is not None:
            blocks = [np.arange(a, b) for a, b in self.blocks]
            picked = [blocks[i] for i in rng.permutation(len(blocks))]
            out = []
            for i in range(0, len(picked), self.block_window):
                group = np.concatenate(picked[i:i + self.block_window])
                out.append(group[rng.permutation(len(group))])
            return np.concatenate(out)
        return rng.permutation(self.n)

    def batch_indices(self, start: int) -> Iterator[list[int]]:
        """This rank's index lists from global sample `start` on (it must fall on a global batch boundary)."""
        k = start // self.global_batch
        while True:
            epoch, j = divmod(k, self.per_epoch)
            order = self.order(epoch)
            for b in range(j, self.per_epoch):
                lo = b * self.global_batch + self.rank * self.batch_size
                yield order[lo:lo + self.batch_size].tolist()
            k = (epoch + 1) * self.per_epoch

    def batches(self, start: int = 0) -> Iterator[dict[str, Any]]:
        """Collated batches forever (epoch after epoch), starting at global sample `start`."""
        if start % self.global_batch:
            raise ValueError(f"resume position {start} is not a multiple of the global batch {self.global_batch}")
        # A private generator: creating the iterator must not draw from the global RNG, or a resumed run
        # would see different dropout masks than an uninterrupted one.
        loader = DataLoader(self.dataset, batch_sampler=_Batches(self, start), collate_fn=self.collate_fn,
                            num_workers=self.workers, pin_memory=self.pin_memory,
                            persistent_workers=False, prefetch_factor=4 if self.workers else None,
                            generator=torch.Generator().manual_seed(self.seed + start),
                            worker_init_fn=_ignore_sigint if self.workers else None)
        yield from loader


def _ignore_sigint(worker_id: int) -> None:
    """Ctrl-C reaches every process of the terminal: workers ignore it and keep serving the batches the
    trainer still needs while it finishes its step and saves (a worker killed by it would end the run)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class _Batches:
    """An endless batch sampler over an EpochLoader (DataLoader wants an object it can iterate)."""

    def __init__(self, owner: EpochLoader, start: int):
        self.owner, self.start = owner, start

    def __iter__(self) -> Iterator[list[int]]:
        return self.owner.batch_indices(self.start)

    def __len__(self) -> int:
        return 1 << 62
