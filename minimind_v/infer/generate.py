"""Token generation shared by every front end: greedy or sampled, KV-cached, batched with left padding.

Left padding puts every prompt's last token in the same column, so one decoding step serves the whole batch;
the attention mask keeps pad columns invisible and positions count real tokens only, which makes each row's
result identical to generating it alone. Two more things keep that promise when sampling: the repetition
penalty only counts a row's real tokens (never its padding), and a seeded run gives every row its own random
generator seeded alike, so row i draws exactly the numbers it would draw in a batch of one. (With weights stored
in half precision a one-row step computes in bf16 and a batched one in float32, model/half.py: rows then agree
with their lone runs within rounding, and a near-tie between two tokens can go either way.)
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import Tensor

from ..model.half import prepare_int8


@dataclass
class GenerationConfig:
    max_new_tokens: int = 64
    temperature: float = 0.0  # 0 -> greedy
    top_p: float = 1.0  # nucleus: keep the most likely tokens until their mass reaches top_p (0 keeps the top one)
    top_k: int = 0  # 0 -> no top-k cut
    repetition_penalty: float = 1.0  # > 1 discourages any token already in the prompt or the answer
    stop_ids: list[int] = field(default_factory=list)
    seed: int | None = None

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise ValueError naming the first setting out of range."""
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if not self.temperature >= 0:  # also catches NaN
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature!r}")
        if not 0 <= self.top_p <= 1:
            raise ValueError(f"top_p must be in [0, 1], got {self.top_p!r}")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0:
            raise ValueError(f"top_k must be an integer >= 0 (0 disables it), got {self.top_k!r}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be > 0 (1 disables it), got {self.repetition_penalty!r}")
        if self.seed is not None and (isinstance(self.seed, bool) or not isinstance(self.seed, int)):
            raise ValueError(f"seed must be an integer or None, got {self.seed!r}")


def penalize_repeats(logits: Tensor, seen: Tensor, penalty: float) -> Tensor:
    """CTRL-style penalty: a seen token's logit moves towards 'less likely' (divided if positive, multiplied
    if negative), so the penalty never turns an unlikely token into a likely one. seen: bool [B, V]."""
    pen = torch.where(logits > 0, logits / penalty, logits * penalty)
    return torch.where(seen, pen, logits)


def filter_logits(logits: Tensor, top_k: int = 0, top_p: float = 1.0) -> Tensor:
    """Set to -inf every logit outside the top-k and outside the top-p nucleus. The most likely token always
    survives, so at least one token can be drawn."""
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = sorted_logits.softmax(-1)
        before = probs.cumsum(-1) - probs  # mass of the strictly more likely tokens
        drop = before >= top_p  # keep the smallest prefix whose mass reaches top_p
        drop[:, 0] = False
        logits = logits.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return logits


def sample_next(logits: Tensor, gen: GenerationConfig, seen: Tensor | None = None,
                generators: list[torch.Generator] | None = None) -> Tensor:
    """logits [B, V] -> next ids [B]. `seen` (bool [B, V]) marks tokens for the repetition penalty;
    `generators` (one per row) make sampling reproducible row by row; without them the global RNG is used."""
    logits = logits.float()
    if gen.repetition_penalty != 1.0 and seen is not None:
        logits = penalize_repeats(logits, seen, gen.repetition_penalty)
    if gen.temperature <= 0:
        return logits.argmax(-1)
    scaled = logits / gen.temperature
    # A temperature so small that logits / temperature overflows (1e-40 is below float32's normal range) is
    # greedy: such a row becomes one-hot on its best token, which still draws from the row's generator, so the
    # random streams of the other rows stay as they would be.
    overflow = ~torch.isfinite(scaled).all(-1, keepdim=True)
    if bool(overflow.any()):
        one_hot = torch.full_like(scaled, float("-inf")).scatter(1, logits.argmax(-1, keepdim=True), 0.0)
        scaled = torch.where(overflow, one_hot, scaled)
    probs = filter_logits(scaled, gen.top_k, gen.top_p).softmax(-1)
    if generators is None:
        return torch.multinomial(probs, 1).squeeze(-1)
    return torch.cat([torch.multinomial(probs[i:i + 1], 1, generator=g)[:, 0] for i, g in enumerate(generators)])


