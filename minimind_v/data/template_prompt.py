"""Prompts in a tokenizer's own chat template, for tokenizers that do not speak this package's ChatML.

A model imported from an official release answers well only when it sees the prompt it was trained on:
  - MiniMind2-V: `<s>system\\n你是 MiniMind，是一个有用的人工智能助手。</s>\\n<s>user\\n...</s>\\n<s>assistant\\n`
    (a default system turn when there is none), images as 196 '@' characters, EOS `</s>`;
  - minimind-3v: ChatML plus an empty think block after the generation prompt, images as 64 `<|image_pad|>`.
Both official tokenizers carry that template (`chat_template` in tokenizer_config.json), and importing copies
the tokenizer into the run directory, so the template is the single source of truth: render it, then tokenize
the text. This reproduces the reference prompts token for token (checked against the compatibility vectors).
"""
from __future__ import annotations

from typing import Any

from ..config import IMAGE_MARKER


def render_prompt(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str,
                  system: str | None = None, **template_kwargs: Any) -> str:
    """The prompt text: `<image>` markers expanded, the template applied, the assistant's turn opened."""
    if not getattr(tok, "chat_template", None):
        raise ValueError("the tokenizer has no chat_template to build a prompt with")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("content"), str) and "role" in m for m in messages):
        raise ValueError("messages must be a non-empty list of {'role': ..., 'content': str} dicts")
    if messages[-1]["role"] != "user":
        raise ValueError(f"a prompt must end with a user message, not {messages[-1]['role']}")
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
        expanded.append({"role": m["role"], "content": content.replace(IMAGE_MARKER, image_token * tokens_per_image)})
    if system is not None and expanded[0]["role"] != "system":
        expanded.insert(0, {"role": "system", "content": system})
    return tok.apply_chat_template(expanded, tokenize=False, add_generation_prompt=True, **template_kwargs)


def encode_template_prompt(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str,
                           system: str | None = None, **template_kwargs: Any) -> list[int]:
    """Prompt ids through the tokenizer's own template (no extra BOS: the template writes its own)."""
    text = render_prompt(tok, messages, tokens_per_image=tokens_per_image, image_token=image_token,
                         system=system, **template_kwargs)
    return tok(text, add_special_tokens=False)["input_ids"]
