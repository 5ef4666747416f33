"""transformers export: a fresh process that cannot import minimind_v loads the export and computes the same thing.

One subprocess serves every check (starting Python + torch + transformers is the slow part): the parent writes
the inputs, the child loads each exported directory with transformers alone, runs forward passes, `generate` and
the processor, and writes the results back for the parent to compare with the package's own model.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import build_tiny_run, shared_dir
from PIL import Image
from safetensors.torch import load_file, save_file

import minimind_v
from minimind_v.config import LLMConfig
from minimind_v.data.template_prompt import encode_template_prompt
from minimind_v.infer.generate import GenerationConfig, generate
from minimind_v.interop.hf_export import export_hf, localize_imports, remote_code_files
from minimind_v.interop.hf_llm import export_llm_only, load_llm, pick_architecture
from minimind_v.interop.importer import import_official, write_llm_run
from minimind_v.interop.official import MINIMIND2, Converted
from minimind_v.model.checkpoint import load_run, save_run
from minimind_v.model.llm import MiniMindLM

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, see conftest

TOL = dict(atol=1e-4, rtol=1e-4)
SAME = dict(atol=1e-5, rtol=1e-5)  # the export runs the very same code: only kernel-level noise is allowed

CHILD = r'''
import json, sys
from pathlib import Path

class NoPackage:  # the export must stand alone: importing minimind_v here is an error
    def find_spec(self, name, path=None, target=None):
        if name == "minimind_v" or name.startswith("minimind_v."):
            raise ImportError(f"the export imported {name}")
sys.meta_path.insert(0, NoPackage())

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoProcessor, AutoTokenizer

work = Path(sys.argv[1])
jobs = json.loads((work / "jobs.json").read_text())
inputs = load_file(str(work / "inputs.safetensors"))
out, info = {}, {}
for job in jobs:
    remote = job["remote"]
    model = AutoModelForCausalLM.from_pretrained(job["dir"], trust_remote_code=remote).eval()
    tok = AutoTokenizer.from_pretrained(job["dir"], trust_remote_code=remote)
    info[job["name"]] = {"model": type(model).__name__}
    proc = None
    if remote:
        proc = AutoProcessor.from_pretrained(job["dir"], trust_remote_code=True)
        info[job["name"]]["processor"] = type(proc).__name__
    with torch.no_grad():
        for step in job["steps"]:
            k = step["key"]
            if step["kind"] == "chat":  # the user's path: chat template -> processor -> generate
                texts = [tok.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
                         for m in step["messages"]]
                images = [Image.fromarray(inputs[name].numpy()) for name in step["images"]]
                batch = proc(text=texts if len(texts) > 1 else texts[0], images=images or None)
                for name, t in batch.items():
                    out[f"{k}.{name}"] = t.contiguous()
            else:
                batch = {n: inputs[f"{k}.{n}"] for n in ("input_ids", "pixel_values", "attention_mask")
                         if f"{k}.{n}" in inputs}
            if step["kind"] == "logits":
                out[f"{k}.logits"] = model(**batch).logits.contiguous()
            else:
                new = model.generate(**batch, max_new_tokens=step["max_new_tokens"], do_sample=False)
                out[f"{k}.new_ids"] = new[:, batch["input_ids"].shape[1]:].contiguous()
                info[job["name"]][k] = tok.batch_decode(out[f"{k}.new_ids"], skip_special_tokens=True)
info["modules"] = sorted(m for m in sys.modules if m.startswith("minimind_v"))
save_file(out, str(work / "out.safetensors"))
(work / "info.json").write_text(json.dumps(info, ensure_ascii=False))
'''


def compat() -> Path | None:
    shared = shared_dir()
    path = shared / "compat" if shared else None
    return path if path is not None and (path / "vectors").is_dir() else None


def import_vector(name: str, out: Path) -> Path:
    c = compat()
    vec = c / "vectors" / name
    if name.startswith("a"):
        return import_official("minimind2-v", vec / "weights.pth", out, vision=vec / "vision",
                               tokenizer=c / "tokenizers" / "minimind2-v", n_heads=4)
    return import_official("minimind3-v", vec / "weights.pth", out, vision=vec / "vision",
                           tokenizer=c / "tokenizers" / "minimind-3v")


def tiny_mixtral_run(tok_dir: Path, out: Path) -> Path:
    """An LLM run whose MoE has no q/k-norm and no shared expert: the case Mixtral covers."""
    torch.manual_seed(0)
    cfg = LLMConfig(dim=32, n_layers=2, n_heads=4, n_kv_heads=2, ffn_dim=48, vocab_size=320, n_experts=4, top_k=2)
    llm = MiniMindLM(cfg)
    sd = {f"llm.{k}": v for k, v in llm.state_dict().items() if k != "lm_head.weight"}
    from minimind_v.data.tokenizer import load_tokenizer

    return write_llm_run(Converted(MINIMIND2, cfg, None, None, sd), load_tokenizer(tok_dir), out, {})


class Probe:
    """Collects jobs and inputs, runs the child once, hands back its outputs."""

    def __init__(self, work: Path):
        self.work, self.jobs, self.inputs = work, [], {}

    def add(self, name: str, hf_dir: Path, remote: bool, steps: list[dict], tensors: dict[str, torch.Tensor]):
        self.jobs.append({"name": name, "dir": str(hf_dir), "remote": remote, "steps": steps})
        self.inputs.update({k: v.clone().contiguous() for k, v in tensors.items()})

    def run(self) -> tuple[dict, dict]:
        (self.work / "jobs.json").write_text(json.dumps(self.jobs, ensure_ascii=False))
        save_file(self.inputs, str(self.work / "inputs.safetensors"))
        (self.work / "child.py").write_text(CHILD)
        env = {**os.environ, "HF_MODULES_CACHE": str(self.work / "hf_modules"), "HF_HUB_OFFLINE": "1",
               "TRANSFORMERS_VERBOSITY": "error", "TOKENIZERS_PARALLELISM": "false",
               "OMP_NUM_THREADS": "1"}  # tiny models: one thread, and no stalls when the machine is busy
        proc = subprocess.run([sys.executable, str(self.work / "child.py"), str(self.work)], cwd=self.work,
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-4000:]
        return load_file(str(self.work / "out.safetensors")), json.loads((self.work / "info.json").read_text())


def talkative_run(out: Path) -> Path:
    """A tiny random run whose greedy answers vary with the prompt (the default init repeats one token), so equal
    answers mean something."""
    model, tok = load_run(build_tiny_run(out / "base"))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.llm.named_parameters():
            std = 0.2 if "embed" in name else 0.3 if p.dim() == 2 else 1.0
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return save_run(model, tok, out / "run")


def red_square() -> Image.Image:
    im = Image.new("RGB", (40, 30), (240, 240, 235))
    im.paste((220, 30, 30), (8, 6, 28, 24))
    return im


def add_vector(p: Probe, name: str, root: Path, full: bool) -> dict:
    """Import an official vector, export it (full: the VLM too, else the LLM only) and queue the child's checks."""
    run = import_vector(name, root / f"{name}_run")
    case = load_file(compat() / "vectors" / name / "case.safetensors")
    p.add(f"{name}_llm", export_llm_only(run, root / f"{name}_llm"), False,
          [{"kind": "logits", "key": f"{name}.llm"}], {f"{name}.llm.input_ids": case["input_ids.text"]})
    if not full:
        return dict(run=run, case=case)
    pv = case["pixel_values"].float()
    tensors, steps = {}, []
    for c in ("text", "img1", "img2", "batch2"):
        tensors[f"{name}.{c}.input_ids"] = case[f"input_ids.{c}"]
        if f"image_index.{c}" in case:
            tensors[f"{name}.{c}.pixel_values"] = pv[case[f"image_index.{c}"].flatten()]
        steps.append({"kind": "logits", "key": f"{name}.{c}"})
    tensors[f"{name}.gen.input_ids"] = case["generate.input_ids"]
    tensors[f"{name}.gen.pixel_values"] = pv[case["generate.image_index"].flatten()]
    steps.append({"kind": "generate", "key": f"{name}.gen", "max_new_tokens": case["generate.new_ids"].shape[1]})
    # the user's path: the stored source image through the processor, the question through the chat template
    meta = json.loads((compat() / "vectors" / name / "config.json").read_text())
    question = meta["cases"]["img1"]["user_message"].split("\n", 1)[1]  # the text after the placeholder run
    tensors[f"{name}.u8"] = case["images_u8"][0]
    steps.append({"kind": "chat", "key": f"{name}.chat", "max_new_tokens": 8, "images": [f"{name}.u8"],
                  "messages": [[{"role": "user", "content": f"<image>\n{question}"}]]})
    p.add(name, export_hf(run, root / f"{name}_hf"), True, steps, tensors)
    return dict(run=run, case=case, question=question)


