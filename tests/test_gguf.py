"""GGUF export: the file's tensors and vocabulary, and, where llama.cpp's Python binding is installed, the same
greedy tokens and logits from llama.cpp as from the package."""
from __future__ import annotations

import pytest
import torch

from minimind_v.cli import main
from minimind_v.config import LLMConfig, padded_vocab
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.interop.gguf_export import _interleave_heads, gguf_architecture
from minimind_v.model.checkpoint import save_llm_run
from minimind_v.model.llm import MiniMindLM
from minimind_v.train.lm_only import load_llm_run

gguf = pytest.importorskip("gguf", reason="GGUF export needs the gguf package (pip install gguf)")

ARCHS = {"llama": {}, "qwen2": {"qkv_bias": True}, "qwen3": {"qk_norm": True}}


def _run(tmp_path, arch: str):
    torch.manual_seed(0)
    tok = train_tokenizer(["the red square is small and the blue circle is large"] * 40, vocab_size=300)
    cfg = LLMConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=128, vocab_size=padded_vocab(len(tok)),
                    max_seq_len=256, tie_embeddings=arch != "qwen2", **ARCHS[arch])
    llm = MiniMindLM(cfg)
    with torch.no_grad():
        for name, p in llm.named_parameters():
            if name.endswith(".bias") or "norm" in name:  # zeros and ones at init: give them values worth checking
                p.normal_(1.0 if "norm" in name else 0.0, 0.3)
            if "q_proj.weight" in name or "k_proj.weight" in name or "v_proj.weight" in name:
                p.mul_(6.0)  # sharp, position-dependent attention: a wrong RoPE layout must change the logits
    assert gguf_architecture(cfg) == arch
    return save_llm_run(llm, tok, tmp_path / arch)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_the_file_holds_every_tensor_and_the_vocabulary(arch, tmp_path):
    run = _run(tmp_path, arch)
    assert main(["export", "--model", str(run), "--gguf", str(tmp_path / "m.gguf"), "--gguf-type", "f32"]) == 0
    r = gguf.GGUFReader(str(tmp_path / "m.gguf"))
    assert bytes(r.fields["general.architecture"].parts[-1]).decode() == arch
    tensors = {t.name: t for t in r.tensors}
    model, tok = load_llm_run(run)
    sd = model.llm.state_dict()
    q = torch.from_numpy(tensors["blk.1.attn_q.weight"].data.copy()).reshape(sd["layers.1.attn.q_proj.weight"].shape)
    want = sd["layers.1.attn.q_proj.weight"]
    assert torch.equal(q, _interleave_heads(want, 4) if arch == "llama" else want)
    assert ("output.weight" in tensors) == (arch == "qwen2") and ("blk.0.attn_q.bias" in tensors) == (arch == "qwen2")
    assert len(r.fields["tokenizer.ggml.tokens"].data) == model.llm.cfg.vocab_size


def test_what_llama_cpp_cannot_run_is_refused():
    with pytest.raises(ValueError, match="has experts"):
        gguf_architecture(LLMConfig(n_experts=4, top_k=2))


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("out_type", ["f32", "f16", "q8_0"])
def test_llama_cpp_gives_the_packages_greedy_tokens(arch, out_type, tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama.cpp's Python binding is not installed (pip install "
                                    "llama-cpp-python builds it from source; benchmarks/gguf_check.sh does it)")
    run = _run(tmp_path, arch)
    out = tmp_path / f"m-{out_type}.gguf"
    assert main(["export", "--model", str(run), "--gguf", str(out), "--gguf-type", out_type]) == 0
    model, tok = load_llm_run(run)
    prompt = tok("the red square is small and the blue circle is").input_ids
    ours, ids = [], list(prompt)
    with torch.no_grad():  # greedy, 8 tokens, recomputed in full each step (tiny model)
        for _ in range(8):
            ours.append(int(model.llm(torch.tensor([ids])).logits[0, -1].argmax()))
            ids.append(ours[-1])
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=64, logits_all=True, verbose=False, n_threads=1)
    assert llm.tokenize(b"the red square is small and the blue circle is", add_bos=False, special=False) == prompt
    theirs = []
    for token in llm.generate(prompt, temp=0.0, top_k=1, reset=True):
        theirs.append(token)
        if len(theirs) == 8:
            break
    if out_type != "q8_0":  # 8-bit weights may move a near tie: for them, the logits below
        assert theirs == ours
    if out_type in ("f32", "q8_0"):
        llm.reset()
        llm.eval(prompt)
        with torch.no_grad():
            want = model.llm(torch.tensor([prompt])).logits[0, -1]
        got = torch.tensor(llm.scores[len(prompt) - 1])[: want.shape[0]]
        tol = 2e-3 if out_type == "f32" else 0.05 * float(want.abs().max())  # q8_0: 8 bits per weight
        torch.testing.assert_close(got, want, atol=tol, rtol=0)
