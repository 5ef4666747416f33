"""LoRA: fine-tune a few million numbers instead of the whole model, and keep them in a file of a few MB.

A chosen linear layer y = W x gets a trainable low-rank detour: y = W x + (alpha / r) * B (A x), with A [r, in]
drawn at random and B [out, r] zero, so training starts from exactly the base model. Only A and B train; W stays
frozen. An adapter is saved alone (`adapter.safetensors` + `adapter_config.json`, which names the base model by a
hash of its weights), applied to that base at load time, or folded into the weights (`merge`: W += (alpha / r) B A),
after which the model is an ordinary one again.

Targets name the LLM's layers (q, k, v, o: attention; gate, up, down: the feed-forward, every expert's too) and
`projector` (its linear layers). A MoE router is never a target.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from .moe import SwiGLU

ADAPTER_FILE, ADAPTER_CONFIG = "adapter.safetensors", "adapter_config.json"
LLM_TARGETS = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "o_proj", "gate": "gate", "up": "up", "down": "down"}
TARGETS = (*LLM_TARGETS, "projector")


@dataclass
class LoraConfig:
    rank: int = 8
    alpha: float = 16.0
    targets: tuple[str, ...] = ("q", "k", "v", "o", "gate", "up", "down")

    def __post_init__(self) -> None:
        self.targets = tuple(self.targets)
        unknown = [t for t in self.targets if t not in TARGETS]
        if unknown or not self.targets:
            raise ValueError(f"unknown LoRA targets {unknown or '(none)'}; choose from {', '.join(TARGETS)}")
        if self.rank < 1:
            raise ValueError(f"the LoRA rank must be >= 1, got {self.rank}")


class LoRALinear(nn.Module):
    """A frozen nn.Linear plus its trainable low-rank detour."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        if rank > min(base.in_features, base.out_features):
            raise ValueError(f"LoRA rank {rank} is larger than the layer ({base.out_features} x {base.in_features}); "
                             f"use a rank of at most {min(base.in_features, base.out_features)}")
        self.base, self.scale = base, alpha / rank
        base.weight.requires_grad_(False)
        if base.bias is not None:
            base.bias.requires_grad_(False)
        dev = base.weight.device
        self.lora_a = nn.Parameter(torch.empty(rank, base.in_features, device=dev))
        self.lora_b = nn.Parameter(torch.zeros(base.out_features, rank, device=dev))
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))  # as nn.Linear draws its weights

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        detour = F.linear(F.linear(x.to(self.lora_a.dtype), self.lora_a), self.lora_b) * self.scale
        return self.base(x) + detour.to(x.dtype)

    def merged(self) -> nn.Linear:
        """The plain layer with the detour folded into its weight."""
        delta = (self.lora_b.float() @ self.lora_a.float()) * self.scale
        with torch.no_grad():
            self.base.weight += delta.to(self.base.weight.dtype)
        return self.base


def _targets(model: nn.Module, cfg: LoraConfig) -> list[tuple[nn.Module, str]]:
    """(parent module, attribute name) of every linear layer the config targets."""
    wanted = {LLM_TARGETS[t] for t in cfg.targets if t in LLM_TARGETS}
    projector = set(getattr(model, "projector", nn.Module()).modules()) if "projector" in cfg.targets else set()
    found = []
    for _, parent in model.named_modules():
        for name, child in parent.named_children():
            if not isinstance(child, nn.Linear):
                continue
            in_projector = parent in projector
            is_ffn = name in ("gate", "up", "down") and isinstance(parent, SwiGLU)  # a MoE router is named gate too
            is_attn = name in ("q_proj", "k_proj", "v_proj", "o_proj")
            if in_projector or (name in wanted and (is_ffn or is_attn)):
                found.append((parent, name))
    return found


def apply_lora(model: nn.Module, cfg: LoraConfig) -> int:
    """Freeze the model, wrap the targeted layers with LoRA detours; returns the number of trainable numbers."""
    for p in model.parameters():
        p.requires_grad_(False)
    layers = _targets(model, cfg)
    if not layers:
        raise ValueError(f"no layer of this model matches the LoRA targets {cfg.targets}")
    for parent, name in layers:
        setattr(parent, name, LoRALinear(getattr(parent, name), cfg.rank, cfg.alpha))
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA detour into its layer's weight; returns how many layers were merged."""
    n = 0
    for _, parent in list(model.named_modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, LoRALinear):
                setattr(parent, name, child.merged())
                n += 1
    return n


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if ".lora_a" in k or ".lora_b" in k}


def base_hash(model: nn.Module) -> str:
    """A short hash of the base weights (the LoRA detours left out): which model an adapter belongs to."""
    h = hashlib.sha256()
    for k, v in sorted(model.state_dict().items()):
        if ".lora_" in k:
            continue
        h.update(k.replace(".base.", ".").encode())
        h.update(v.detach().float().flatten()[:4096].cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def save_adapter(model: nn.Module, cfg: LoraConfig, out: str | Path, base: str) -> Path:
    """adapter.safetensors + adapter_config.json (rank, alpha, targets, the base's hash) in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state_dict(model), str(out / ADAPTER_FILE))
    (out / ADAPTER_CONFIG).write_text(json.dumps({**asdict(cfg), "base_hash": base}, indent=1))
    return out


def load_adapter(model: nn.Module, path: str | Path) -> LoraConfig:
    """Wrap `model` with the adapter saved in `path` and load its weights; the base must be the one it was
    trained on."""
    path = Path(path)
    if not (path / ADAPTER_CONFIG).is_file():
        raise FileNotFoundError(f"{path} has no {ADAPTER_CONFIG}: not a LoRA adapter folder")
    meta = json.loads((path / ADAPTER_CONFIG).read_text())
    want, have = meta.pop("base_hash", None), base_hash(model)
    if want and want != have:
        raise ValueError(f"the adapter in {path} was trained on another base model (base hash {want}, this model "
                         f"{have}); load it onto the run it was trained from")
    cfg = LoraConfig(**meta)
    apply_lora(model, cfg)
    weights = load_file(str(path / ADAPTER_FILE))
    expected = set(adapter_state_dict(model))
    if set(weights) != expected:
        raise ValueError(f"{path}/{ADAPTER_FILE} does not fit its config: missing "
                         f"{sorted(expected - set(weights))[:3]}, unexpected {sorted(set(weights) - expected)[:3]}")
    model.load_state_dict(weights, strict=False)
    return cfg
