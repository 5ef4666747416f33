"""Fine-tuning an imported official release: training speaks the release's own chat template, so every row is used
and the model learns the format it is prompted with (MiniMind2's `<s>role` turns; minimind-3's empty think block)."""
from __future__ import annotations

import json

import pytest
from transformers import AutoTokenizer

from minimind_v.cli import main
from minimind_v.data.chat import IGNORE_INDEX, encode_conversation, encode_prompt
from minimind_v.data.synthetic import synthetic_rows, write_jsonl
from minimind_v.interop.importer import import_official
from test_interop_official import compat, release

FAST = ["--workers", "0", "--log-every", "1", "--threads", "1", "--device", "cpu", "--dtype", "fp32"]
RELEASES = {"a_dense": ("@", "</s>"), "b_dense": ("<|image_pad|>", "<|im_end|>")}


def _answers(tok, ids, labels) -> list[str]:
    """The labelled runs of a sample, decoded."""
    runs, cur = [], []
    for i, lab in zip(ids, labels):
        if lab != IGNORE_INDEX:
            cur.append(i)
        elif cur:
            runs, cur = runs + [tok.decode(cur)], []
    return runs + ([tok.decode(cur)] if cur else [])


@pytest.mark.parametrize("vector", list(RELEASES))
def test_labels_are_the_answers_and_the_prompt_is_the_inference_prompt(vector):
    _, tok_dir, _ = release(vector)
    tok = AutoTokenizer.from_pretrained(str(compat() / "tokenizers" / tok_dir))
    image, end = RELEASES[vector]
    msgs = [{"role": "user", "content": "<image>\nWhat is in the picture?"}, {"role": "assistant", "content": "A cat."},
            {"role": "user", "content": "What colour?"}, {"role": "assistant", "content": "Grey."}]
    ids, labels = encode_conversation(tok, msgs, tokens_per_image=5, image_token=image)
    assert _answers(tok, ids, labels) == [f"A cat.{end}", f"Grey.{end}"]
    prompt = encode_prompt(tok, msgs[:1], tokens_per_image=5, image_token=image)
    assert ids[:len(prompt)] == prompt  # trained on exactly what inference will show it
    assert ids.count(tok.convert_tokens_to_ids(image)) == 5
    if vector == "b_dense":  # minimind-3: the answer follows the empty think block, as the release answers
        assert "<think>\n\n</think>\n\nA cat." in tok.decode(ids)


@pytest.mark.parametrize("vector", list(RELEASES))
def test_an_imported_release_fine_tunes_on_every_row_and_answers(vector, tmp_path):
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
