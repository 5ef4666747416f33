"""Importing the official MiniMind-V releases: the compatibility vectors (numbers) and manifests (every key)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from conftest import shared_dir

from minimind_v.data.template_prompt import encode_template_prompt, render_prompt
from minimind_v.infer.generate import GenerationConfig, generate
from minimind_v.interop.hf_llm import load_llm
from minimind_v.interop.importer import import_official
from minimind_v.interop.official import convert, expected_shapes
from minimind_v.model.checkpoint import load_run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: one thread, see conftest

VECTORS = ["a_dense", "a_moe", "b_dense", "b_moe"]
MANIFESTS = ["MiniMind2-Small-V", "MiniMind2-V", "MiniMind2-V-MoE", "minimind-3v", "minimind-3v-moe"]
TOL = dict(atol=1e-4, rtol=1e-4)
# End to end from pixels, the image cases first pass the vision encoder. Its fp32 features differ from the stored
# ones by ~2e-6 (another CPU's summation order: ours and the stored ones are equally far from a float64 run), and
# b_moe's random weights amplify that to ~2e-4 in a few hidden values (its stored hidden states are themselves
# 3e-4 away from float64). So hidden states meet 1e-4 from the stored decoder input (`embeds.*`) and 5e-4 from
# pixels; every vision stage and every logit meets 1e-4 from pixels.
PIXEL_HIDDEN_TOL = dict(atol=5e-4, rtol=1e-4)


def compat() -> Path:
    shared = shared_dir()
    path = shared / "compat" if shared else None
    if path is None or not (path / "vectors").is_dir():
        pytest.skip("the official compatibility vectors (shared/compat) are not available; set MINIMIND_V_SHARED")
    return path


def release(vector: str) -> tuple[str, str, int | None]:
    """(format, tokenizer folder, n_heads flag) of a vector. A does not record its head count: the vectors use 4."""
    return ("minimind2-v", "minimind2-v", 4) if vector.startswith("a") else ("minimind3-v", "minimind-3v", None)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """vector name -> (model, tokenizer, meta, case, run dir), each vector imported once per module."""
    from safetensors.torch import load_file

    done = {}

    def get(vector: str):
        if vector not in done:
            vec = compat() / "vectors" / vector
            fmt, tok_dir, heads = release(vector)
            run = import_official(fmt, vec / "weights.pth", tmp_path_factory.mktemp(vector), vision=vec / "vision",
                                  tokenizer=compat() / "tokenizers" / tok_dir, n_heads=heads)
            model, tok = load_run(run)
            meta = json.loads((vec / "config.json").read_text())
            done[vector] = (model, tok, meta, load_file(vec / "case.safetensors"), run)
        return done[vector]
    return get


def user_message(meta: dict, case: str, model) -> str:
    """The vector's user message with each placeholder run written as the `<image>` marker users type."""
    run = model.cfg.image_token * model.tokens_per_image
    return meta["cases"][case]["user_message"].replace(run, "<image>")


def images_of(case: dict, name: str) -> torch.Tensor | None:
    key = f"image_index.{name}"
    return case["pixel_values"].float()[case[key].flatten()] if key in case else None


@pytest.mark.parametrize("vector", VECTORS)
def test_tokenizer_and_prompt_builder_reproduce_the_reference(vector, imported):
    model, tok, meta, case, _ = imported(vector)
    for name, info in meta["cases"].items():
        ids = case[f"input_ids.{name}"][0].tolist()
        assert tok(info["chat_text"])["input_ids"] == ids
        message = [{"role": "user", "content": user_message(meta, name, model)}]
        kw = dict(tokens_per_image=model.tokens_per_image, image_token=model.cfg.image_token)
        assert render_prompt(tok, message, **kw) == info["chat_text"]
        assert encode_template_prompt(tok, message, **kw) == ids
    assert int((case["input_ids.img2"] == model.cfg.image_token_id).sum()) == 2 * model.tokens_per_image


@pytest.mark.parametrize("vector", VECTORS)
def test_vision_features_projector_and_splice(vector, imported):
    model, _, _, case, _ = imported(vector)
    with torch.no_grad():
        feats = model.vision(case["pixel_values"].float())
        torch.testing.assert_close(feats, case["vision_features"], **TOL)
        embeds = model.projector(feats)
        torch.testing.assert_close(embeds, case["vision_embeds"], **TOL)
        for name in ("img1", "img2"):
            ids = case[f"input_ids.{name}"]
            spliced = model.splice(ids, model.llm.embed(ids), model.encode_images(images_of(case, name)))
            torch.testing.assert_close(spliced, case[f"embeds.{name}"], **TOL)


