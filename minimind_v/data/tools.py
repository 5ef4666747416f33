"""Tool calls in training conversations (minimind-3's tool-call SFT rows, OpenAI's message layout).

An assistant turn may call tools instead of (or besides) answering: `{"role": "assistant", "content": "",
"tool_calls": [{"name": ..., "arguments": {...}}]}` (or OpenAI's `{"function": {"name", "arguments"}}`); each
result comes back as a `{"role": "tool", "content": ...}` turn, and the assistant then answers. The row may list
the tools it offers (`"tools": [...]`). The model learns the calls (they are the assistant's words) and never the
tool results.

A tokenizer whose chat template knows tools (minimind-3's) renders them itself. This package's ChatML has no tool
syntax, so here the calls become text in the assistant's turn, the way minimind-3 writes them:
`<tool_call>\\n{"name": ..., "arguments": ...}\\n</tool_call>`, and the tool list a system turn.
"""
from __future__ import annotations

import json
from typing import Any

TOOL = "tool"


def next_roles(message: dict[str, Any]) -> tuple[str, ...]:
    """Which roles may follow this message."""
    role = message.get("role")
    if role == "user":
        return ("assistant",)
    if role == "assistant":
        return (TOOL,) if message.get("tool_calls") else ("user",)
    if role == TOOL:
        return (TOOL, "assistant")
    return ("user",)


def calls_of(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's tool calls as [{"name", "arguments"}], checked (a JSON string is parsed)."""
    calls = message.get("tool_calls") or []
    if isinstance(calls, str):
        try:
            calls = json.loads(calls)
        except ValueError as e:
            raise ValueError(f"tool_calls is not valid JSON ({e})") from None
    if not isinstance(calls, list):
        raise ValueError(f"tool_calls must be a list, got {type(calls).__name__}")
    out = []
    for c in calls:
        fn = c.get("function", c) if isinstance(c, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
            raise ValueError(f"a tool call needs a name: {c!r:.80}")
        out.append({"name": fn["name"], "arguments": fn.get("arguments", {})})
    return out


def parse_tools(tools: Any) -> list[Any] | None:
    """A row's tool list, given as a list or as its JSON text; None when there is none."""
    if not tools:
        return None
    return json.loads(tools) if isinstance(tools, str) else list(tools)


def as_text_turns(messages: list[dict[str, Any]], tools: Any = None) -> list[dict[str, str]]:
    """The conversation with tool calls written into the assistant's text and the tool list as a system turn."""
    out = []
    for m in messages:
        calls = calls_of(m) if m.get("role") == "assistant" else []
        text = m["content"]
        for c in calls:
            args = c["arguments"] if isinstance(c["arguments"], str) else json.dumps(c["arguments"], ensure_ascii=False)
            text += f'\n<tool_call>\n{{"name": "{c["name"]}", "arguments": {args}}}\n</tool_call>'
        out.append({"role": m["role"], "content": text.strip("\n") if calls else text})
    tools = parse_tools(tools)
    if tools:
        listing = "\n".join(json.dumps(t, ensure_ascii=False) for t in tools)
        note = f"# Tools\n\nYou may call these functions:\n<tools>\n{listing}\n</tools>"
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + note}
        else:
            out.insert(0, {"role": "system", "content": note})
    return out
