"""Token generation shared by every front end: greedy or sampled, KV-cached, batched with left padding.

Left padding puts every prompt's last token in the same column, so one decoding step serves the whole batch;
the attention mask keeps pad columns invisible and positions count real tokens only, which makes each row's
result identical to generating it alone.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    stop_ids: list[int] = field(default_factory=list)
    seed: int | None = None


def sample_next(logits: Tensor, gen: GenerationConfig, history: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
    """logits [B, V] -> next ids [B]."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0 and history is not None and history.numel():
        seen = torch.gather(logits, 1, history)
        seen = torch.where(seen > 0, seen / gen.repetition_penalty, seen * gen.repetition_penalty)
        logits = logits.scatter(1, history, seen)
    if gen.temperature <= 0:
        return logits.argmax(-1)
    logits = logits / gen.temperature
    if gen.top_k > 0:
        kth = torch.topk(logits, min(gen.top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if gen.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) > gen.top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, device=device)
        mask[i, longest - len(p):] = 1
    return ids, mask


@torch.inference_mode()
def generate_stream(model: torch.nn.Module, prompts: list[list[int]], pixel_values: Tensor | None,
                    gen: GenerationConfig, pad_id: int = 0) -> Iterator[Tensor]:
    """Yield the next token of every row, step by step ([B] ids; finished rows repeat pad_id)."""
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    B, T = ids.shape
    max_len = getattr(model, "cfg").llm.max_seq_len
    if T + gen.max_new_tokens > max_len:
        raise ValueError(f"prompt of {T} tokens + {gen.max_new_tokens} new tokens exceeds the model's "
                         f"context of {max_len}")
    cache = model.llm.new_cache(B, T + gen.max_new_tokens)
    generator = None
    if gen.seed is not None:
        generator = torch.Generator(device=device).manual_seed(gen.seed)
    has_pad = bool((mask == 0).any())
    out = model(ids, pixel_values, attention_mask=mask if has_pad else None, cache=cache, logits_to_keep=1)
    history = ids
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = torch.tensor(gen.stop_ids or [-1], device=device)
    for _ in range(gen.max_new_tokens):
        nxt = sample_next(out.logits[:, -1], gen, history, generator)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        yield nxt
        done = done | torch.isin(nxt, stops)
        if bool(done.all()):
            return
        history = torch.cat([history, nxt[:, None]], 1)
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], 1)
        out = model(nxt[:, None], None, attention_mask=mask if has_pad else None, cache=cache, logits_to_keep=1)


def generate(model: torch.nn.Module, prompts: list[list[int]], pixel_values: Tensor | None,
             gen: GenerationConfig, pad_id: int = 0) -> list[list[int]]:
    """New tokens per prompt, without the stop token."""
    rows: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    for step in generate_stream(model, prompts, pixel_values, gen, pad_id):
        for i, t in enumerate(step.tolist()):
            if finished[i]:
                continue
            if t in gen.stop_ids:
                finished[i] = True
            else:
                rows[i].append(t)
    return rows
