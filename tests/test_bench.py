"""`minimind-v bench` at tiny scale: the JSON it writes, and the pieces its figures rest on."""
import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from minimind_v.cli import main
from minimind_v.data.batches import PadCollate
from minimind_v.data.tokenizer import train_tokenizer
from minimind_v.eval.bench_data import CutEncoder, build_model, synthetic_samples
from minimind_v.eval.flops import flops_per_step, summary
from minimind_v.eval.memory import PeakMemory
from minimind_v.train.trainer import lm_loss

TINY = ["--preset", "shapes-tiny", "--batch-size", "2", "--max-len", "96", "--warmup", "1", "--steps", "1",
        "--repeats", "2", "--decode-tokens", "4", "--decode-batch", "2", "--dtype", "fp32", "--peak-tflops", "0.05"]


@pytest.fixture(scope="module")
def tiny_model_and_tok():
    model = build_model("shapes-tiny", "scratch", "mlp", 96)
    rows = synthetic_samples(6, (3, 40), model.vision.image_size)
    tok = train_tokenizer([m["content"] for r in rows for m in r["conversations"]], vocab_size=400)
    return model, tok, rows


def test_bench_json_has_every_figure(tmp_path, capsys):
    out = tmp_path / "b.json"
    assert main(["bench", *TINY, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    printed = capsys.readouterr()
    assert res == json.loads(printed.out)
    assert "of the fp32 matmul peak, 50.0 GFLOP/s (--peak-tflops)" in printed.err
    train = res["train"]["fp32"]
    for key in ("samples_per_s", "tokens_per_s", "data_s", "vision_s", "llm_forward_s", "backward_s", "optimizer_s",
                "step_s", "mfu", "achieved_tflops"):
        s = train[key]
        assert s["n"] == 2 and s["min"] <= s["median"] <= s["max"], key
    phases = sum(train[k]["median"] for k in ("data_s", "vision_s", "llm_forward_s", "backward_s", "optimizer_s"))
    assert phases == pytest.approx(train["step_s"]["median"], rel=0.3)
    assert train["mfu"]["median"] == pytest.approx(train["achieved_tflops"]["median"] / 0.05, rel=0.01)
    assert all(shape[0] == 2 and shape[1] <= 96 for shape in train["batch_shapes"])
    dec = res["decode"]["fp32"]
    for b in ("batch1", "batch2"):
        assert dec[b]["decode_tokens_per_s"]["median"] > 0 and dec[b]["time_to_first_token_s"]["min"] > 0
    assert train["peak_memory_mb"]["peak_mb"] > 50 and res["params_M"]["llm"] > 0
    assert res["peak_source"] == "--peak-tflops" and res["dtypes"] == ["fp32"]
    eff = res["efficiency"]["fp32"]  # achieved FLOP/s against the peak of the precision trained in
    assert eff["peak_tflops"] == 0.05 and eff["share_of_peak"] == pytest.approx(train["mfu"]["median"], abs=1e-4)
    assert eff["share_of_peak_model"] >= eff["share_of_peak"] > 0


def test_bench_reads_a_parquet_set_and_groups_lengths(tmp_path, capsys):
    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "red").save(buf, format="JPEG")
    convs = [json.dumps([{"role": "user", "content": "<image>\nDescribe."},
                         {"role": "assistant", "content": "red " * n}]) for n in (2, 30, 3, 28, 4, 26, 5, 27)]
    pq.write_table(pa.table({"conversations": convs, "image_bytes": [buf.getvalue()] * 8}), tmp_path / "d.parquet")
    args = ["bench", *TINY, "--data", str(tmp_path / "d.parquet"), "--only", "train"]
    assert main(args) == 0
    plain = json.loads(capsys.readouterr().out)
    assert "decode" not in plain
    plain_widths = [s[1] for s in plain["train"]["fp32"]["batch_shapes"]]
    assert main(args + ["--group-by-length"]) == 0
    widths = sorted(s[1] for s in json.loads(capsys.readouterr().out)["train"]["fp32"]["batch_shapes"])
    assert widths[0] < min(plain_widths) - 20  # in file order every batch pairs a short and a long sample
    assert main(args + ["--pack", "--max-len", "200", "--fused-adamw"]) == 0
    packed = json.loads(capsys.readouterr().out)["train"]["fp32"]
    # the trainer fuses AdamW on CPU and CUDA, so both report the fused kernel
    assert packed["optimizer"] == "AdamW fused" and plain["train"]["fp32"]["optimizer"] == "AdamW fused"
    assert all(rows == 1 for rows, _ in packed["batch_shapes"])  # two samples share one row
    assert packed["samples_per_s"]["median"] > 0


def test_bench_refuses_bad_sections_and_vision(capsys):
    assert main(["bench", *TINY, "--only", "train,fly"]) == 2
    assert "--only" in capsys.readouterr().err
    assert main(["bench", *TINY, "--vision", "/no/such/encoder"]) == 2


def test_timing_the_encoder_apart_leaves_the_loss_unchanged(tiny_model_and_tok):
    # the bench runs the encoder on its own (to time it) and hands the trainer's loss its features
    model, tok, rows = tiny_model_and_tok
    enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, 96)
    batch = PadCollate()([enc(r) for r in rows[:3]])
    with torch.no_grad():
        ref, _ = lm_loss(model, batch)
        split = {**{k: v for k, v in batch.items() if k != "pixel_values"},
                 "vision_feats": model.vision(batch["pixel_values"])}
        ours, _ = lm_loss(model, split)
    assert float(ours) == pytest.approx(float(ref), rel=1e-6)