@pytest.fixture(scope="module")
def probe(tmp_path_factory):
    """Export a tiny run (+ its LLM), the official vectors (when present) and their LLMs; run the child once."""
    root = tmp_path_factory.mktemp("hf")
    p = Probe(root)
    ours = {}

    # 1. A run made here: logits, generate with and without images, the chat path with a left-padded batch.
    tiny_run = talkative_run(root / "tiny")
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    img = red_square()
    pixels = vlm._pixels([img])
    q_img, q_txt = "<image>\nWhat color is the square?", "How many shapes are there?"
    ids = torch.tensor([vlm._prompt([{"role": "user", "content": q_img}])])
    p.add("tiny", export_hf(tiny_run, root / "tiny_hf"), True, [
        {"kind": "logits", "key": "tiny.fwd"},
        {"kind": "generate", "key": "tiny.gen", "max_new_tokens": 12},
        {"kind": "chat", "key": "tiny.chat", "max_new_tokens": 12, "images": ["tiny.img"],
         "messages": [[{"role": "user", "content": q_img}]]},
        {"kind": "chat", "key": "tiny.text", "max_new_tokens": 12, "images": [],
         "messages": [[{"role": "user", "content": q_txt}]]},
        {"kind": "chat", "key": "tiny.batch", "max_new_tokens": 12, "images": ["tiny.img"],
         "messages": [[{"role": "user", "content": q_txt}], [{"role": "user", "content": q_img}]]},
    ], {"tiny.fwd.input_ids": ids, "tiny.fwd.pixel_values": pixels, "tiny.gen.input_ids": ids,
        "tiny.gen.pixel_values": pixels, "tiny.img": torch.from_numpy(np.array(img))})
    ours["tiny"] = dict(vlm=vlm, img=img, q_img=q_img, q_txt=q_txt, ids=ids, pixels=pixels, run=tiny_run)
    p.add("tiny_llm", export_llm_only(tiny_run, root / "tiny_llm"), False, [{"kind": "logits", "key": "tl"}],
          {"tl.input_ids": ids})
    mixtral = tiny_mixtral_run(tiny_run, root / "mixtral_run")
    p.add("mixtral", export_llm_only(mixtral, root / "mixtral_hf"), False, [{"kind": "logits", "key": "mx"}],
          {"mx.input_ids": ids})
    ours["llm_ids"], ours["mixtral_run"] = ids, mixtral

    # 2. The official vectors: import -> export -> transformers.
    if compat() is not None:
        # a_dense (CLIP, linear projector, interleaved RoPE) and b_moe (SigLIP, MLP projector, q/k-norm, MoE) cover
        # every model part; b_dense adds the plain Qwen3 case of --llm-only.
        for name in ("a_dense", "b_moe", "b_dense"):
            ours[name] = add_vector(p, name, root, full=name != "b_dense")
    out, info = p.run()
    return out, info, ours