@pytest.mark.parametrize("vector", VECTORS)
def test_decoder_hidden_states_and_logits(vector, imported):
    model, _, _, case, _ = imported(vector)
    with torch.no_grad():
        for name in ("text", "img1", "img2"):
            if name == "text":
                out = model.llm(case["input_ids.text"])
            else:
                out = model.llm(inputs_embeds=case[f"embeds.{name}"])
            torch.testing.assert_close(out.hidden, case[f"hidden.{name}"], **TOL)
            torch.testing.assert_close(out.logits[:, case[f"logit_positions.{name}"]], case[f"logits.{name}"], **TOL)


@pytest.mark.parametrize("vector", VECTORS)
def test_end_to_end_from_pixels_every_case(vector, imported):
    model, _, meta, case, _ = imported(vector)
    with torch.no_grad():
        for name in meta["cases"]:
            out = model(case[f"input_ids.{name}"], images_of(case, name))
            torch.testing.assert_close(out.logits[:, case[f"logit_positions.{name}"]], case[f"logits.{name}"], **TOL)
            tol = TOL if name == "text" else PIXEL_HIDDEN_TOL
            torch.testing.assert_close(out.hidden, case[f"hidden.{name}"], **tol)


@pytest.mark.parametrize("vector", VECTORS)
def test_greedy_generation_with_kv_cache(vector, imported):
    model, tok, _, case, _ = imported(vector)
    new = case["generate.new_ids"][0].tolist()
    gen = GenerationConfig(max_new_tokens=len(new), stop_ids=[tok.eos_token_id])
    got = generate(model, [case["generate.input_ids"][0].tolist()],
                   case["pixel_values"].float()[case["generate.image_index"].flatten()], gen)
    assert got[0] == new


@pytest.mark.parametrize("vector", ["a_dense", "b_dense"])
def test_loaded_run_answers_with_the_official_prompt(vector, imported):
    import minimind_v

    model, tok, meta, case, run = imported(vector)
    vlm = minimind_v.load(str(run), device="cpu")
    message = [{"role": "user", "content": user_message(meta, "img1", model)}]
    assert vlm._prompt(message) == case["input_ids.img1"][0].tolist()
    assert vlm.stop_ids == [tok.eos_token_id]


@pytest.mark.parametrize("name", MANIFESTS)
def test_every_manifest_key_maps_with_nothing_left_over(name):
    manifest = json.loads((compat() / "manifests" / f"{name}.json").read_text())
    info = manifest.pop("config")
    sd = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    fmt = "minimind2-v" if "tok_embeddings.weight" in sd else "minimind3-v"
    conv = convert(sd, fmt)  # raises on any key left over on either side
    want = expected_shapes(conv.llm, conv.projector, conv.projector_in)
    assert {k: tuple(v.shape) for k, v in conv.state_dict.items()} == want
    assert len(manifest) == len(want) + 1  # the tied head is saved twice, stored once here
    assert sum(torch.Size(s).numel() for s in want.values()) == info["num_parameters_unique"]
    llm = conv.llm
    assert (llm.n_layers, llm.n_heads, llm.n_kv_heads, llm.head_dim) == (
        _get(info, "num_layers"), _get(info, "num_attention_heads"), _get(info, "num_key_value_heads"),
        info["head_dim"])
    assert llm.n_experts == (4 if info["use_moe"] else 0)
    assert llm.n_shared_experts == (1 if info["use_moe"] and fmt == "minimind2-v" else 0)
    assert llm.top_k == (info["moe"]["num_experts_per_tok"] if info["use_moe"] else 2)


def _get(d: dict, name: str):
    """Manifest config keys read like 'num_layers (n_layers)': match on the part before the note."""
    return next(v for k, v in d.items() if k == name or k.startswith(name + " ("))