def left_pad(prompts: list[list[int]], pad_id: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """Prompts of different lengths -> ids [B, T] right-aligned, and the mask of real tokens."""
    longest = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), longest), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, longest - len(p):] = torch.tensor(p, device=device)
        mask[i, longest - len(p):] = 1
    return ids, mask


def check_fits(prompt_len: int, max_new_tokens: int, context: int) -> None:
    """The KV cache holds prompt + new tokens; refuse up front what the model's positions cannot hold."""
    if prompt_len + max_new_tokens > context:
        raise ValueError(f"prompt of {prompt_len} tokens + {max_new_tokens} new tokens exceeds the model's "
                         f"context of {context} tokens; shorten the prompt or ask for fewer new tokens")


@torch.inference_mode()
def generate_stream(model: torch.nn.Module, prompts: list[list[int]], pixel_values: Tensor | None,
                    gen: GenerationConfig, pad_id: int = 0) -> Iterator[Tensor]:
    """Yield the next token of every row, step by step ([B] ids; finished rows repeat pad_id).

    Stops after max_new_tokens steps or once every row has produced one of gen.stop_ids.
    """
    gen.check()
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, pad_id, device)
    B, T = ids.shape
    check_fits(T, gen.max_new_tokens, model.cfg.llm.max_seq_len)
    cache = model.llm.new_cache(B, T + gen.max_new_tokens)
    generators = None
    if gen.seed is not None:
        generators = [torch.Generator(device=device).manual_seed(gen.seed) for _ in range(B)]
    seen = None
    if gen.repetition_penalty != 1.0:  # counts, not scatter of booleans: repeated ids must not collide
        vocab = model.cfg.llm.vocab_size
        seen = torch.zeros(B, vocab, dtype=torch.long, device=device).scatter_add_(1, ids, mask) > 0
    has_pad = bool((mask == 0).any())
    out = model(ids, pixel_values, attention_mask=mask if has_pad else None, cache=cache, logits_to_keep=1)
    done = torch.zeros(B, dtype=torch.bool, device=device)
    stops = torch.tensor(gen.stop_ids or [-1], device=device)
    compiled = getattr(model, "decode_step", None)  # one token per row: compiled if compile_decoding ran
    decode = functools.partial(compiled, model) if compiled is not None else model
    for step in range(gen.max_new_tokens):
        nxt = sample_next(out.logits[:, -1], gen, seen, generators)
        nxt = torch.where(done, torch.full_like(nxt, pad_id), nxt)
        yield nxt
        done = done | torch.isin(nxt, stops)
        if bool(done.all()) or step == gen.max_new_tokens - 1:
            return
        if seen is not None:
            seen[torch.arange(B, device=device), nxt] |= ~done
        mask = torch.cat([mask, torch.ones(B, 1, dtype=mask.dtype, device=device)], 1)
        out = decode(nxt[:, None], None, attention_mask=mask if has_pad else None, cache=cache, logits_to_keep=1)


def compile_decoding(model: torch.nn.Module) -> None:
    """torch.compile the one-token decoding step; the prompt's forward stays eager.

    On a CPU a decoding step of a small model is hundreds of tiny ops, and PyTorch's per-op overhead costs as
    much as the matrix-vector products themselves; compiled, they become a few fused kernels (measured about
    1.4x faster at batch 1, README). The first answer pays for the compilation (about a minute on two cores),
    so this suits long-lived processes: serve, web, chat.
    """
    # The class's forward, not this instance's bound one: a deep copy of the model then decodes with its own
    # weights (the step is called with the model as its first argument).
    prepare_int8(model)
    model.decode_step = torch.compile(type(model).forward, dynamic=True)


def generate(model: torch.nn.Module, prompts: list[list[int]], pixel_values: Tensor | None,
             gen: GenerationConfig, pad_id: int = 0) -> list[list[int]]:
    """New tokens per prompt, without the stop token."""
    rows: list[list[int]] = [[] for _ in prompts]
    finished = [False] * len(prompts)
    stops = set(gen.stop_ids)
    for step in generate_stream(model, prompts, pixel_values, gen, pad_id):
        for i, t in enumerate(step.tolist()):
            if finished[i]:
                continue
            if t in stops:
                finished[i] = True
            else:
                rows[i].append(t)
    return rows