def test_cut_encoder_cuts_like_the_reference(tiny_model_and_tok):
    model, tok, rows = tiny_model_and_tok
    long = {**rows[0], "conversations": [rows[0]["conversations"][0],
                                         {"role": "assistant", "content": "red blue " * 200}]}
    enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, 50)
    out = enc(long)
    assert len(out["input_ids"]) == len(out["labels"]) == 50
    assert int((out["input_ids"] == model.cfg.image_token_id).sum()) == model.tokens_per_image


def test_flops_per_step_counts_what_the_docstring_says(tiny_model_and_tok):
    model, tok, rows = tiny_model_and_tok
    enc = CutEncoder(tok, model.vision.preprocess, model.tokens_per_image, model.cfg.image_token, 96)
    batch = PadCollate()([enc(r) for r in rows[:2]])
    llm = model.llm
    body = sum(p.numel() for n, p in llm.named_parameters() if "embed_tokens" not in n)
    real, labelled = int(batch["attention_mask"].sum()), int((batch["labels"][:, 1:] != -100).sum())
    tcfg = model.vision.tower.config
    patches = (tcfg.image_size // tcfg.patch_size) ** 2 + 1
    expected = (6 * body * real + 6 * llm.cfg.vocab_size * llm.cfg.dim * labelled
                + 6 * sum(p.numel() for p in model.projector.parameters()) * model.tokens_per_image * 2
                + 2 * sum(p.numel() for p in model.vision.parameters()) * patches * 2)
    assert flops_per_step(model, batch) == expected


def test_summary_and_peak_memory():
    assert summary([3.0, 1.0, 2.0]) == {"min": 1.0, "median": 2.0, "max": 3.0, "n": 3}
    mem = PeakMemory(torch.device("cpu"))
    mem.reset()
    before = mem.read()
    block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
    after = mem.read()
    del block
    assert after["peak_mb"] >= before["peak_mb"] + (60 if after["exact"] else 0)


def test_bench_an_existing_run_directory(tiny_run, capsys):
    args = ["bench", "--model", str(tiny_run), "--batch-size", "2", "--max-len", "64", "--warmup", "0", "--steps", "1",
            "--repeats", "1", "--decode-tokens", "3", "--decode-batch", "2", "--dtype", "fp32"]
    assert main(args) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["params_M"]["llm"] < 0.1  # the tiny run's own model, not a preset
    assert res["train"]["fp32"]["samples_per_s"]["n"] == 1 and "batch2" in res["decode"]["fp32"]


def test_bench_measures_each_precisions_own_peak(tiny_run, capsys):
    args = ["bench", "--model", str(tiny_run), "--batch-size", "2", "--max-len", "64", "--warmup", "0", "--steps", "1",
            "--repeats", "1", "--only", "train", "--dtype", "fp32", "--dtype", "bf16"]
    assert main(args) == 0
    printed = capsys.readouterr()
    res = json.loads(printed.out)
    assert res["peak_source"] == "measured matmul" and set(res["efficiency"]) == {"fp32", "bf16"}
    for dt, eff in res["efficiency"].items():
        assert eff["peak_tflops"] == pytest.approx(res["peak_tflops"][dt], abs=1e-4) and eff["peak_tflops"] > 0
        # the report rounds the share to 4 decimals
        assert eff["share_of_peak"] == pytest.approx(eff["achieved_tflops"] / eff["peak_tflops"], rel=1e-2, abs=6e-5)
        assert f"train {dt}: " in printed.err and f"of the {dt} matmul peak" in printed.err


def test_decoding_bandwidth_limit_counts_the_bytes_a_step_reads():
    import torch

    from minimind_v.config import VisionConfig, VLMConfig, llm_preset
    from minimind_v.eval.decode_bench import bandwidth_limit, weight_bytes_per_token, with_weights
    from minimind_v.model.vlm import MiniMindVLM

    cfg = VLMConfig(llm=llm_preset("shapes-tiny"), vision=VisionConfig(kind="cnn", image_size=48, width=32, layers=1))
    model = MiniMindVLM(cfg)
    llm = model.llm
    params = sum(p.numel() for p in llm.parameters())
    tied = llm.lm_head.weight is llm.embed_tokens.weight
    expected = params * 4 if tied else (params - llm.embed_tokens.weight.numel()) * 4
    assert weight_bytes_per_token(model) == expected
    assert expected // 2 <= weight_bytes_per_token(with_weights(model, "bf16")) < expected * 0.51  # norms stay fp32
    assert weight_bytes_per_token(with_weights(model, "int8")) < expected // 3  # int8 rows + fp32 row scales
    b = bandwidth_limit(model, torch.device("cpu"), tokens_per_s=100.0)
    assert b["copy_gb_s"] > 0 and b["limit_tokens_per_s"] > 0
    assert abs(b["share_of_limit"] - 100.0 / b["limit_tokens_per_s"]) < 2e-3


def test_bench_tokenises_with_the_tokenizer_it_is_given(tmp_path, capsys):
    from minimind_v.data.chat import encode_conversation
    from minimind_v.data.tokenizer import load_tokenizer, save_tokenizer

    buf = io.BytesIO()
    Image.new("RGB", (40, 40), "blue").save(buf, format="JPEG")
    convs = [[{"role": "user", "content": "<image>\nDescribe."}, {"role": "assistant", "content": "blue " * n}]
             for n in (3, 9, 5, 7)]
    data = tmp_path / "d.parquet"
    pq.write_table(pa.table({"conversations": [json.dumps(c) for c in convs], "image_bytes": [buf.getvalue()] * 4}),
                   data)
    # trained on other text, with next to no merges: far more tokens per sample than one trained on the rows;
    # its image placeholder is a token of its own, at an id other than ours
    tok = train_tokenizer(["unrelated words about rivers and roads"], vocab_size=280)
    tok.add_tokens(["<img>"], special_tokens=True)
    save_tokenizer(tok, tmp_path / "tok")
    args = ["bench", *TINY, "--data", str(data), "--only", "train", "--max-len", "400"]
    assert main([*args, "--tokenizer", str(tmp_path / "tok"), "--image-token", "<img>"]) == 0
    res = json.loads(capsys.readouterr().out)
    used = res["tokenizer"]
    assert used["source"] == str((tmp_path / "tok").resolve()) and used["size"] == len(tok)
    assert used["image_token"] == "<img>" and used["image_token_id"] == tok.convert_tokens_to_ids("<img>") != 3
    loaded = load_tokenizer(tmp_path / "tok")
    lengths = [len(encode_conversation(loaded, c, tokens_per_image=used["tokens_per_image"], image_token="<img>")[0])
               for c in convs]
    assert res["data"]["real_tokens_per_sample"]["mean"] == pytest.approx(sum(lengths) / 4, abs=0.05)
    assert res["data"]["longest_uncut"] == max(lengths) and res["data"]["cut_at_max_len"] == 0
    # file order, batches of 2, one warm-up batch: the two timed steps read the last two samples and the first two
    assert res["train"]["fp32"]["real_tokens_per_sample"] == pytest.approx(sum(lengths) / 4, abs=0.05)

    assert main(args) == 0  # without --tokenizer: one trained on the rows themselves, a token per word or so
    own = json.loads(capsys.readouterr().out)
    assert own["tokenizer"]["source"].startswith("trained on the benchmark rows")
    assert own["data"]["real_tokens_per_sample"]["mean"] < res["data"]["real_tokens_per_sample"]["mean"] - 10


def test_bench_refuses_a_placeholder_its_tokenizer_lacks(tmp_path, capsys):
    from minimind_v.data.tokenizer import save_tokenizer

    save_tokenizer(train_tokenizer(["some other text"], vocab_size=280), tmp_path / "tok")
    assert main(["bench", *TINY, "--tokenizer", str(tmp_path / "tok"), "--image-token", "<img>"]) == 2
    assert "<img>" in capsys.readouterr().err
    assert main(["bench", *TINY, "--image-token", "<img>"]) == 2  # the tokenizer trained on the rows has ours
    assert "--image-token" in capsys.readouterr().err
