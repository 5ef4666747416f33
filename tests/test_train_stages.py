"""The real-scale recipe end to end on tiny models through the command line:
tokenizer -> llm-pretrain -> llm-sft -> VLM pretrain -> VLM sft, with what each stage trains and stores."""
from __future__ import annotations

import json
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file

from minimind_v.cli import main
from minimind_v.data.synthetic import (synthetic_rows, write_chat_jsonl, write_jsonl, write_text_jsonl,
                                       write_tiny_encoder)
from minimind_v.model.checkpoint import load_run
from minimind_v.train.lm_only import load_llm_run

FAST = ["--workers", "0", "--log-every", "1", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def recipe(tmp_path_factory):
    """Runs the five stages once; the tests below inspect the results."""
    r = tmp_path_factory.mktemp("recipe")
    write_text_jsonl(r / "text.jsonl", 64, seed=1)
    write_chat_jsonl(r / "chat.jsonl", 32, seed=2)
    rows, broken = synthetic_rows(40, seed=3, broken=0.1, long_words=300)
    write_jsonl(rows, r / "cap.jsonl", r / "im")
    write_tiny_encoder("clip", r / "clip", image_size=32, patch_size=8)
    steps = [
        ["train", "tokenizer", "--data", str(r / "text.jsonl"), "--out", str(r / "tok"), "--vocab-size", "320"],
        ["train", "llm-pretrain", "--data", str(r / "text.jsonl"), "--tokenizer", str(r / "tok"), "--preset",
         "shapes-tiny", "--out", str(r / "llm"), "--steps", "4", "--batch-size", "8", "--max-len", "64", "--pack",
         "--lr", "3e-3", *FAST],
        ["train", "llm-sft", "--data", str(r / "chat.jsonl"), "--from", str(r / "llm"), "--out", str(r / "llm_sft"),
         "--steps", "3", "--batch-size", "8", "--lr", "1e-3", *FAST],
        # one epoch over 40 rows (5 batches of 8), 4 of them broken
        ["train", "pretrain", "--data", str(r / "cap.jsonl"), "--images", str(r / "im"), "--from-llm",
         str(r / "llm_sft"), "--vision", "clip-b16", "--vision-path", str(r / "clip"), "--merge", "2",
         "--out", str(r / "vlm_pre"), "--epochs", "1", "--batch-size", "8", "--max-len", "200", "--lr", "1e-2",
         *FAST],
        ["train", "sft", "--data", str(r / "cap.jsonl"), "--images", str(r / "im"), "--from", str(r / "vlm_pre"),
         "--out", str(r / "vlm_sft"), "--steps", "3", "--batch-size", "8", "--max-len", "200", "--lr", "1e-2",
         "--group-by-length", *FAST],
    ]
    for argv in steps:
        assert main(argv) == 0, argv
    return r, broken


def _metrics_end(run) -> dict:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return next(x for x in reversed(rows) if x.get("event") == "end")


def test_every_stage_writes_a_loadable_run(recipe):
    r, _ = recipe
    llm, tok = load_llm_run(r / "llm_sft")
    assert llm.llm.cfg.dim == 64 and len(tok) <= llm.llm.cfg.vocab_size
    model, tok = load_run(r / "vlm_sft")
    assert model.cfg.projector == "linear" and model.tokens_per_image == 4  # CLIP recipe, 16 patches merged 2x2
    ids = tok("hello", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape[-1] == model.cfg.llm.vocab_size


def test_every_stage_records_its_precision(recipe):
    r, _ = recipe
    for stage in ("llm_sft", "vlm_pre", "vlm_sft"):
        rows = [json.loads(x) for x in (r / stage / "metrics.jsonl").read_text().splitlines()]
        picked = [x for x in rows if x.get("event") == "dtype"]
        trained = json.loads((r / stage / "stage.json").read_text())["train"]["dtype"]
        assert len(picked) == 1 and picked[0]["dtype"] == trained, stage  # --dtype auto: measured, then used
        assert set(picked[0]["gflops"]) == {"fp32", "bf16"} and min(picked[0]["gflops"].values()) > 0


def test_freeze_strategies(recipe):
    r, _ = recipe
    llm = load_file(str(r / "llm_sft" / "model.safetensors"))
    pre = load_file(str(r / "vlm_pre" / "model.safetensors"))
    sft = load_file(str(r / "vlm_sft" / "model.safetensors"))
    # pretrain (freeze_llm=2): the LLM is the LLM run's, bit for bit; only the projector learnt
    assert all(torch.equal(pre[k], v) for k, v in llm.items())
    # sft (freeze_llm=1): the first and last layers and the projector change, the middle does not
    n_layers = json.loads((r / "vlm_sft" / "config.json").read_text())["llm"]["n_layers"]
    changed = {k for k in sft if not torch.equal(sft[k], pre[k])}
    assert any(k.startswith("projector.") for k in changed)
    assert any(k.startswith("llm.layers.0.") for k in changed)
    assert any(k.startswith(f"llm.layers.{n_layers - 1}.") for k in changed)
    assert not any(k.startswith(("llm.embed", "llm.norm")) for k in changed)


def test_ten_percent_broken_rows_train_to_the_end_all_counted(recipe):
    r, broken = recipe
    end = _metrics_end(r / "vlm_pre")
    assert end["steps_done"] == 5 and end["rows_seen"] == 40  # one whole epoch, nothing crashed
    want: dict[str, int] = {}
    for reason in broken.values():
        want[reason] = want.get(reason, 0) + 1
    assert end["skipped"] == want and end["skipped_rows"] == len(broken) == 4


def test_weights_are_safetensors_without_the_pretrained_encoder(recipe):
    r, _ = recipe
    run = r / "vlm_sft"
    assert not list(run.glob("*.pt")) and not list(run.glob("*.bin")) and not list(run.glob("*.pth"))
    for name in ("model.safetensors", "resume.safetensors"):
        keys = load_file(str(run / name)).keys()
        assert not any("vision." in k for k in keys), name  # referenced by path + hash instead
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["vision"]["path"] == str((r / "clip").resolve()) and len(cfg["vision_hash"]) == 16


def test_a_changed_encoder_folder_is_noticed_on_load(recipe, tmp_path):
    r, _ = recipe
    run = tmp_path / "run"
    shutil.copytree(r / "vlm_sft", run)
    enc = tmp_path / "clip"
    write_tiny_encoder("clip", enc, image_size=32, patch_size=8, seed=5)  # same shape, other weights
    cfg = json.loads((run / "config.json").read_text())
    cfg["vision"]["path"] = str(enc)
    (run / "config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="hash"):
        load_run(run)
    cfg["vision"]["path"] = str(r / "clip")
    (run / "config.json").write_text(json.dumps(cfg))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_run(run)


def test_stage_errors_are_clear(recipe, capsys):
    r, _ = recipe
    assert main(["train", "llm-sft", "--data", str(r / "chat.jsonl"), "--out", str(r / "x"), *FAST]) == 2
    assert "--from" in capsys.readouterr().err
    assert main(["train", "pretrain", "--data", str(r / "cap.jsonl"), "--from-llm", str(r / "llm"), "--out",
                 str(r / "x"), *FAST]) == 2
    assert "--vision-path" in capsys.readouterr().err
    assert main(["train", "pretrain", "--data", str(r / "cap.jsonl"), "--from-llm", str(r / "llm"), "--vision",
                 "nope", "--vision-path", str(r / "clip"), "--out", str(r / "x"), *FAST]) == 2
    assert "clip-b16" in capsys.readouterr().err


def test_a_pretrained_encoder_fine_tunes_its_last_layers_and_travels_with_the_run(recipe, tmp_path, capsys):
    from minimind_v.encoder_files import write_random_encoder

    r, _ = recipe
    enc = write_random_encoder("clip", tmp_path / "clip2", image_size=32, patch_size=8, width=32, layers=2, seed=3)
    pre = ["train", "pretrain", "--data", str(r / "cap.jsonl"), "--images", str(r / "im"), "--from-llm",
           str(r / "llm_sft"), "--vision", "clip-b16", "--vision-path", str(enc), "--out", str(tmp_path / "pre"),
           "--steps", "1", "--batch-size", "4", "--max-len", "200", *FAST]
    assert main(pre) == 0
    sft = ["train", "sft", "--data", str(r / "cap.jsonl"), "--images", str(r / "im"), "--from", str(tmp_path / "pre"),
           "--out", str(tmp_path / "sft"), "--steps", "2", "--batch-size", "4", "--max-len", "200",
           "--train-vision", "1", "--lr-vision", "1e-2", *FAST]
    assert main(sft) == 0
    before = load_file(enc / "model.safetensors")
    after = load_file(tmp_path / "sft" / "vision" / "model.safetensors")  # the tuned encoder is inside the run
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(".layers.1." in k for k in changed) and not any(".layers.0." in k or "embeddings" in k for k in changed)
    model, _ = load_run(tmp_path / "sft")
    assert model.cfg.vision.path.endswith("vision")
    assert main(sft[:-len(FAST)] + ["--feature-cache", str(tmp_path / "fc"), *FAST]) != 0
    assert "needs a frozen encoder" in capsys.readouterr().err
