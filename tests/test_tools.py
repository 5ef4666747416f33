"""Tool-call SFT rows (minimind-3's): the calls are learnt as the assistant's words, the results read as context."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from conftest import labelled_runs
from minimind_v.data.chat import encode_conversation
from minimind_v.data.formats import BadRow, SampleReader
from minimind_v.data.tokenizer import train_tokenizer
from test_interop_official import compat

CONV = [{"role": "user", "content": "What is the weather in Paris?"},
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "content": "{\"temp\": 21}"},
        {"role": "assistant", "content": "It is 21 degrees in Paris."}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@pytest.mark.parametrize("which", ["minimind-3v", "ours"])
def test_calls_are_learnt_and_results_are_context(which):
    tok = AutoTokenizer.from_pretrained(str(compat() / "tokenizers" / which)) if which != "ours" else \
        train_tokenizer(["the weather in Paris is 21 degrees"] * 30, vocab_size=300)
    ids, labels = encode_conversation(tok, CONV, tokens_per_image=1, tools=TOOLS)
    end = "<|im_end|>"
    assert labelled_runs(tok, ids, labels) == [CALL + end, "It is 21 degrees in Paris." + end]
    text = tok.decode(ids)
    assert '{"temp": 21}' in text and "get_weather" in text.split(CALL)[0]  # the result and the tool list are read


def test_a_tool_call_row_reads_and_bad_ones_say_why(tmp_path):
    rows = [{"conversations": CONV, "tools": json.dumps(TOOLS)},
            {"conversations": [CONV[0], {"role": "assistant", "content": "", "tool_calls": [{"arguments": {}}]}]},
            {"conversations": [CONV[0], {"role": "tool", "content": "{}"}, CONV[3]]}]
    path = tmp_path / "tools.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    reader = SampleReader(path)
    rec = reader.record(0)
    assert rec["conversations"][1]["tool_calls"] == [{"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}]
    assert json.loads(rec["tools"]) == TOOLS
    with pytest.raises(BadRow, match="bad_json.*a tool call needs a name"):
        reader.record(1)
    with pytest.raises(BadRow, match="bad_roles.*is from tool, expected assistant"):
        reader.record(2)
