"""Turn a conversation into token ids and assistant-only labels, in the tokenizer's ChatML format.

Each message becomes `<|im_start|>{role}\\n{content}<|im_end|>\\n`. Every `<image>` marker in a user message
becomes `tokens_per_image` copies of the image token; the model later overwrites those positions with the
projected image features. The loss only looks at what the assistant says: its content and the `<|im_end|>`
that closes it (so the model learns to stop). Everything else gets label -100.

The ids are built piece by piece (header + content + end) so each label lines up with its token exactly.
This gives the same ids as tokenising the whole rendered chat template at once, because special tokens are
cut out of the text before the byte-level pre-tokenizer runs: no BPE merge can cross a piece boundary.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from ..config import IMAGE_MARKER, IMAGE_TOKEN
from .tokenizer import CHAT_TEMPLATE
from .tools import TOOL, as_text_turns, next_roles, parse_tools

IGNORE_INDEX = -100  # what torch's cross-entropy skips
ROLES = ("system", "user", "assistant", TOOL)
BOS = "<|im_start|>"
EOS = "<|im_end|>"


class SampleTooLong(ValueError):
    """A conversation encodes to more tokens than max_len. Raised instead of truncating, which could cut
    through an image's placeholder run or drop the answer entirely; the caller decides to skip the sample."""

    def __init__(self, length: int, max_len: int):
        super().__init__(f"conversation is {length} tokens long, more than max_len={max_len}")
        self.length = length
        self.max_len = max_len


def expand_images(text: str, image_token: str, tokens_per_image: int) -> str:
    """Replace every `<image>` marker with `tokens_per_image` copies of `image_token`."""
    _check_tokens_per_image(tokens_per_image)
    return text.replace(IMAGE_MARKER, image_token * tokens_per_image)


def count_markers(text: str) -> int:
    """How many images a text refers to."""
    return text.count(IMAGE_MARKER)


def encode_conversation(tok: Any, conversations: list[dict], *, tokens_per_image: int, image_token: str = IMAGE_TOKEN,
                        max_len: int | None = None, system: str | None = None,
                        tools: Any = None) -> tuple[list[int], list[int]]:
    """Encode a training conversation ending with the assistant's answer.

    `system` is a default system prompt, used only when the conversation does not start with its own. Tool calls
    and tool turns (tools.py) are learnt as the assistant's words and read as context.
    Returns (input_ids, labels) of equal length; labels are -100 except on assistant content + `<|im_end|>`.
    """
    _check_tokens_per_image(tokens_per_image)
    messages = _with_system(conversations, system)
    _check_messages(messages, last_role="assistant")
    if _foreign_template(tok):
        # An imported official tokenizer: train in its own template, the format it is prompted with.
        from .template_prompt import encode_template_conversation

        kw = {"tools": parse_tools(tools)} if tools else {}
        ids, labels = encode_template_conversation(tok, messages, tokens_per_image=tokens_per_image,
                                                   image_token=image_token, **kw)
        if max_len is not None and len(ids) > max_len:
            raise SampleTooLong(len(ids), max_len)
        return ids, labels
    pieces = _pieces(tok, image_token)
    messages = as_text_turns(messages, tools)
    ids: list[int] = []
    labels: list[int] = []
    for m in messages:
        role, content = m["role"], m["content"]
        header = pieces.headers[role]
        body = pieces.encode_content(content, tokens_per_image)
        ids += header + body + pieces.end
        if role == "assistant":
            # Learn the answer and the <|im_end|> after it; not the header, nor the newline after <|im_end|>.
            labels += [IGNORE_INDEX] * len(header) + body + pieces.end[:1]
            labels += [IGNORE_INDEX] * (len(pieces.end) - 1)
        else:
            labels += [IGNORE_INDEX] * (len(header) + len(body) + len(pieces.end))
    if max_len is not None and len(ids) > max_len:
        raise SampleTooLong(len(ids), max_len)
    return ids, labels


def encode_prompt(tok: Any, messages: list[dict], *, tokens_per_image: int, image_token: str = IMAGE_TOKEN,
                  system: str | None = None) -> list[int]:
    """Encode a conversation ending with a user turn, followed by the `<|im_start|>assistant\\n` prompt."""
    if _foreign_template(tok):
        # An imported official tokenizer: build the prompt with its own template, as that release was trained.
        from .template_prompt import encode_template_prompt

        return encode_template_prompt(tok, messages, tokens_per_image=tokens_per_image, image_token=image_token,
                                      system=system)
    _check_tokens_per_image(tokens_per_image)
    messages = _with_system(messages, system)
    _check_messages(messages, last_role="user")
    pieces = _pieces(tok, image_token)
    ids: list[int] = []
    for m in messages:
        ids += pieces.headers[m["role"]] + pieces.encode_content(m["content"], tokens_per_image) + pieces.end
    return ids + pieces.headers["assistant"]


# ---------------------------------------------------------------------------------------------------------
# The fixed pieces, encoded once per tokenizer: this runs per sample inside a DataLoader.


