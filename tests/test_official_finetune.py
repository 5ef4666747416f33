"""Fine-tuning an imported official release: training speaks the release's own chat template, so every row is used
and the model learns the format it is prompted with (MiniMind2's `<s>role` turns; minimind-3's empty think block)."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from conftest import labelled_runs
from minimind_v.cli import main
from minimind_v.data.chat import encode_conversation, encode_prompt
from minimind_v.data.synthetic import synthetic_rows, write_jsonl
from minimind_v.interop.importer import import_official
from test_interop_official import compat, release

FAST = ["--workers", "0", "--log-every", "1", "--threads", "1", "--device", "cpu", "--dtype", "fp32"]
RELEASES = {"a_dense": ("@", "</s>"), "b_dense": ("<|image_pad|>", "<|im_end|>")}


@pytest.mark.parametrize("vector", list(RELEASES))
def test_labels_are_the_answers_and_the_prompt_is_the_inference_prompt(vector):
    _, tok_dir, _ = release(vector)
    tok = AutoTokenizer.from_pretrained(str(compat() / "tokenizers" / tok_dir))
    image, end = RELEASES[vector]
    msgs = [{"role": "user", "content": "<image>\nWhat is in the picture?"}, {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Grey."}]
    ids, labels = encode_conversation(tok, msgs, tokens_per_image=5, image_token=image)
    assert labelled_runs(tok, ids, labels) == [f"A cat.{end}", f"Grey.{end}"]
    prompt = encode_prompt(tok, msgs[:1], tokens_per_image=5, image_token=image)
    assert ids[:len(prompt)] == prompt  # trained on exactly what inference will show it
    assert ids.count(tok.convert_tokens_to_ids(image)) == 5
    if vector == "b_dense":  # minimind-3: the answer follows the empty think block, as the release answers
        assert "<think>\n\n</think>\n\nA cat." in tok.decode(ids)


@pytest.mark.parametrize("vector", list(RELEASES))
def test_an_imported_release_fine_tunes_on_every_row_andlabelled_runs(vector, tmp_path):
    vec = compat() / "vectors" / vector
    fmt, tok_dir, heads = release(vector)
    run = import_official(fmt, vec / "weights.pth", tmp_path / "imported", vision=vec / "vision",
                          tokenizer=compat() / "tokenizers" / tok_dir, n_heads=heads)
    rows, _ = synthetic_rows(8, seed=4, words=(2, 8))
    for r in rows:  # the official tokenizers reserve '@' (MiniMind2-V's placeholder) and know few words
        r["conversations"] = [{"role": "user", "content": "<image>\nDescribe the picture."},
                              {"role": "assistant", "content": "A picture with shapes."}]
    write_jsonl(rows, tmp_path / "sft.jsonl", tmp_path / "im")
    argv = ["train", "sft", "--data", str(tmp_path / "sft.jsonl"), "--images", str(tmp_path / "im"),
            "--from", str(run), "--out", str(tmp_path / "tuned"), "--steps", "2", "--batch-size", "4",
            "--max-len", "400", "--lr", "1e-3", *FAST]
    assert main(argv) == 0
    end = [json.loads(x) for x in (tmp_path / "tuned" / "metrics.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "end" and end["skipped"] == {} and end["rows_seen"] == 8
    import minimind_v

    from PIL import Image

    vlm = minimind_v.load(str(tmp_path / "tuned"), device="cpu")
    assert isinstance(vlm.answer([Image.new("RGB", (32, 32), (200, 30, 30))], "<image>\nDescribe the picture.",
                                 max_new_tokens=4), str)


@pytest.mark.parametrize("vector", list(RELEASES))
def test_each_lineage_from_the_official_llm_to_an_answer(vector, tmp_path, capsys):
    """The reference's documented path, per release: its LLM alone -> VLM pretrain -> SFT -> ask. MiniMind2's
    tokenizer has no <|image_pad|>, so MiniMind2-V is built with '@' (a clear error says so without it)."""
    import torch

    from minimind_v.data.synthetic import write_tiny_encoder
    from minimind_v.model.checkpoint import load_run

    fmt, tok_dir, heads = release(vector)
    image, _ = RELEASES[vector]
    vec = compat() / "vectors" / vector
    sd = torch.load(vec / "weights.pth", map_location="cpu", weights_only=True)
    torch.save({k: v for k, v in sd.items() if not k.startswith("vision_proj.")}, tmp_path / "llm_64.pth")
    llm = import_official("minimind-llm", tmp_path / "llm_64.pth", tmp_path / "llm",
                          tokenizer=compat() / "tokenizers" / tok_dir, n_heads=heads)
    kind, recipe = ("clip", "clip-b16") if vector == "a_dense" else ("siglip", "siglip2-b32")
    write_tiny_encoder(kind, tmp_path / "enc", image_size=32, patch_size=8)
    rows, _ = synthetic_rows(4, seed=5)
    for r in rows:
        r["conversations"] = [{"role": "user", "content": "<image>\nDescribe the picture."},
                              {"role": "assistant", "content": "A picture."}]
    write_jsonl(rows, tmp_path / "cap.jsonl", tmp_path / "im")
    data = ["--data", str(tmp_path / "cap.jsonl"), "--images", str(tmp_path / "im"), "--steps", "1",
            "--batch-size", "4", "--max-len", "200", *FAST]
    pre = ["train", "pretrain", "--from-llm", str(llm), "--vision", recipe, "--vision-path", str(tmp_path / "enc"),
           "--out", str(tmp_path / "vlm"), *data]
    if vector == "a_dense":
        assert main(pre) != 0 and "MiniMind2-V uses --image-token @" in capsys.readouterr().err
        pre += ["--image-token", "@"]
    assert main(pre) == 0
    assert main(["train", "sft", "--from", str(tmp_path / "vlm"), "--out", str(tmp_path / "sft"), *data]) == 0
    model, tok = load_run(tmp_path / "sft")
    assert model.cfg.image_token == image and model.cfg.image_token_id == tok.convert_tokens_to_ids(image)
    import minimind_v

    from PIL import Image

    vlm = minimind_v.load(str(tmp_path / "sft"), device="cpu")
    prompt = tok.decode(vlm.encode_chat([{"role": "user", "content": "<image>\nDescribe the picture."}], 1))
    if vector == "b_dense":
        assert prompt.endswith("<think>\n\n</think>\n\n")  # asked as minimind-3v was trained
    assert isinstance(vlm.answer([Image.new("RGB", (32, 32))], "<image>\nDescribe the picture.", max_new_tokens=3), str)


def test_templates_that_hide_the_answers_or_placeholders_in_text_are_clear_errors():
    tok = AutoTokenizer.from_pretrained(str(compat() / "tokenizers" / "minimind2-v"))
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Mail me at a@b.c"}, {"role": "assistant", "content": "Done."}]
    with pytest.raises(ValueError, match="image placeholder '@'"):  # '@' is MiniMind2-V's image token
        encode_conversation(tok, msgs, tokens_per_image=4, image_token="@")
    # a template that drops earlier answers once later turns follow: the answers cannot be located
    tok.chat_template = ("{% for m in messages %}{% if m['role'] == 'user' or loop.last %}"
                         "{{ '<s>' + m['role'] + '\\n' + m['content'] + '</s>\\n' }}{% endif %}{% endfor %}"
                         "{% if add_generation_prompt %}{{ '<s>assistant\\n' }}{% endif %}")
    msgs[2]["content"] = "And now?"
    with pytest.raises(ValueError, match="answers cannot be located"):
        encode_conversation(tok, msgs, tokens_per_image=4, image_token="@")
