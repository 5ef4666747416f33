"""The OpenAI chat-completions wire format, responses: a whole completion's body, one server-sent event of a
streamed one, the usage block and the request id (requests are openai_protocol.py)."""
from __future__ import annotations

import json
import time
import uuid
from typing import Any


def completion_body(req_id: str, model: str, text: str, finish: str, usage: dict[str, int]) -> dict[str, Any]:
    return {"id": req_id, "object": "chat.completion", "created": int(time.time()), "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": finish, "logprobs": None}],
            "usage": usage}


def chunk(req_id: str, model: str, delta: dict[str, str], finish: str | None = None,
          usage: dict[str, int] | None = None) -> str:
    """One server-sent event of a streamed answer."""
    body: dict[str, Any] = {"id": req_id, "object": "chat.completion.chunk", "created": int(time.time()),
                            "model": model}
    body["choices"] = [] if usage else [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]
    if usage:
        body["usage"] = usage
    return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"


def new_id() -> str:
    return f"chatcmpl-{uuid.uuid4().hex[:24]}"


def usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