def test_child_never_imported_the_package(probe):
    _, info, _ = probe
    assert info["modules"] == []
    assert info["tiny"] == {**info["tiny"], "model": "MiniMindVForCausalLM", "processor": "MiniMindVProcessor"}


def test_export_logits_and_generate_equal_the_package(probe):
    out, _, ours = probe
    t = ours["tiny"]
    model = t["vlm"].model
    with torch.no_grad():
        torch.testing.assert_close(out["tiny.fwd.logits"], model(t["ids"], t["pixels"]).logits, **SAME)
    eos = t["vlm"].tokenizer.eos_token_id
    gen = generate(model, [t["ids"][0].tolist()], t["pixels"], GenerationConfig(max_new_tokens=12, stop_ids=[eos]))
    got = out["tiny.gen.new_ids"][0].tolist()
    assert got[:len(gen[0])] == gen[0]
    assert len(gen[0]) == 12 or got[len(gen[0])] == eos  # transformers stops on the same EOS


def test_processor_and_chat_template_give_the_answer_of_minimind_v_load(probe):
    out, info, ours = probe
    t = ours["tiny"]
    vlm = t["vlm"]
    assert out["tiny.chat.input_ids"][0].tolist() == vlm._prompt([{"role": "user", "content": t["q_img"]}])
    torch.testing.assert_close(out["tiny.chat.pixel_values"], t["pixels"])
    assert info["tiny"]["tiny.chat"][0].strip() == vlm.answer([t["img"]], t["q_img"], max_new_tokens=12)
    assert info["tiny"]["tiny.text"][0].strip() == vlm.answer([], t["q_txt"], max_new_tokens=12)
    # a left-padded batch: every row as if alone
    batch = vlm.answer_batch([([], t["q_txt"]), ([t["img"]], t["q_img"])], max_new_tokens=12)
    assert [s.strip() for s in info["tiny"]["tiny.batch"]] == batch
    assert out["tiny.batch.attention_mask"][0, 0] == 0  # the shorter text-only row is padded on the left


