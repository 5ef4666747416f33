"""The lmms-eval adapter, driven the way lmms-eval drives a model: requests whose `args` point into task_dict.

No lmms-eval install and no download: a stub task (a dict of docs) and stub requests stand in for them."""
import importlib.util
from types import SimpleNamespace

import pytest
import torch
from PIL import Image

import minimind_v
from minimind_v.data.chat import encode_prompt
from minimind_v.eval.lmms import MiniMindVLMMS, main
from minimind_v.infer.generate import GenerationConfig, generate

TASK, SPLIT = "stub_colors", "test"


def doc_to_visual(doc):
    return [Image.new("RGB", (32, 32), doc["colour"])]


def make_adapter(vlm, batch_size=2):
    lm = MiniMindVLMMS(vlm=vlm, batch_size=batch_size)
    lm.task_dict = {TASK: {SPLIT: [{"colour": "red", "answer": "red"}, {"colour": "blue", "answer": "blue"},
                                   {"colour": "green", "answer": "green"}]}}
    return lm


def gen_request(doc_id, context="What color is the image?", **kw):
    return SimpleNamespace(args=(context, kw, doc_to_visual, doc_id, TASK, SPLIT))


class EchoVLM:
    """Answers 'answer N STOP tail' and records the questions and kwargs it got."""

    def __init__(self):
        self.calls = []

    def answer_batch(self, items, max_new_tokens=64, temperature=0.0):
        self.calls.append((items, max_new_tokens, temperature))
        return [f"answer {len(ims)} STOP tail" for ims, _ in items]


def test_generate_until_cuts_at_until_and_adds_image_markers():
    vlm = EchoVLM()
    lm = make_adapter(vlm)
    reqs = [gen_request(0, until=["STOP"], max_new_tokens=7), gen_request(1, until=["STOP"], max_new_tokens=7),
            gen_request(2, until="STOP", max_new_tokens=5, do_sample=True, temperature=0.7),
            gen_request(0, max_new_tokens=5)]
    assert lm.generate_until(reqs) == ["answer 1 ", "answer 1 ", "answer 1 ", "answer 1 STOP tail"]
    (items, n, temp), (_, n2, temp2) = vlm.calls[0], vlm.calls[1]
    assert len(items) == 2 and len(vlm.calls) == 3  # one batched call per batch and set of kwargs
    assert items[0][1] == "<image>\nWhat color is the image?" and items[0][0][0].getpixel((0, 0)) == (255, 0, 0)
    assert (n, temp) == (7, 0.0) and (n2, temp2) == (5, 0.7)  # greedy unless the task asks to sample


def test_generate_until_with_a_real_model_matches_answer(tiny_run):
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    lm = make_adapter(vlm, batch_size=2)
    out = lm.generate_until([gen_request(i, max_new_tokens=6) for i in range(3)])
    assert len(out) == 3 and all(isinstance(o, str) for o in out)
    alone = vlm.answer([doc_to_visual({"colour": "blue"})[0]], "<image>\nWhat color is the image?", max_new_tokens=6)
    assert out[1] == alone  # batching inside the adapter changes nothing


def test_loglikelihood_is_a_log_probability_and_knows_greedy(tiny_run):
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    lm = make_adapter(vlm)
    tok, question = vlm.tokenizer, "<image>\nWhat color is the image?"
    prompt = encode_prompt(tok, [{"role": "user", "content": question}], tokens_per_image=vlm.model.tokens_per_image,
                           image_token=vlm.model.cfg.image_token)
    ids = generate(vlm.model, [prompt], vlm._pixels(doc_to_visual({"colour": "red"})), GenerationConfig(3))[0]
    greedy = tok.decode(ids)
    other = next(t for t in ("zzzz", "qqqq") if tok.encode(t, add_special_tokens=False)[0] != ids[0])
    reqs = [SimpleNamespace(args=("What color is the image?", t, doc_to_visual, 0, TASK, SPLIT))
            for t in (greedy, other, lambda doc: doc["answer"])]
    (lp_g, is_g), (lp_o, is_o), (lp_doc, _) = lm.loglikelihood(reqs)
    assert lp_g < 0 and lp_o < 0 and lp_doc < 0
    if tok.encode(greedy, add_special_tokens=False) == ids:  # the text re-encodes to the same tokens
        assert is_g  # the three greedy tokens, each scored at its own position: no off-by-one
    assert not is_o


def test_importable_without_lmms_eval_and_refuses_unknown_args():
    if importlib.util.find_spec("lmms_eval") is None:
        lm = MiniMindVLMMS(vlm=EchoVLM())
        assert (lm.rank, lm.world_size) == (0, 1) and lm.task_dict == {}
        with pytest.raises(SystemExit, match="pip install lmms-eval"):
            main(["--tasks", "mme"])
    with pytest.raises(ValueError, match="unknown model_args"):
        MiniMindVLMMS(vlm=EchoVLM(), temperature=1)
    with pytest.raises(ValueError, match="pretrained=<run directory>"):
        MiniMindVLMMS()
    with pytest.raises(NotImplementedError):
        MiniMindVLMMS(vlm=EchoVLM()).generate_until_multi_round([])


def test_pretrained_loads_with_the_weights_asked_for(tiny_run):
    lm = MiniMindVLMMS(pretrained=str(tiny_run), device="cpu", weights="bf16")
    assert lm.vlm.model.llm.embed_tokens.weight.dtype == torch.bfloat16
    assert MiniMindVLMMS(pretrained=str(tiny_run), device="cpu").vlm.model.llm.embed_tokens.weight.dtype == torch.float32
