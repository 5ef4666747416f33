"""The byte-level BPE tokenizer: fixed special ids, lossless round trips, ChatML template, save/reload."""
from __future__ import annotations

import json
import random
import subprocess
import sys
import time

import pytest

from minimind_v.data.tokenizer import (
    CHAT_TEMPLATE,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)

WORDS = ("the a red blue green yellow circle square triangle star is on in at left right top bottom of "
         "above below small big what where how many shapes are there picture image 红色 圆形 方块 图片 "
         "左边 右边 有 几个 🙂 🔺").split()


def corpus(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + rng.choice(".?!")
            for _ in range(n)]


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(corpus(400), vocab_size=300)


def test_special_tokens_have_fixed_ids(tok):
    assert SPECIAL_TOKENS == ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>"]
    assert tok.convert_tokens_to_ids(SPECIAL_TOKENS) == [0, 1, 2, 3]
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert (tok.pad_token, tok.bos_token, tok.eos_token) == ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
    # Special tokens in text are recognised as single ids, and nothing extra (no BOS) is added.
    assert tok("<|im_start|><|im_end|><|endoftext|><|image_pad|>").input_ids == [1, 2, 0, 3]


def test_vocab_size_is_respected(tok):
    assert len(tok) == 300  # 400 sentences offer far more than 40 merges
    small = train_tokenizer(["ab ab ab"], vocab_size=6400)
    assert 260 <= len(small) < 300  # a tiny corpus runs out of merges: fine, len() reports it
    assert max(tok.get_vocab().values()) == len(tok) - 1


def test_vocab_too_small_or_bad_texts_raise():
    with pytest.raises(ValueError, match="at least 260"):
        train_tokenizer(corpus(10), vocab_size=100)
    with pytest.raises(ValueError, match="iterable of strings"):
        train_tokenizer("just one string", vocab_size=300)
    with pytest.raises(ValueError, match="#1 is int"):
        train_tokenizer(["fine", 7], vocab_size=300)


@pytest.mark.parametrize("text", [
    "the red circle is on the left.",
    "  leading and trailing spaces  ",
    "tabs\tand\nnew\r\nlines\n\n",
    "红色的圆形在左边。图片里有几个形状？",
    "emoji 🙂🔺 and a family 👨‍👩‍👧 with skin tone 👍🏽",
    "never seen: Ελληνικά, עברית, العربية, 日本語のテキスト, ∑∫√ and \x00\x01 control bytes",
    "<image>\nWhat is in the picture?",
    "",
])
def test_unicode_round_trip(tok, text):
    ids = tok(text).input_ids
    assert all(0 <= i < len(tok) for i in ids)
    assert tok.decode(ids) == text


def test_random_unicode_round_trip(tok):
    rng = random.Random(1)
    for _ in range(50):
        text = "".join(chr(rng.choice([rng.randint(32, 126), rng.randint(0x4E00, 0x9FFF),
                                       rng.randint(0x1F300, 0x1F64F), rng.randint(0xA0, 0x24F), 10, 32]))
                       for _ in range(rng.randint(1, 40)))
        assert tok.decode(tok(text).input_ids) == text


def test_image_pad_runs_are_exact(tok):
    for n in (1, 2, 7, 64, 196):
        assert tok("<|image_pad|>" * n).input_ids == [3] * n
    ids = tok("<|image_pad|>" * 5 + "\nhow many shapes?").input_ids
    assert ids[:5] == [3] * 5 and 3 not in ids[5:]
    assert tok.decode(ids[5:]) == "\nhow many shapes?"
    # The raw marker is ordinary text: it never turns into image ids on its own.
    assert 3 not in tok("<image>\n<image>").input_ids


def test_chat_template_is_chatml(tok):
    messages = [
        {"role": "system", "content": "You are helpful."},
        {"role": "user", "content": "<image>\nWhat is this?"},
        {"role": "assistant", "content": "A red circle."},
        {"role": "user", "content": "And the colour?"},
    ]
    text = tok.apply_chat_template(messages, tokenize=False)
    assert text == ("<|im_start|>system\nYou are helpful.<|im_end|>\n"
                    "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n"
                    "<|im_start|>assistant\nA red circle.<|im_end|>\n"
                    "<|im_start|>user\nAnd the colour?<|im_end|>\n")
    prompt = tok.apply_chat_template(messages[1:2], tokenize=False, add_generation_prompt=True)
    # No default system prompt is injected, and the generation prompt is the bare assistant header.
    assert prompt == "<|im_start|>user\n<image>\nWhat is this?<|im_end|>\n<|im_start|>assistant\n"


def test_save_and_reload_without_this_package(tok, tmp_path):
    out = tmp_path / "tok"
    trained = train_tokenizer(corpus(400), vocab_size=300, out_dir=out)
    assert (out / "tokenizer.json").is_file()
    config = json.loads((out / "tokenizer_config.json").read_text())
    assert config["chat_template"] == CHAT_TEMPLATE

    texts = ["红色的圆形 🙂 on the left", "<|im_start|>user\n<|image_pad|><|image_pad|>\nhi<|im_end|>\n"]
    messages = [{"role": "user", "content": "hi"}]
    script = f"""
import json, sys
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained({str(out)!r})
assert not any(m.startswith("minimind_v") for m in sys.modules), "minimind_v was imported"
print(json.dumps({{
    "ids": [tok(t).input_ids for t in {texts!r}],
    "special": [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id],
    "prompt": tok.apply_chat_template({messages!r}, tokenize=False, add_generation_prompt=True),
    "len": len(tok),
}}))
"""
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout.strip().splitlines()[-1])
    assert got["ids"] == [trained(t).input_ids for t in texts]
    assert got["special"] == [0, 1, 2]
    assert got["prompt"] == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert got["len"] == len(trained)

    loaded = load_tokenizer(out)
    assert [loaded(t).input_ids for t in texts] == got["ids"]
    assert loaded.chat_template == CHAT_TEMPLATE


def test_load_errors_are_clear(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_tokenizer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no tokenizer.json"):
        load_tokenizer(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "tokenizer.json").write_text("{ not json")
    with pytest.raises(ValueError, match="could not load the tokenizer"):
        load_tokenizer(bad)


def test_training_50k_sentences_takes_seconds():
    texts = corpus(50_000, seed=2)
    start = time.perf_counter()
    tok = train_tokenizer(texts, vocab_size=6400)
    elapsed = time.perf_counter() - start
    assert elapsed < 20, f"training took {elapsed:.1f}s"
    assert tok.decode(tok(texts[0]).input_ids) == texts[0]
