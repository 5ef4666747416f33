"""Several processes, one model: what `torchrun` sets up, read back here.

    torchrun --nproc_per_node 4 -m minimind_v.cli train sft ...                      # one machine, 4 GPUs
    torchrun --nnodes 2 --node_rank 0 --master_addr 10.0.0.1 --master_port 29500 \\
             --nproc_per_node 8 -m minimind_v.cli train sft ...                      # and node_rank 1 on the other

torchrun exports RANK / WORLD_SIZE / LOCAL_RANK; without them this is a single process and every helper is a
no-op. NCCL joins GPUs, gloo joins CPU processes (which is how the tests check DDP on a laptop).
"""
from __future__ import annotations

import os
from datetime import timedelta
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over every process (in place); a no-op for one process."""
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t

    def gather(self, obj: object) -> list[object]:
        """Every process's `obj`, in rank order (small Python objects only)."""
        if not self.enabled:
            return [obj]
        out: list[object] = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def init_distributed(device: str = "auto") -> tuple[Dist, torch.device | None]:
    """Join the process group torchrun described (if any). Returns the Dist and, for NCCL, this rank's GPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), None
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    dev = None
    if use_cuda:
        torch.cuda.set_device(local)
        dev = torch.device("cuda", local)
    return Dist(rank, world, local), dev


def close_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        if dist.get_backend() == "gloo":
            # Every process finishes its last exchange before any tears the group down: one that exits while
            # another's gloo thread still talks to it aborts ("terminate called without an active exception").
            # Bounded, so a process whose peer already died does not wait forever.
            try:
                dist.monitored_barrier(timeout=timedelta(seconds=60))
            except RuntimeError:
                pass
        dist.destroy_process_group()
