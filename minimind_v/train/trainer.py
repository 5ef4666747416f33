"""One training loop for every stage: AdamW, warmup + cosine, clipping, autocast, accumulation, DDP, resume.

The loss is next-token cross-entropy on assistant tokens only. Logits are computed only at the positions that
have a label: with a 6400-token vocabulary and short answers that skips most of the head's work.

An optimizer step averages the loss over every labelled token of its global batch: all micro-batches of the
accumulation window on all processes. Each micro-batch contributes `its loss sum / global token count` (DDP's
gradient mean is undone by multiplying by the world size), so 1 process x batch 8, 2 processes x batch 4 and
1 process x batch 4 x 2 accumulation steps all compute the same update.
"""
from __future__ import annotations

import contextlib
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data.collate import IGNORE
from ..data.robust import SkipTally
from ..device import autocast
from .distributed import Dist
from .metrics_log import MetricsLog
from .optim import lr_at, make_optimizer  # noqa: F401  (part of this module's interface)
from .resume import STATE_FILE, load_state, rng_state, save_state, set_rng_state


@dataclass
class TrainConfig:
    steps: int = 100
    batch_size: int = 16  # samples per micro-batch per process
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * this (MiniMind: lr / 10)
    warmup: int = 0
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    dtype: str = "fp32"  # fp32 | bf16 | fp16 (autocast; fp16 adds a GradScaler)
    log_every: int = 10
    seed: int = 0
    accum: int = 1  # micro-batches per optimizer step
    lr_projector: float = 0.0  # per-part learning rates; 0 = lr
    lr_llm: float = 0.0
    lr_vision: float = 0.0
    save_every: int = 0  # optimizer steps between resumable checkpoints (0: only at the end / on Ctrl-C)
    compile: bool = False  # torch.compile each decoder block


class LossModule(nn.Module):
    """model + batch -> (sum of token losses, number of labelled tokens, MoE aux loss). DDP wraps this."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        kw = {k: batch[k] for k in ("doc_ids", "position_ids") if k in batch}
        pixels = batch.get("pixel_values")
        if "vision_feats" in batch:  # cached encoder features: only the projector runs
            kw["image_embeds"] = m.projector(batch["vision_feats"].to(m.projector_dtype))
            pixels = None
        # Right-padded or packed batches need no attention_mask: causal attention (per document when packed)
        # already keeps real tokens blind to what follows them, and SDPA stays on its fast kernels.
        out = m(batch["input_ids"], pixels, logits_to_keep=1, **kw)
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE
        logits = m.llm.lm_head(out.hidden[:, :-1][keep]).float()
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        projector = getattr(m, "projector", None)
        if projector is not None and "image_embeds" not in kw and (pixels is None or not len(pixels)):
            # A text-only batch leaves the projector without a gradient, which DDP would wait for forever.
            loss_sum = loss_sum + sum(p.sum() for p in projector.parameters() if p.requires_grad) * 0.0
        return loss_sum, keep.sum(), out.aux_loss


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the next token where a label exists, plus the MoE auxiliary loss."""
    loss_sum, n, aux = LossModule(model)(batch)
    return loss_sum / n.clamp(min=1), aux


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def _stream(batches: Any, start: int, global_batch: int) -> Iterator[dict[str, Any]]:
    """Batches from global sample `start` on: an EpochLoader seeks; any other iterable is replayed and cycled."""
    if hasattr(batches, "batches"):
        yield from batches.batches(start)
        return
    skip = start // global_batch
    while True:
        for b in batches:
            if skip:
                skip -= 1
                continue
            yield b


