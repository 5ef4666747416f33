"""DDP on CPU: 2 gloo processes train to the same weights as 1 process with the same global batch, and so do
gradient accumulation and both together (the loss is a mean over every labelled token of the global batch)."""
from __future__ import annotations

import json
import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file
from torch.utils.data import Dataset

from minimind_v.config import LLMConfig
from minimind_v.data.batches import PadCollate
from minimind_v.data.robust import SkipCollate, skip
from minimind_v.train.distributed import close_distributed, init_distributed
from minimind_v.train.lm_only import LMOnly
from minimind_v.train.loader import EpochLoader
from minimind_v.train.trainer import TrainConfig, train

CFG = LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=64, vocab_size=64, max_seq_len=64)


class Sequences(Dataset):
    """Token rows of different lengths with different numbers of targets, so a per-process mean would differ
    from the global token mean."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int) -> dict:
        if i % 9 == 4:  # a broken row: skipped, on whichever process reads it
            return skip(i, "invalid", "seeded fault")
        g = torch.Generator().manual_seed(i)
        n = 6 + (i * 7) % 20
        ids = torch.randint(4, 64, (n,), generator=g)
        labels = ids.clone()
        labels[: n // 2] = -100  # a prompt part without targets
        return {"input_ids": ids, "labels": labels}


def run(batch: int, accum: int, rank: int = 0, world: int = 1, dist=None, metrics=None) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = LMOnly(CFG)
    loader = EpochLoader(Sequences(), batch, collate_fn=SkipCollate(inner=PadCollate()), seed=1, rank=rank,
                         world=world)
    cfg = TrainConfig(steps=5, batch_size=batch, accum=accum, lr=3e-3, log_every=100)
    train(model, loader, cfg, device=torch.device("cpu"), dist=dist, metrics_path=metrics)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    dist, _ = init_distributed("cpu")
    try:
        for batch, accum in ((4, 1), (2, 2)):
            sd = run(batch, accum, rank, world, dist, os.path.join(out_dir, f"m_b{batch}_a{accum}.jsonl"))
            if rank == 0:
                sd.pop("llm.lm_head.weight", None)  # tied to the embedding
                save_file(sd, os.path.join(out_dir, f"ddp_b{batch}_a{accum}.safetensors"))
    finally:
        close_distributed()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def single():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield {"b8": run(8, 1), "b4a2": run(4, 2)}
    finally:
        torch.set_num_threads(threads)


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    """Equal up to float rounding: the runs differ by under 0.1% of how far training moved each tensor (Adam
    turns rounding-level gradient differences into visible ones where a gradient is near zero, so an
    element-wise tolerance would be arbitrary; a wrong loss normalisation differs by percents)."""
    torch.manual_seed(0)
    init = LMOnly(CFG).state_dict()
    for k in b:
        moved = (b[k] - init[k]).norm()
        assert moved > 0 or k.endswith("norm.weight")
        assert (a[k] - b[k]).norm() <= 1e-3 * moved + 1e-7, f"{k}: {(a[k] - b[k]).norm()} vs moved {moved}"


def test_accumulation_matches_a_bigger_batch(single):
    _close(single["b4a2"], single["b8"])


def test_a_per_micro_batch_mean_would_not_match(single):
    """The check has teeth: averaging per micro-batch means (instead of over all tokens) moves the weights."""
    from minimind_v.train import trainer

    real = trainer.LossModule.forward

    def per_batch_mean(self, batch):
        loss_sum, n, aux = real(self, batch)
        return loss_sum / n * 40, n, aux  # as if every micro-batch had the same number of targets

    trainer.LossModule.forward = per_batch_mean
    try:
        wrong = run(4, 2)
    finally:
        trainer.LossModule.forward = real
    with pytest.raises(AssertionError):
        _close(wrong, single["b8"])


def test_two_gloo_processes_match_one_process(single, tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ref = {k: v for k, v in single["b8"].items() if k != "llm.lm_head.weight"}
    _close(load_file(str(tmp_path / "ddp_b4_a1.safetensors")), ref)  # 2 x 4
    _close(load_file(str(tmp_path / "ddp_b2_a2.safetensors")), ref)  # 2 x 2 x 2 accumulation (no_sync)
    # the broken rows both processes skipped are reported together, once, by rank 0
    read = EpochLoader(Sequences(), 8, collate_fn=list, seed=1).order(0)[:40].tolist()
    broken = sorted(i for i in read if i % 9 == 4)
    end = json.loads((tmp_path / "m_b4_a1.jsonl").read_text().splitlines()[-1])
    assert end["skipped"] == {"invalid": len(broken)} and end["rows_seen"] == 40 and broken


def test_loader_shards_global_batches_the_same_way_for_any_world_size():
    one = EpochLoader(Sequences(), 8, collate_fn=list, seed=3)
    two = [EpochLoader(Sequences(), 4, collate_fn=list, seed=3, rank=r, world=2) for r in range(2)]
    a = next(one.batch_indices(0))
    assert a == next(two[0].batch_indices(0)) + next(two[1].batch_indices(0))
    # resuming at sample 16 gives the third global batch
    it = one.batch_indices(0)
    third = [next(it) for _ in range(3)][-1]
    assert next(one.batch_indices(16)) == third
