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
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from ..data.chat import IGNORE_INDEX
from ..data.robust import SkipTally
from ..device import autocast
from .distributed import Dist
from .grounding import grounding_loss, layer_input
from .metrics_log import MetricsLog
from .optim import lr_at, make_optimizer
from .resume import STATE_FILE, CtrlCGuard, Start, resume_step, rng_state, save_state


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
    # Grounding (grounding.py): batches that carry "ground" pairs also train one attention head to look at the
    # objects a question is about; the loss, times this weight, joins the auxiliary loss. 0 turns it off.
    ground_weight: float = 0.0
    ground_layer: int = -1  # which decoder layer's heads; -1: the middle one (n_layers // 2)
    ground_heads: tuple[int, ...] = (0,)  # heads of different kv groups read different values: more room


class LossModule(nn.Module):
    """model + batch -> (sum of token losses, number of labelled tokens, MoE aux loss). DDP wraps this."""

    def __init__(self, model: nn.Module, ground_weight: float = 0.0, ground_layer: int = -1,
                 ground_heads: tuple[int, ...] = (0,)):
        super().__init__()
        self.model = model
        self.ground_weight, self.ground_heads, self.ground_attn = ground_weight, tuple(ground_heads), None
        if ground_weight:
            layers = model.llm.layers
            self.ground_attn = layers[len(layers) // 2 if ground_layer < 0 else ground_layer].attn

    def forward(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        m = self.model
        kw = {k: batch[k] for k in ("doc_ids", "position_ids") if k in batch}
        pixels = batch.get("pixel_values")
        if "vision_feats" in batch:  # cached encoder features: only the projector runs
            kw["image_embeds"] = m.projector(batch["vision_feats"].to(m.projector_dtype))
            pixels = None
        # Right-padded or packed batches need no attention_mask: causal attention (per document when packed)
        # already keeps real tokens blind to what follows them, and SDPA stays on its fast kernels.
        ground = batch.get("ground") if self.ground_attn is not None else None
        with layer_input(self.ground_attn) if ground is not None else contextlib.nullcontext() as seen:
            out = m(batch["input_ids"], pixels, logits_to_keep=1, **kw)
        targets = batch["labels"][:, 1:]
        keep = targets != IGNORE_INDEX
        logits = m.llm.lm_head(out.hidden[:, :-1][keep]).float()
        loss_sum = F.cross_entropy(logits, targets[keep], reduction="sum")
        projector = getattr(m, "projector", None)
        if projector is not None and "image_embeds" not in kw and (pixels is None or not len(pixels)):
            # A text-only batch leaves the projector without a gradient, which DDP would wait for forever.
            slots = m.image_slot.parameters() if getattr(m, "image_slot", None) is not None else []
            loss_sum = loss_sum + sum(p.sum() for p in [*projector.parameters(), *slots] if p.requires_grad) * 0.0
        aux = out.aux_loss
        if ground is not None and len(ground):
            aux = aux + self.ground_weight * grounding_loss(self.ground_attn, seen, ground, batch.get("doc_ids"),
                                                            self.ground_heads)
        return loss_sum, keep.sum(), aux


def lm_loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of the next token where a label exists, plus the MoE auxiliary loss."""
    loss_sum, n, aux = LossModule(model)(batch)
    return loss_sum / n.clamp(min=1), aux


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


class Feed:
    """The batches from global sample `start` on, each with at least one label, the skipped rows tallied.

    An EpochLoader seeks to `start`; any other iterable is replayed and cycled. `position` counts samples
    taken (all processes), which is what a checkpoint records.
    """

    def __init__(self, batches: Any, start: int, global_batch: int, tally: SkipTally):
        self.position, self.global_batch, self.tally = start, global_batch, tally
        self.stream = self._stream(batches, start)

    def _stream(self, batches: Any, start: int) -> Iterator[dict[str, Any]]:
        if hasattr(batches, "batches"):
            yield from batches.batches(start)
            return
        skip = start // self.global_batch
        while True:
            for b in batches:
                if skip:
                    skip -= 1
                    continue
                yield b

    def next(self) -> dict[str, Any]:
        while True:  # a batch whose rows were all skipped is counted and replaced
            b = next(self.stream)
            self.position += self.global_batch
            self.tally.add(b)
            if "labels" in b and labelled_tokens([b]):
                return b


def labelled_tokens(batches: list[dict[str, Any]]) -> int:
    """Tokens with a next-token label, counted on the host (no device synchronisation)."""
    return sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in batches)


@dataclass
class Stepper:
    """One optimizer step over an accumulation window of micro-batches (the nanoGPT-like heart)."""

    model: nn.Module
    step_fn: nn.Module  # LossModule, DDP-wrapped when distributed
    opt: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    cfg: TrainConfig
    dist: Dist
    device: torch.device

    def __call__(self, micro: list[dict[str, Any]], global_tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Forward + backward of each micro-batch, clip, step; returns (loss sum, aux loss, grad norm)."""
        cfg, dist = self.cfg, self.dist
        loss_sum = aux_sum = torch.zeros((), device=self.device)
        for k, b in enumerate(micro):
            sync = k == len(micro) - 1 or not dist.enabled  # DDP reduces gradients on the last micro-batch only
            with (contextlib.nullcontext() if sync else self.step_fn.no_sync()), autocast(self.device, cfg.dtype):
                ls, _, aux = self.step_fn(b)
                total = ls * (dist.world / global_tokens.float()) + aux / cfg.accum
            (self.scaler.scale(total) if self.scaler else total).backward()
            loss_sum = loss_sum + ls.detach().float()
            aux_sum = aux_sum + aux.detach().float() / cfg.accum
        if self.scaler:
            self.scaler.unscale_(self.opt)
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        return loss_sum, aux_sum, gnorm


def loss_step_fn(model: nn.Module, device: torch.device, dist: Dist, cfg: TrainConfig | None = None) -> nn.Module:
    """The loss module, wrapped in DDP when several processes train."""
    step_fn: nn.Module = LossModule(model, *((cfg.ground_weight, cfg.ground_layer, cfg.ground_heads) if cfg else ()))
    if dist.enabled:
        moe = model.llm.cfg.n_experts > 0  # experts a batch did not route to get no gradient
        step_fn = nn.parallel.DistributedDataParallel(
            step_fn, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=moe)
    return step_fn


def combined_tally(tally: SkipTally, dist: Dist) -> SkipTally:
    """Every process's skipped rows, added up."""
    total = SkipTally()
    for st in dist.gather(tally.state()):
        total.merge(st)
    return total


def save_checkpoint(state_path: Path, model: nn.Module, opt: torch.optim.Optimizer,
                    scaler: torch.amp.GradScaler | None, meta: dict[str, Any], dist: Dist, tally: SkipTally,
                    export: Callable[[nn.Module], None] | None) -> None:
    """The resumable state (every process's RNG and skipped rows gathered), then the loadable run."""
    rngs = dist.gather(rng_state())
    skipped = combined_tally(tally, dist).state()
    if dist.main:
        save_state(state_path, model, opt, {**meta, "world": dist.world, "skipped": skipped, "rng": rngs}, scaler)
        if export:
            export(model)
    dist.barrier()


def train(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]], cfg: TrainConfig, *,
          device: torch.device, metrics_path: str | Path | None = None, stage: str = "train",
          desc: str | None = None, run_dir: str | Path | None = None, resume: bool = False,
          dist: Dist | None = None, export: Callable[[nn.Module], None] | None = None,
          prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None, log_to: str = "",
          tally: SkipTally | None = None, validate: Callable[[nn.Module], float] | None = None,
          eval_every: int = 0) -> list[dict[str, Any]]:
    """Run `cfg.steps` optimizer steps over `batches`; returns the logged rows (also appended to metrics_path).

    run_dir: where `resume.safetensors` is written every `cfg.save_every` steps, at the end and on Ctrl-C
    (`export(model)` then writes the loadable run). resume: continue from that file exactly.
    prepare: a hook on each batch once on the device (the feature cache fills in encoder features there).
    validate: the validation loss of the model (validation.py), every `eval_every` steps and at the end.
    """
    dist, tally = dist or Dist(), tally or SkipTally()
    model.to(device).train()
    if cfg.compile:
        for layer in model.llm.layers:
            layer.compile(dynamic=True)
    opt = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler(device.type) if cfg.dtype == "fp16" else None
    state_path = Path(run_dir) / STATE_FILE if run_dir else None
    start = (resume_step(state_path, model, opt, scaler, stage, cfg.batch_size, cfg.accum, dist, tally)
             if resume else Start())
    feed = Feed(batches, start.samples, cfg.batch_size * dist.world, tally)
    step_once = Stepper(model, loss_step_fn(model, device, dist, cfg), opt, scaler, cfg, dist, device)
    log = MetricsLog(metrics_path if dist.main else None, to=log_to if dist.main else "",
                     log_dir=run_dir, run_name=stage, config=asdict(cfg))
    meter = Meter(stage)
    bar = tqdm(range(start.step, cfg.steps), desc=desc or stage, dynamic_ncols=True, disable=not dist.main,
               initial=start.step, total=cfg.steps)
    done, stop = start.step, False
    with CtrlCGuard(enabled=state_path is not None, say=dist.main) as ctrl_c:
        try:
            for step in bar:
                host = [feed.next() for _ in range(cfg.accum)]
                local_tokens = meter.count(host)
                micro = [to_device(b, device) for b in host]
                if prepare:
                    micro = [prepare(b) for b in micro]
                counts = torch.tensor([local_tokens, int(ctrl_c.pressed)], dtype=torch.long, device=device)
                dist.all_sum(counts)  # global labelled tokens, and whether any process was interrupted
                for g in opt.param_groups:
                    g["lr"] = lr_at(step, cfg) * g.get("lr_scale", 1.0)
                loss_sum, aux_sum, gnorm = step_once(micro, counts[0])
                loss = loss_sum.item() / max(1, local_tokens)  # one synchronisation per step
                shown = {"loss": f"{meter.smooth(loss):.3f}"}
                last, stop = step == cfg.steps - 1, bool(counts[1])
                if step % cfg.log_every == 0 or last:
                    log.log(meter.row(step, loss, aux_sum.item(), opt.param_groups[0]["lr"], float(gnorm)))
                if validate and dist.main and (last or (eval_every and (step + 1) % eval_every == 0)):
                    meter.val = validate(model)
                    log.log({"stage": stage, "step": step, "val_loss": round(meter.val, 5)})
                if meter.val is not None:
                    shown["val"] = f"{meter.val:.3f}"
                bar.set_postfix(shown)
                if state_path and (last or stop or (cfg.save_every and (step + 1) % cfg.save_every == 0)):
                    meta = {"stage": stage, "step": step + 1, "samples": feed.position,
                            "elapsed_s": start.elapsed_s + meter.elapsed()}
                    save_checkpoint(state_path, model, opt, scaler, meta, dist, tally, export)
                done = step + 1
                if stop:
                    break
            if dist.enabled:  # every process skipped its own rows: report them all
                tally = combined_tally(tally, dist)
        finally:
            bar.close()
            if (tally.counts or tally.notes) and dist.main:
                print(tally.summary(), flush=True)
            log.log({"stage": stage, "event": "end", "steps_done": done, **tally.as_dict()})
            log.close()
    if ctrl_c.pressed:
        raise KeyboardInterrupt(f"stopped after step {done}; resume with --resume")
    return meter.rows