@pytest.mark.parametrize("vector", ["a_dense", "b_moe"])
def test_llm_only_weights_become_an_llm_run(vector, tmp_path):
    vec = compat() / "vectors" / vector
    _, tok_dir, heads = release(vector)
    sd = torch.load(vec / "weights.pth", map_location="cpu", weights_only=True)
    llm_pth = tmp_path / "llm_64.pth"
    torch.save({k: v for k, v in sd.items() if not k.startswith("vision_proj.")}, llm_pth)
    run = import_official("minimind-llm", llm_pth, tmp_path / "run", tokenizer=compat() / "tokenizers" / tok_dir,
                          n_heads=heads)
    raw = json.loads((run / "config.json").read_text())
    assert raw["kind"] == "llm" and raw["imported_from"]["format"] == "minimind-llm"
    from safetensors.torch import load_file

    case = load_file(vec / "case.safetensors")
    model, tok = load_llm(run)
    assert tok.eos_token_id == 2
    from minimind_v.runs import read_llm

    cfg, weights = read_llm(run)  # what `train pretrain --from-llm RUN` starts from
    assert cfg == model.cfg and set(weights) == set(model.state_dict()) - {"lm_head.weight"}
    with torch.no_grad():
        out = model(case["input_ids.text"])
    torch.testing.assert_close(out.hidden, case["hidden.text"], **TOL)


def test_copied_encoder_keeps_the_run_relocatable(tmp_path):
    vec = compat() / "vectors" / "b_dense"
    run = import_official("minimind3-v", vec / "weights.pth", tmp_path / "a", vision=vec / "vision",
                          tokenizer=compat() / "tokenizers" / "minimind-3v", copy_vision=True)
    moved = Path(shutil.move(str(run), str(tmp_path / "b")))
    assert json.loads((moved / "config.json").read_text())["vision"]["path"] == "vision"
    model, _ = load_run(moved)
    from safetensors.torch import load_file

    case = load_file(vec / "case.safetensors")
    with torch.no_grad():
        torch.testing.assert_close(model.vision(case["pixel_values"].float()), case["vision_features"], **TOL)


def test_bad_inputs_fail_with_a_clear_message(tmp_path):
    c = compat()
    a, b = c / "vectors" / "a_dense", c / "vectors" / "b_dense"
    tok_a, tok_b = c / "tokenizers" / "minimind2-v", c / "tokenizers" / "minimind-3v"
    with pytest.raises(ValueError, match="try --format minimind3-v"):
        import_official("minimind2-v", b / "weights.pth", tmp_path / "x", vision=b / "vision", tokenizer=tok_b)
    with pytest.raises(ValueError, match="needs a CLIP model"):
        import_official("minimind2-v", a / "weights.pth", tmp_path / "x", vision=b / "vision", tokenizer=tok_a)
    with pytest.raises(ValueError, match="EOS"):
        import_official("minimind2-v", a / "weights.pth", tmp_path / "x", vision=a / "vision", tokenizer=tok_b)
    with pytest.raises(ValueError, match="--vision is required"):
        import_official("minimind3-v", b / "weights.pth", tmp_path / "x", tokenizer=tok_b)
    with pytest.raises(ValueError, match="contradicts"):
        import_official("minimind3-v", b / "weights.pth", tmp_path / "x", vision=b / "vision", tokenizer=tok_b,
                        n_heads=8)
    with pytest.raises(ValueError, match="import them as a VLM"):
        import_official("minimind-llm", a / "weights.pth", tmp_path / "x", tokenizer=tok_a)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        import_official("minimind2-v", tmp_path / "missing.pth", tmp_path / "x", vision=a / "vision", tokenizer=tok_a)
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "cfg": _NotATensor()}, evil)  # needs pickle code execution to load
    with pytest.raises(ValueError, match="weights_only"):
        import_official("minimind2-v", evil, tmp_path / "x", vision=a / "vision", tokenizer=tok_a)
    assert not (tmp_path / "x").exists()


class _NotATensor:
    pass


def test_cli_import(tmp_path, capsys):
    from minimind_v.cli import main

    vec = compat() / "vectors" / "a_moe"
    code = main(["import", "--format", "minimind2-v", "--weights", str(vec / "weights.pth"), "--vision",
                 str(vec / "vision"), "--tokenizer", str(compat() / "tokenizers" / "minimind2-v"),
                 "--n-heads", "4", "--out", str(tmp_path / "run")])
    assert code == 0 and "wrote" in capsys.readouterr().out
    model, tok = load_run(tmp_path / "run")
    assert model.cfg.image_token_id == 34 and model.tokens_per_image == 196 and model.cfg.llm.n_shared_experts == 1
    assert main(["import", "--format", "minimind3-v", "--weights", str(vec / "weights.pth"), "--vision",
                 str(vec / "vision"), "--tokenizer", "x", "--out", str(tmp_path / "bad")]) == 2
