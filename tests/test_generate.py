"""Generation: sampling controls, stopping, batched == one by one, streaming whole characters, timing."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import minimind_v
from minimind_v.data.tokenizer import load_tokenizer
from minimind_v.infer.generate import (GenerationConfig, filter_logits, generate, generate_stream,
                                       penalize_repeats, sample_next)
from minimind_v.infer.streaming import ChatStream, StreamDecoder

IM_END = 2


class ScriptedLM(torch.nn.Module):
    """Stands in for the VLM: step k returns logits favouring script[k] (or fixed logits), whatever the input.
    Lets a test pick exactly which tokens come out."""

    def __init__(self, script: list[int] | None = None, logits: torch.Tensor | None = None, vocab: int = 320):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.script, self.fixed, self.vocab = script, logits, vocab
        self.cfg = SimpleNamespace(llm=SimpleNamespace(max_seq_len=256, vocab_size=vocab))
        self.llm = SimpleNamespace(new_cache=lambda B, n: {"step": 0})

    def forward(self, ids, pixels=None, attention_mask=None, cache=None, logits_to_keep=1):
        B = ids.shape[0]
        if self.fixed is not None:
            logits = self.fixed.expand(B, -1).clone()
        else:
            logits = torch.zeros(B, self.vocab)
            logits[:, self.script[min(cache["step"], len(self.script) - 1)]] = 10.0
        cache["step"] += 1
        return SimpleNamespace(logits=logits[:, None])


@pytest.fixture(scope="module")
def tok(tiny_run):
    return load_tokenizer(tiny_run)


def test_config_rejects_out_of_range_settings():
    for bad in [dict(max_new_tokens=0), dict(temperature=-1), dict(top_p=1.5), dict(top_k=-2),
                dict(repetition_penalty=0), dict(seed="7"), dict(temperature=float("nan"))]:
        with pytest.raises(ValueError, match=next(iter(bad))):
            GenerationConfig(**bad)


def test_top_k_and_top_p_masks():
    logits = torch.log(torch.tensor([[0.1, 0.5, 0.25, 0.15]]))
    kept = lambda out: torch.isfinite(out[0]).nonzero().flatten().tolist()  # noqa: E731
    assert kept(filter_logits(logits, top_k=1)) == [1]
    assert sorted(kept(filter_logits(logits, top_k=3))) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.45)) == [1]  # 0.5 alone reaches 0.45: nothing more
    assert sorted(kept(filter_logits(logits, top_p=0.6))) == [1, 2]  # 0.5 + 0.25 reaches 0.6
    assert sorted(kept(filter_logits(logits, top_p=0.8))) == [1, 2, 3]
    assert kept(filter_logits(logits, top_p=0.0)) == [1]  # always keeps the most likely token
    assert sorted(kept(filter_logits(logits, top_p=1.0))) == [0, 1, 2, 3]
    assert sorted(kept(filter_logits(logits, top_k=2, top_p=0.95))) == [1, 2]
    # sampling restricted to one token is greedy, whatever the seed
    g = GenerationConfig(temperature=1.5, top_k=1)
    gens = [torch.Generator().manual_seed(s) for s in range(1)]
    assert sample_next(logits, g, generators=gens).tolist() == [1]


def test_a_temperature_that_underflows_samples_greedily():
    logits = torch.tensor([[0.1, 2.0, 1.9, -3.0], [5.0, 0.0, 4.99, 1.0]])
    for t in [1e-40, 5e-324, 1e-300, 1e-45]:  # logits / t overflows float32 (1e-40 passed the server's 0..2 check)
        g = GenerationConfig(temperature=t, top_p=0.9)
        gens = [torch.Generator().manual_seed(s) for s in range(2)]
        assert sample_next(logits, g, generators=gens).tolist() == [1, 0]
        assert sample_next(logits, g).tolist() == [1, 0]
    # rows that do not overflow still sample: only the overflowing row turns greedy
    mixed = torch.tensor([[0.0, 0.0], [0.0, 1e30]])
    assert sample_next(mixed, GenerationConfig(temperature=1e-10), generators=[torch.Generator()] * 2)[1] == 1


def test_repetition_penalty_pushes_seen_tokens_down():
    logits = torch.tensor([[2.0, -1.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert penalize_repeats(logits, seen, 2.0).tolist() == [[1.0, -2.0, 1.0]]
    # greedy on fixed logits keeps picking the top token; with a penalty it moves on once it is seen
    model = ScriptedLM(logits=torch.tensor([[0.0] * 5 + [3.0, 2.0, 1.0] + [0.0] * 312]))
    assert generate(model, [[9]], None, GenerationConfig(max_new_tokens=3)) == [[5, 5, 5]]
    assert generate(model, [[9]], None, GenerationConfig(max_new_tokens=3, repetition_penalty=4.0)) == [[5, 6, 7]]
    # the prompt counts as seen too
    assert generate(model, [[5]], None, GenerationConfig(max_new_tokens=1, repetition_penalty=4.0)) == [[6]]


def test_repetition_penalty_ignores_left_padding():
    """Pad id 0 is the favourite token here: a padded row must not see it as 'already used'."""
    model = ScriptedLM(logits=torch.tensor([[3.0, 2.0] + [0.0] * 318]))
    gen = GenerationConfig(max_new_tokens=1, repetition_penalty=2.0)
    solo = generate(model, [[9]], None, gen)
    assert solo == [[0]]
    assert generate(model, [[9], [9, 9, 9]], None, gen) == [solo[0], solo[0]]


def test_stops_on_end_of_turn_and_at_max_tokens(tok):
    model = ScriptedLM(script=[7, 8, IM_END, 9, 9])
    gen = GenerationConfig(max_new_tokens=10, stop_ids=[IM_END])
    assert generate(model, [[5, 6]], None, gen) == [[7, 8]]
    assert [int(s[0]) for s in generate_stream(model, [[5]], None, gen)] == [7, 8, IM_END]  # nothing after
    s = ChatStream(model, tok, [5], None, gen)
    s.read()
    assert (s.finish_reason, s.completion_tokens, s.prompt_tokens) == ("stop", 3, 1)
    s = ChatStream(ScriptedLM(script=[7]), tok, [5], None, GenerationConfig(max_new_tokens=4, stop_ids=[IM_END]))
    s.read()
    assert (s.finish_reason, s.completion_tokens) == ("length", 4)


def test_seeded_sampling_is_reproducible(vlm):
    im = Image.new("RGB", (40, 30), (10, 200, 30))
    kw = dict(max_new_tokens=12, temperature=1.0, top_p=0.95)
    a = vlm.answer([im], "<image>\nDescribe the image.", seed=3, **kw)
    assert vlm.answer([im], "<image>\nDescribe the image.", seed=3, **kw) == a
    others = {vlm.answer([im], "<image>\nDescribe the image.", seed=s, **kw) for s in range(4, 8)}
    assert others - {a}, "different seeds should give different samples from a random model"


@pytest.mark.parametrize("gen", [dict(), dict(temperature=0.9, top_k=50, seed=11),
                                 dict(temperature=1.0, top_p=0.8, repetition_penalty=1.3, seed=5)])
def test_batched_equals_one_by_one(vlm, gen):
    red, blue = Image.new("RGB", (32, 32), (220, 0, 0)), Image.new("RGB", (64, 48), (0, 0, 220))
    items = [([red], "<image>\nWhat color is the circle?"), ([], "Hello! How are you today?"),
             ([red, blue], "<image>\n<image>\nWhich image has more shapes?")]
    batched = vlm.answer_batch(items, max_new_tokens=10, **gen)
    assert batched == [vlm.answer(ims, q, max_new_tokens=10, **gen) for ims, q in items]


def test_stream_never_emits_a_broken_character(tok):
    text = "Größe: 中文 😀 ok"
    ids = tok.encode(text, add_special_tokens=False)
    assert len(ids) > len(text), "the tiny tokenizer must split multi-byte characters into several tokens"
    model = ScriptedLM(script=ids + [IM_END])
    stream = ChatStream(model, tok, [5], None, GenerationConfig(max_new_tokens=64, stop_ids=[IM_END]))
    pieces = list(stream)
    assert "".join(pieces) == text == stream.text
    assert all("\ufffd" not in p for p in pieces)
    assert len(pieces) < len(ids)  # some tokens had to wait for the rest of their character


def test_dangling_bytes_are_flushed_at_the_end(tok):
    ids = tok.encode("ab😀", add_special_tokens=False)[:-1]  # the emoji's last byte never comes
    pieces = list(ChatStream(ScriptedLM(script=ids + [IM_END]), tok, [5], None,
                             GenerationConfig(max_new_tokens=32, stop_ids=[IM_END])))
    assert "".join(pieces) == "ab\ufffd" and pieces[-1] == "\ufffd"


def test_stop_strings_are_cut_and_never_half_printed(tok):
    dec = StreamDecoder(tok, stop=["world", "!!"])
    out = [dec.push(i) for i in tok.encode("Hello wor", add_special_tokens=False)]
    assert "".join(out) == "Hello "  # "wor" may start a stop string: held back
    out += [dec.push(i) for i in tok.encode("ld and more", add_special_tokens=False)]
    assert "".join(out) == "Hello " == dec.text and dec.stopped
    dec = StreamDecoder(tok, stop=["world"])
    out = [dec.push(i) for i in tok.encode("a word", add_special_tokens=False)]
    assert "".join(out) + dec.finish() == "a word" and not dec.stopped
    model = ScriptedLM(script=tok.encode("one. two", add_special_tokens=False) + [IM_END])
    s = ChatStream(model, tok, [5], None, GenerationConfig(max_new_tokens=32, stop_ids=[IM_END]), stop=["."])
    assert (s.read(), s.finish_reason) == ("one", "stop")


def test_stream_chat_matches_answer_and_measures_speed(vlm):
    im = Image.new("RGB", (40, 40), (200, 200, 0))
    msgs = [{"role": "user", "content": "<image>\nDescribe the image."}]
    stream = vlm.stream_chat(msgs, [im], max_new_tokens=8)
    text = "".join(stream)
    assert text.strip() == vlm.answer([im], "<image>\nDescribe the image.", max_new_tokens=8)
    assert 1 <= stream.completion_tokens <= 8 and stream.finish_reason in ("stop", "length")
    assert stream.prompt_tokens > vlm.model.tokens_per_image
    assert stream.seconds > 0 and stream.tokens_per_second == pytest.approx(stream.completion_tokens / stream.seconds)


def test_stream_chat_checks_before_the_first_token(vlm):
    im = Image.new("RGB", (32, 32))
    with pytest.raises(ValueError, match="context"):
        vlm.stream_chat([{"role": "user", "content": "hi " * 300}], max_new_tokens=8)
    with pytest.raises(ValueError, match="1 <image> markers but 0 images"):
        vlm.stream_chat([{"role": "user", "content": "<image>\nhi"}])
    with pytest.raises(ValueError, match="alternate"):
        vlm.stream_chat([{"role": "user", "content": "<image>a"}, {"role": "user", "content": "b"}], [im])


@pytest.mark.parametrize("weights", ["bf16", "int8"])  # int8: the weight-only int8 kernel inside the compiled step
def test_compiled_decoding_answers_as_eager_does(tiny_run, weights):
    from torch._dynamo.utils import counters

    graphs = counters["stats"]["unique_graphs"]
    eager = minimind_v.load(tiny_run, device="cpu", weights=weights)
    fast = minimind_v.load(tiny_run, device="cpu", weights=weights, compile=True)
    assert callable(getattr(fast.model, "decode_step", None)) and not hasattr(eager.model, "decode_step")
    image = Image.new("RGB", (32, 32), (250, 20, 20))
    items = [([image], "<image>\nWhat color is it?"), ([image], "<image>\nDescribe the image.")]
    for ask in (lambda v: v.answer_batch(items, max_new_tokens=8), lambda v: v.answer(*items[0], max_new_tokens=8)):
        assert ask(fast) == ask(eager)  # batched (padded) and single rows: the same greedy answers
    assert counters["stats"]["unique_graphs"] > graphs  # really compiled, not a silent fall-back to eager


def test_warm_up_runs_decoding_steps_even_when_every_token_would_stop(tiny_run):
    vlm = minimind_v.load(tiny_run, device="cpu")
    calls = []
    vlm.model.decode_step = lambda model, *a, **k: calls.append(1) or model(*a, **k)
    vlm.stop_ids = list(range(vlm.model.cfg.llm.vocab_size))  # any answer would end at its first token
    vlm.warm_up()
    assert len(calls) == 3  # 4 tokens: the prompt's forward, then 3 one-token steps through decode_step
