"""Training state in one file, written atomically: a run killed at any moment resumes exactly.

`resume.safetensors` holds every tensor (model weights except a pretrained encoder, AdamW moments, RNG states)
and, in its header, JSON for the rest (optimizer hyper-parameters, step, data position, GradScaler, Python and
numpy RNG, skip counts). It is written to a temporary name and renamed over the old one, so a crash mid-write
leaves the previous checkpoint intact. Nothing is pickled: loading a checkpoint cannot run code.

The trainer's two resume-side pieces live here too: `resume_step` (load the file, say where to continue) and
`CtrlCGuard` (a first Ctrl-C asks for a checkpoint after the current step).
"""
from __future__ import annotations

import json
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn
from safetensors import safe_open
from safetensors.torch import save_file

from ..data.robust import SkipTally
from .distributed import Dist

STATE_FILE = "resume.safetensors"


def model_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state without a frozen pretrained encoder, each shared tensor (a tied head) stored once."""
    skip_vision = getattr(getattr(model, "cfg", None), "vision", None) is not None \
        and not model.cfg.vision.trained_here and model.cfg.vision.freeze
    out, seen = {}, set()
    for k, v in model.state_dict().items():
        if skip_vision and k.startswith("vision."):
            continue
        if v.data_ptr() in seen:
            continue
        seen.add(v.data_ptr())
        out[k] = v
    return out


def rng_state() -> dict[str, Any]:
    st = {"python": _jsonable(random.getstate()), "torch": torch.get_rng_state().tolist()}
    np_state = np.random.get_state()
    st["numpy"] = [np_state[0], np_state[1].tolist(), *np_state[2:]]
    if torch.cuda.is_available():
        st["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    random.setstate(_tupled(st["python"]))
    torch.set_rng_state(torch.tensor(st["torch"], dtype=torch.uint8))
    n = st["numpy"]
    np.random.set_state((n[0], np.array(n[1], dtype=np.uint32), *n[2:]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in st["cuda"]])


def save_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer, meta: dict[str, Any],
               scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write model + optimizer + `meta` (step, position, RNG, ...) to `path` atomically."""
    path = Path(path)
    tensors = {f"model.{k}": v.detach().contiguous().cpu() for k, v in model_tensors(model).items()}
    osd = opt.state_dict()
    extra_state: dict[str, dict[str, Any]] = {}
    for pid, st in osd["state"].items():
        for key, val in st.items():
            if torch.is_tensor(val):
                tensors[f"optim.{pid}.{key}"] = val.detach().contiguous().cpu()
            else:
                extra_state.setdefault(str(pid), {})[key] = val
    header = {"meta": meta, "param_groups": osd["param_groups"], "optim_extra": extra_state,
              "scaler": scaler.state_dict() if scaler is not None else None}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"state": json.dumps(header)})
    os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one, never half
    return path


def load_state(path: str | Path, model: nn.Module, opt: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler | None = None) -> dict[str, Any]:
    """Restore model and optimizer in place; returns the meta dict (the caller restores RNG and position)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint to resume from at {str(path)!r}")
    model_sd, optim_state = {}, {}
    with safe_open(str(path), framework="pt") as f:
        header = json.loads(f.metadata()["state"])
        for key in f.keys():
            kind, rest = key.split(".", 1)
            if kind == "model":
                model_sd[rest] = f.get_tensor(key)
            else:
                pid, name = rest.split(".", 1)
                optim_state.setdefault(int(pid), {})[name] = f.get_tensor(key)
    expected = model_tensors(model)
    missing = sorted(set(expected) - set(model_sd))
    unexpected = sorted(set(model_sd) - set(model.state_dict()))
    if missing or unexpected:
        raise ValueError(f"checkpoint {str(path)!r} does not fit this model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]} (was it written by another configuration?)")
    model.load_state_dict(model_sd, strict=False)
    for pid, extra in header["optim_extra"].items():
        optim_state.setdefault(int(pid), {}).update(extra)
    try:
        opt.load_state_dict({"state": optim_state, "param_groups": header["param_groups"]})
    except ValueError as e:
        raise ValueError(f"checkpoint {str(path)!r}: optimizer state does not fit ({e}); resume with the same "
                         "freeze strategy and learning-rate groups") from None
    if scaler is not None and header.get("scaler"):
        scaler.load_state_dict(header["scaler"])
    return header["meta"]


def _jsonable(x: Any) -> Any:
    return [_jsonable(v) for v in x] if isinstance(x, (tuple, list)) else x


def _tupled(x: Any) -> Any:
    return tuple(_tupled(v) for v in x) if isinstance(x, list) else x


@dataclass
class Start:
    """Where a run starts: optimizer step, samples already seen (all processes), seconds already spent."""

    step: int = 0
    samples: int = 0
    elapsed_s: float = 0.0


def resume_step(state_path: Path | None, model: nn.Module, opt: torch.optim.Optimizer,
                scaler: torch.amp.GradScaler | None, stage: str, batch_size: int, accum: int, dist: Dist,
                tally: SkipTally) -> Start:
    """Load `resume.safetensors` into model, optimizer, scaler, RNG and tally; where to continue from.

    `batch_size` is per micro-batch and process, `accum` micro-batches per optimizer step."""
    if state_path is None:
        raise ValueError("resume needs the run directory that holds resume.safetensors")
    meta = load_state(state_path, model, opt, scaler)
    if meta["stage"] != stage:
        raise ValueError(f"{state_path} belongs to stage {meta['stage']!r}, not {stage!r}")
    global_batch = batch_size * dist.world
    # The data position is kept in samples, so a different number of processes resumes at the same place.
    start = Start(meta["step"], meta["samples"] // global_batch * global_batch, meta.get("elapsed_s", 0.0))
    if meta["world"] != dist.world:  # another process count: the same share of the data, so the same lr
        start.step = start.samples // (global_batch * accum)
        if dist.main:
            print(f"resuming {meta['world']}-process step {meta['step']} as step {start.step} on "
                  f"{dist.world} processes", flush=True)
    if dist.main:  # the tally of every process was combined into the checkpoint: restore it once
        tally.merge(meta["skipped"])
    set_rng_state(meta["rng"][min(dist.rank, len(meta["rng"]) - 1)])
    return start


class CtrlCGuard:
    """Turns the first Ctrl-C into a request to stop after the current step (and save); a second one quits.

    Only installed where it can be: in the main thread, and when there is a run directory to save into.
    """

    def __init__(self, enabled: bool, say: bool):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.say, self.pressed, self.old = say, False, None

    def __enter__(self) -> "CtrlCGuard":
        if self.enabled:
            self.old = signal.signal(signal.SIGINT, self._on_sigint)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.enabled:
            signal.signal(signal.SIGINT, self.old)

    def _on_sigint(self, signum: int, frame: Any) -> None:
        if self.pressed:
            raise KeyboardInterrupt  # a second Ctrl-C: give up on saving
        self.pressed = True
        if self.say:
            print("\ninterrupted: saving a checkpoint after this step (Ctrl-C again to quit at once)", flush=True)
