"""Prompts and training samples in a tokenizer's own chat template, for tokenizers that do not speak this package's
ChatML.

A model imported from an official release answers well only when it sees the prompt it was trained on:
  - MiniMind2-V: `<s>system\\n你是 MiniMind，是一个有用的人工智能助手。</s>\\n<s>user\\n...</s>\\n<s>assistant\\n`
    (a default system turn when there is none), images as 196 '@' characters, EOS `</s>`;
  - minimind-3v: ChatML plus an empty think block after the generation prompt, images as 64 `<|image_pad|>`.
Both official tokenizers carry that template (`chat_template` in tokenizer_config.json), and importing copies
the tokenizer into the run directory, so the template is the single source of truth: render it, then tokenize
the text. This reproduces the reference prompts token for token (checked against the compatibility vectors).

Training an imported model goes through the same template, so it learns the format it is prompted with (the empty
think block included). The labels are found by rendering: the assistant's k-th answer is what the rendering of
the first k+1 messages adds to the prompt of the first k (the template's generation prompt), up to its end token.
A template that renders earlier turns differently once later ones follow cannot be split this way; it is refused.
"""
from __future__ import annotations

from typing import Any

from ..config import IMAGE_MARKER

IGNORE_INDEX = -100


def _expanded(tok: Any, messages: list[dict], tokens_per_image: int, image_token: str,
              system: str | None) -> list[dict]:
    """The messages checked, with `<image>` markers expanded into placeholder runs (and the default system)."""
    if not getattr(tok, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template to build a prompt with")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': str} dicts")
    if not isinstance(tokens_per_image, int) or tokens_per_image < 1:
        raise ValueError(f"tokens_per_image must be a positive integer, got {tokens_per_image!r}")
    expanded = []
    for m in messages:
        content = m["content"]
        if image_token in content:  # a literal placeholder would shift every image after it
            raise ValueError(f"message content contains the image placeholder {image_token!r}; "
                             f"write {IMAGE_MARKER} for an image")
        if IMAGE_MARKER in content and m["role"] != "user":
            raise ValueError(f"{IMAGE_MARKER} found in a {m['role']} message; images belong in user messages")
        expanded.append({**m, "content": content.replace(IMAGE_MARKER, image_token * tokens_per_image)})
    if system is not None and expanded[0]["role"] != "system":
        expanded.insert(0, {"role": "system", "content": system})
    return expanded


def render_prompt(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str,
                  system: str | None = None, **template_kwargs: Any) -> str:
    """The prompt text: `<image>` markers expanded, the template applied, the assistant's turn opened."""
    last = messages[-1] if isinstance(messages, list) and messages else None
    if isinstance(last, dict) and last.get("role") != "user":
        raise ValueError(f"a prompt must end with a user message, not {last.get('role')}")
    expanded = _expanded(tok, messages, tokens_per_image, image_token, system)
    return tok.apply_chat_template(expanded, tokenize=False, add_generation_prompt=True, **template_kwargs)


def encode_template_conversation(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str,
                                 system: str | None = None, **template_kwargs: Any) -> tuple[list[int], list[int]]:
    """A training conversation (ending with the assistant) through the tokenizer's own template: (ids, labels),
    labels on each answer and its end token only."""
    if not isinstance(messages, list) or not messages or not isinstance(messages[-1], dict) \
            or messages[-1].get("role") != "assistant":
        raise ValueError("a training sample must end with the assistant's answer")
    expanded = _expanded(tok, messages, tokens_per_image, image_token, system)
    full = tok.apply_chat_template(expanded, tokenize=False, **template_kwargs)
    spans = []
    for k, m in enumerate(expanded):
        if m["role"] != "assistant":
            continue
        prompt = tok.apply_chat_template(expanded[:k], tokenize=False, add_generation_prompt=True, **template_kwargs)
        upto = tok.apply_chat_template(expanded[:k + 1], tokenize=False, **template_kwargs)
        answer = m["content"].split("</think>")[-1].strip()
        if not (full.startswith(upto) and upto.startswith(prompt) and answer in upto[len(prompt):]):
            raise ValueError("the tokenizer's chat template renders earlier turns differently once later turns "
                             "follow, so the assistant's answers cannot be located; train with single-turn rows")
        spans.append((len(prompt), len(upto.rstrip())))  # the answer and its end token; not the newline after it
    enc = tok(full, add_special_tokens=False, return_offsets_mapping=True)
    ids = enc["input_ids"]
    labels = [i if any(a <= start < b for a, b in spans) else IGNORE_INDEX
              for i, (start, _) in zip(ids, enc["offset_mapping"])]
    image_id = tok.convert_tokens_to_ids(image_token)
    n_images = sum(m["content"].count(IMAGE_MARKER) for m in messages)
    if sum(i == image_id for i in ids) != n_images * tokens_per_image:
        raise ValueError(f"{image_token!r} x {tokens_per_image} did not tokenise into one id per copy; the image "
                         f"placeholder must be a single token of this tokenizer")
    return ids, labels


def encode_template_prompt(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str,
                           system: str | None = None, **template_kwargs: Any) -> list[int]:
    """Prompt ids through the tokenizer's own template (no extra BOS: the template writes its own)."""
    text = render_prompt(tok, messages, tokens_per_image=tokens_per_image, image_token=image_token,
                         system=system, **template_kwargs)
    return tok(text, add_special_tokens=False)["input_ids"]