@dataclass
class _Pieces:
    backend: object  # the `tokenizers.Tokenizer` under the transformers wrapper: no Python overhead per call
    headers: dict[str, list[int]]  # role -> ids of "<|im_start|>{role}\n"
    end: list[int]  # ids of "<|im_end|>\n"; end[0] is <|im_end|>
    image_token: str
    image_id: int | None  # set when the image token is one atomic token: then ids are spliced in directly
    reserved: tuple[str, ...]  # special-token strings that must not appear literally in a message

    def encode_content(self, content: str, tokens_per_image: int) -> list[int]:
        for s in self.reserved:
            if s in content:
                hint = f"; write {IMAGE_MARKER} for an image" if s == self.image_token else ""
                raise ValueError(f"message content contains the reserved token {s!r}{hint}")
        if self.image_id is None:  # e.g. an image token that is plain text: tokenise the expanded string
            return self._encode(content.replace(IMAGE_MARKER, self.image_token * tokens_per_image))
        chunks = content.split(IMAGE_MARKER)
        ids = self._encode(chunks[0])
        for chunk in chunks[1:]:
            ids += [self.image_id] * tokens_per_image
            ids += self._encode(chunk)
        return ids

    def _encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids if text else []


_CACHE: "weakref.WeakKeyDictionary[object, dict[str, _Pieces]]" = weakref.WeakKeyDictionary()


def _foreign_template(tok: Any) -> bool:
    """Whether the tokenizer carries a chat template other than this package's ChatML (an official release's)."""
    return getattr(tok, "chat_template", None) not in (None, CHAT_TEMPLATE)


def _pieces(tok, image_token: str) -> _Pieces:
    per_tok = _CACHE.setdefault(tok, {})
    if image_token not in per_tok:
        per_tok[image_token] = _build_pieces(tok, image_token)
    return per_tok[image_token]


def _build_pieces(tok, image_token: str) -> _Pieces:
    backend = getattr(tok, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(f"expected a fast (tokenizers-backed) tokenizer, got {type(tok).__name__}")
    added = tok.get_added_vocab()
    for s in (BOS, EOS):
        if s not in added:
            raise ValueError(f"tokenizer has no {s} special token; it does not speak ChatML")

    def enc(text: str) -> list[int]:
        return backend.encode(text, add_special_tokens=False).ids

    end = enc(EOS + "\n")
    if end[0] != added[EOS]:
        raise ValueError(f"the tokenizer does not keep {EOS} as one token")
    # An added token is cut out of the text before pre-tokenisation, so n copies are exactly n ids and the
    # text around them tokenises on its own: splicing ids gives what tokenising the expanded text gives.
    image_id = added.get(image_token)
    if image_id is not None and enc(image_token * 3) != [image_id] * 3:
        image_id = None
    if image_id is None and len(enc(image_token)) == 0:
        raise ValueError(f"image token {image_token!r} encodes to nothing")
    return _Pieces(
        backend=backend,
        headers={role: enc(f"{BOS}{role}\n") for role in ROLES},
        end=end,
        image_token=image_token,
        image_id=image_id,
        reserved=tuple(s for s in added if s),
    )


# ---------------------------------------------------------------------------------------------------------
# Validation: a malformed sample should fail with a message naming the problem, not train silently.


def _with_system(messages: list[dict], system: str | None) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise ValueError("a conversation must be a non-empty list of {'role': ..., 'content': ...} dicts")
    if system is None or (isinstance(messages[0], dict) and messages[0].get("role") == "system"):
        return messages
    return [{"role": "system", "content": system}, *messages]


def conversation_problem(messages: list[Any], *, last_role: str) -> tuple[str, str] | None:
    """What is wrong with a conversation, as (code, message), or None. One rule for training rows and prompts:
    known roles, string contents, no empty turn (a user turn may be an image alone, an assistant turn a tool call
    alone), an optional system message first, user/assistant alternating (tool results after a tool call),
    `<image>` only in user turns, and the last message from `last_role`."""
    if not messages:
        return "bad_roles", "the conversation has no messages"
    expected: tuple[str, ...] = ("user",)
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return "bad_json", f"message {i} must be a dict with 'role' and 'content', got {m!r:.80}"
        role, content = m["role"], m["content"]
        if role not in ROLES:
            return "bad_roles", f"message {i} has unknown role {role!r}; expected one of {', '.join(ROLES)}"
        if not isinstance(content, str):
            return "bad_json", f"message {i} ({role}) content must be a string, got {type(content).__name__}"
        if not content.replace(IMAGE_MARKER, "").strip() and not (role == "user" and IMAGE_MARKER in content) \
                and not m.get("tool_calls"):
            return "empty_turn", f"message {i} ({role}) has empty content"
        if role == "system":
            if i:
                return "bad_roles", f"message {i} is a system message; only the first message may be one"
            continue
        if role not in expected:
            return "bad_roles", (f"message {i} is from {role}, expected {' or '.join(expected)}: turns must "
                                 "alternate user/assistant, starting with user (tool results follow a tool call)")
        if role != "user" and IMAGE_MARKER in content:
            return "placeholder_mismatch", (f"message {i} ({role}) contains {IMAGE_MARKER}; images belong in user "
                                            "messages")
        expected = next_roles(m)
    last = messages[-1]["role"]
    if last != last_role:
        what = "a training sample must end with the assistant's answer" if last_role == "assistant" \
            else "a prompt must end with a user message"
        return "bad_roles", f"conversation ends with a {last} message: {what}"
    return None


def _check_messages(messages: list[dict], *, last_role: str) -> None:
    if problem := conversation_problem(messages, last_role=last_role):
        raise ValueError(problem[1])


def _check_tokens_per_image(n: int) -> None:
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"tokens_per_image must be a positive integer, got {n!r}")