def test_llm_only_export_loads_without_remote_code(probe):
    out, info, ours = probe
    assert info["tiny_llm"]["model"] == "LlamaForCausalLM" and info["mixtral"]["model"] == "MixtralForCausalLM"
    for key, run in (("tl", ours["tiny"]["run"]), ("mx", ours["mixtral_run"])):
        llm, _ = load_llm(run)
        with torch.no_grad():
            torch.testing.assert_close(out[f"{key}.logits"], llm(ours["llm_ids"]).logits, **TOL)


def test_round_trip_official_vectors(probe):
    out, info, ours = probe
    if "a_dense" not in ours:
        pytest.skip("the official compatibility vectors (shared/compat) are not available")
    for name in ("a_dense", "b_moe"):
        case = ours[name]["case"]
        for c in ("text", "img1", "img2", "batch2"):
            pos = case[f"logit_positions.{c}"]
            torch.testing.assert_close(out[f"{name}.{c}.logits"][:, pos], case[f"logits.{c}"], **TOL)
        assert out[f"{name}.gen.new_ids"].tolist() == case["generate.new_ids"].tolist()  # 20 greedy ids, no EOS
        # the user's path: the official chat template and image processor rebuild the reference prompt
        assert out[f"{name}.chat.input_ids"].tolist() == case["input_ids.img1"].tolist()
        torch.testing.assert_close(out[f"{name}.chat.pixel_values"], case["pixel_values"][:1].float(),
                                   atol=2e-3, rtol=0)
        model, tok = load_run(ours[name]["run"])
        message = [{"role": "user", "content": f"<image>\n{ours[name]['question']}"}]
        prompt = encode_template_prompt(tok, message, tokens_per_image=model.tokens_per_image,
                                        image_token=model.cfg.image_token)
        want = generate(model, [prompt], out[f"{name}.chat.pixel_values"],
                        GenerationConfig(max_new_tokens=8, stop_ids=[tok.eos_token_id]))
        assert out[f"{name}.chat.new_ids"][0, :len(want[0])].tolist() == want[0]
    assert info["a_dense_llm"]["model"] == "LlamaForCausalLM"
    assert info["b_dense_llm"]["model"] == "Qwen3ForCausalLM"
    assert info["b_moe_llm"]["model"] == "Qwen3MoeForCausalLM"
    for name in ("a_dense", "b_dense", "b_moe"):
        case = ours[name]["case"]
        pos = case["logit_positions.text"]
        torch.testing.assert_close(out[f"{name}.llm.logits"][:, pos], case["logits.text"], **TOL)


def test_what_cannot_be_exported_says_why(tmp_path, tiny_run):
    with pytest.raises(ValueError, match="shared experts"):
        pick_architecture(LLMConfig(dim=32, n_heads=4, n_kv_heads=2, n_experts=4, n_shared_experts=1))
    with pytest.raises(ValueError, match="norm_topk_prob"):
        pick_architecture(LLMConfig(dim=32, n_heads=4, n_kv_heads=2, n_experts=4, norm_topk_prob=False))
    assert pick_architecture(LLMConfig(dim=32, n_heads=4, n_kv_heads=2, n_experts=4, qk_norm=True)) == \
        "Qwen3MoeForCausalLM"
    llm_run = tiny_mixtral_run(tiny_run, tmp_path / "llm")
    with pytest.raises(ValueError, match="--llm-only"):
        export_hf(llm_run, tmp_path / "hf")
    with pytest.raises(ValueError, match="does not carry"):
        localize_imports("from ..data.chat import encode_prompt\n", "model/vlm.py")


def test_exported_code_is_the_package_source_with_local_imports():
    files = remote_code_files()
    assert {"modeling_minimind_v.py", "mmv_llm.py", "mmv_vlm.py", "mmv_vision.py"} <= set(files)
    for name, text in files.items():
        compile(text, name, "exec")
        assert not re.search(r"^\s*(from|import)\s+(minimind_v\b|\.\.)", text, re.M), name
    assert "from .mmv_llm import LMOutput, MiniMindLM" in files["mmv_vlm.py"]


def test_cli_export(tmp_path, tiny_run, capsys):
    from minimind_v.cli import main

    assert main(["export", "--model", str(tiny_run), "--out", str(tmp_path / "hf")]) == 0
    assert (tmp_path / "hf" / "model.safetensors").is_file() and "trust_remote_code" in capsys.readouterr().out
    assert main(["export", "--llm-only", "--model", str(tiny_run), "--out", str(tmp_path / "llm")]) == 0
    cfg = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["tie_word_embeddings"] is True
    assert main(["export", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "x")]) == 2