def train(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], cfg: TrainConfig, *,
          device: torch.device, metrics_path: str | Path | None = None, stage: str = "train",
          desc: str | None = None, run_dir: str | Path | None = None, resume: bool = False,
          dist: Dist | None = None, export: Callable[[nn.Module], None] | None = None,
          prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None, log_to: str = "",
          tally: SkipTally | None = None) -> list[dict[str, Any]]:
    """Run `cfg.steps` optimizer steps over `batches`; returns the logged rows (also appended to metrics_path).

    run_dir: where `resume.safetensors` is written every `cfg.save_every` steps, at the end and on Ctrl-C
    (`export(model)` then writes the loadable run). resume: continue from that file exactly.
    prepare: a hook on each batch once on the device (the feature cache fills in encoder features there).
    """
    dist = dist or Dist()
    model.to(device).train()
    if cfg.compile:
        for layer in model.llm.layers:
            layer.compile(dynamic=True)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "fp16" else None
    step_fn: nn.Module = LossModule(model)
    if dist.enabled:
        moe = model.llm.cfg.n_experts > 0  # experts a batch did not route to get no gradient
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=moe)
    tally = tally or SkipTally()
    state_path = Path(run_dir) / STATE_FILE if run_dir else None
    start_step, position, t_prev = 0, 0, 0.0
    if resume:
        if state_path is None:
            raise ValueError("resume needs the run directory that holds resume.safetensors")
        meta = load_state(state_path, model, opt, scaler)
        if meta["stage"] != stage:
            raise ValueError(f"{state_path} belongs to stage {meta['stage']!r}, not {stage!r}")
        start_step, t_prev = meta["step"], meta.get("elapsed_s", 0.0)
        # The data position is kept in samples, so a different number of processes resumes at the same place.
        position = meta["samples"] // (cfg.batch_size * dist.world) * (cfg.batch_size * dist.world)
        if meta["world"] != dist.world:  # another process count: the same share of the data, so the same lr
            start_step = position // (cfg.batch_size * dist.world * cfg.accum)
            if dist.main:
                print(f"resuming {meta['world']}-process step {meta['step']} as step {start_step} on "
                      f"{dist.world} processes", flush=True)
        if dist.main:  # the tally of every process was combined into the checkpoint: restore it once
            tally.merge(meta["skipped"])
        set_rng_state(meta["rng"][min(dist.rank, len(meta["rng"]) - 1)])
    global_batch = cfg.batch_size * dist.world
    data = _stream(batches, position, global_batch)
    log = MetricsLog(metrics_path if dist.main else None, to=log_to if dist.main else "",
                     log_dir=run_dir, run_name=stage, config=asdict(cfg))
    stop = {"now": False}

    def on_sigint(signum: int, frame: Any) -> None:
        if stop["now"]:
            raise KeyboardInterrupt  # a second Ctrl-C: give up on saving
        stop["now"] = True
        if dist.main:
            print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)", flush=True)

    catch = state_path is not None and threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, on_sigint) if catch else None

    def combined_tally() -> SkipTally:
        total = SkipTally()
        for st in dist.gather(tally.state()):
            total.merge(st)
        return total

    def checkpoint(step: int) -> None:
        rngs = dist.gather(rng_state())
        skipped = combined_tally().state()
        if dist.main:
            meta = {"stage": stage, "step": step, "samples": position, "world": dist.world,
                    "skipped": skipped, "rng": rngs, "elapsed_s": t_prev + time.time() - t0}
            save_state(state_path, model, opt, meta, scaler)
            if export:
                export(model)
        dist.barrier()

    def next_batch() -> dict[str, Any]:
        nonlocal position
        while True:  # a batch whose rows were all skipped is counted and replaced
            b = next(data)
            position += global_batch
            tally.add(b)
            if "labels" in b and bool((b["labels"][:, 1:] != IGNORE).any()):
                return b

    rows: list[dict[str, Any]] = []
    bar = tqdm(range(start_step, cfg.steps), desc=desc or stage, dynamic_ncols=True, disable=not dist.main,
               initial=start_step, total=cfg.steps)
    t0, seen, tokens, ema, done = time.time(), 0, 0, None, start_step
    try:
        for step in bar:
            host = [next_batch() for _ in range(cfg.accum)]
            # Counted on the host batches: no device synchronisation.
            local_tokens = sum(int((b["labels"][:, 1:] != IGNORE).sum()) for b in host)
            seen += sum(b.get("n_samples", b["input_ids"].shape[0]) for b in host)
            tokens += sum(int(b["attention_mask"].sum()) for b in host)
            micro = [to_device(b, device) for b in host]
            if prepare:
                micro = [prepare(b) for b in micro]
            counts = torch.tensor([local_tokens, int(stop["now"])], dtype=torch.long, device=device)
            dist.all_sum(counts)  # global labelled tokens, and whether any process was interrupted
            for g in opt.param_groups:
                g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
            loss_sum = aux_sum = torch.zeros((), device=device)
            for k, b in enumerate(micro):
                sync = k == len(micro) - 1 or not dist.enabled
                with (contextlib.nullcontext() if sync else step_fn.no_sync()), autocast(device, cfg.dtype):
                    ls, _, aux = step_fn(b)
                    total = ls * (dist.world / counts[0].float()) + aux / cfg.accum
                (scaler.scale(total) if scaler else total).backward()
                loss_sum = loss_sum + ls.detach().float()
                aux_sum = aux_sum + aux.detach().float() / cfg.accum
            if scaler:
                scaler.unscale_(opt)
            gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            (scaler.step(opt), scaler.update()) if scaler else opt.step()
            opt.zero_grad(set_to_none=True)
            loss = loss_sum.item() / max(1, local_tokens)  # one synchronisation per step
            ema = loss if ema is None else 0.9 * ema + 0.1 * loss
            bar.set_postfix(loss=f"{ema:.3f}")
            last = step == cfg.steps - 1
            if step % cfg.log_every == 0 or last:
                el = time.time() - t0
                row = {"stage": stage, "step": step, "loss": round(loss, 5), "aux": round(aux_sum.item(), 5),
                       "lr": opt.param_groups[0]["lr"], "grad_norm": round(float(gnorm), 4),
                       "samples_per_s": round(seen / el, 2), "tokens_per_s": round(tokens / el, 1),
                       "elapsed_s": round(el, 1)}
                rows.append(row)
                log.log(row)
            if state_path and (last or bool(counts[1]) or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
                checkpoint(step + 1)
            done = step + 1
            if bool(counts[1]):
                break
        if dist.enabled:  # every process skipped its own rows: report them all
            tally = combined_tally()
    finally:
        bar.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        if tally.counts and dist.main:
            print(tally.summary(), flush=True)
        log.log({"stage": stage, "event": "end", "steps_done": done, **tally.as_dict()})
        log.close()
    if stop["now"]:
        raise KeyboardInterrupt(f"stopped after step {done}; resume with --resume")
    return rows