class Meter:
    """Throughput and the smoothed loss of a run, and the rows it logs."""

    def __init__(self, stage: str):
        self.stage, self.t0, self.seen, self.tokens, self.ema = stage, time.time(), 0, 0, None
        self.val: float | None = None  # the latest validation loss
        self.rows: list[dict[str, Any]] = []

    def count(self, host: list[dict[str, Any]]) -> int:
        """Count a step's host batches (no device synchronisation); returns their labelled tokens."""
        self.seen += sum(b.get("n_samples", b["input_ids"].shape[0]) for b in host)
        self.tokens += sum(int(b["attention_mask"].sum()) for b in host)
        return labelled_tokens(host)

    def smooth(self, loss: float) -> float:
        self.ema = loss if self.ema is None else 0.9 * self.ema + 0.1 * loss
        return self.ema

    def elapsed(self) -> float:
        return time.time() - self.t0

    def row(self, step: int, loss: float, aux: float, lr: float, gnorm: float) -> dict[str, Any]:
        el = self.elapsed()
        row = {"stage": self.stage, "step": step, "loss": round(loss, 5), "aux": round(aux, 5), "lr": lr,
               "grad_norm": round(gnorm, 4), "samples_per_s": round(self.seen / el, 2),
               "tokens_per_s": round(self.tokens / el, 1), "elapsed_s": round(el, 1)}
        self.rows.append(row)
        return row
