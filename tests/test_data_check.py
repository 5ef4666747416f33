"""`minimind-v data check | clean | convert` on datasets seeded with known faults."""
from __future__ import annotations

import json

import pyarrow.parquet as pq
from PIL import Image

from minimind_v.cli import main
from minimind_v.data.check import CheckOptions, check_dataset, tokens_per_image_of
from minimind_v.data.convert import convert
from minimind_v.data.formats import SampleReader
from minimind_v.data.synthetic import synthetic_rows, write_jsonl, write_parquet


def _seeded(tmp_path, n=30, broken=0.2):
    rows, expected = synthetic_rows(n, seed=7, broken=broken, long_words=300)
    good = min(set(range(n)) - set(expected))
    rows.append(dict(rows[good]))  # an exact duplicate of a good row (same messages, same image bytes)
    path = write_jsonl(rows, tmp_path / "d.jsonl", tmp_path / "im")
    return path, rows, expected


def test_check_finds_every_seeded_problem_with_examples(tmp_path, tiny_run):
    path, rows, expected = _seeded(tmp_path)
    opts = CheckOptions(image_dir=str(tmp_path / "im"), tokenizer=str(tiny_run), max_len=200,
                        tokens_per_image=tokens_per_image_of(tiny_run))
    report = check_dataset(path, opts, progress=False)
    want = dict(expected)
    want[len(rows) - 1] = "duplicate"
    assert report.bad == want
    d = report.as_dict()
    assert d["rows"] == len(rows) and d["broken"] == len(want) and d["problems"]["duplicate"] == 1
    assert all(d["examples"][r] for r in d["problems"])
    assert d["tokens"]["max"] <= 200
    assert "too_long" in report.text() and "row " in report.text()


def test_check_oversized_image_and_parallel_workers_agree(tmp_path):
    path, rows, expected = _seeded(tmp_path, n=12, broken=0.0)
    Image.new("RGB", (300, 300)).save(tmp_path / "im" / "000005_0.jpg")
    opts = CheckOptions(image_dir=str(tmp_path / "im"), max_image_pixels=200 * 200)
    one = check_dataset(path, opts, progress=False)
    assert one.bad == {5: "oversized_image", 12: "duplicate"}
    two = check_dataset(path, opts, workers=2, progress=False)
    assert two.bad == one.bad


def test_clean_writes_only_good_rows_and_a_report(tmp_path, tiny_run):
    path, rows, expected = _seeded(tmp_path)
    out = tmp_path / "clean" / "c.parquet"
    rc = main(["data", "clean", str(path), str(out), "--images", str(tmp_path / "im"), "--run", str(tiny_run),
               "--max-len", "200"])
    assert rc == 0
    report = json.loads((tmp_path / "clean" / "c.parquet.report.json").read_text())
    assert report["rows_out"] == len(rows) - len(expected) - 1 == pq.ParquetFile(out).metadata.num_rows
    assert sum(report["check"]["problems"].values()) == len(expected) + 1
    # the cleaned copy checks clean
    assert check_dataset(out, progress=False).bad == {}


def test_convert_jsonl_parquet_jsonl_round_trip_keeps_bytes(tmp_path):
    rows, _ = synthetic_rows(9, seed=8, images=2)
    src = write_jsonl(rows, tmp_path / "a.jsonl", tmp_path / "im")
    r1 = convert(src, tmp_path / "b.parquet", image_dir=tmp_path / "im", row_group_size=4, progress=False)
    assert r1["rows_out"] == 9 and pq.ParquetFile(tmp_path / "b.parquet").metadata.num_row_groups == 3
    r2 = convert(tmp_path / "b.parquet", tmp_path / "c.jsonl", progress=False)
    assert r2["rows_out"] == 9
    back = SampleReader(tmp_path / "c.jsonl", image_dir=r2["images"])
    for i in (0, 8):
        rec = back.record(i)
        assert rec["conversations"] == rows[i]["conversations"]
        assert [open(p, "rb").read() for p in rec["images"]] == rows[i]["images"]  # byte for byte
    assert json.loads((tmp_path / "c.jsonl").read_text().splitlines()[0])["image"].count(",") == 1


def test_convert_cli_single_image_parquet_is_plain_binary(tmp_path):
    rows, _ = synthetic_rows(4, seed=9)
    src = write_jsonl(rows, tmp_path / "a.jsonl", tmp_path / "im")
    assert main(["data", "convert", str(src), str(tmp_path / "b.parquet"), "--images", str(tmp_path / "im")]) == 0
    schema = pq.read_schema(tmp_path / "b.parquet")
    assert str(schema.field("image_bytes").type) == "binary"  # the reference's own layout
    p2 = write_parquet(rows, tmp_path / "ref.parquet")
    assert SampleReader(p2)[0]["conversations"] == SampleReader(tmp_path / "b.parquet")[0]["conversations"]


def test_check_cli_reports_and_exit_code(tmp_path, capsys):
    path, rows, expected = _seeded(tmp_path, n=20)
    rc = main(["data", "check", str(path), "--images", str(tmp_path / "im"), "--json", str(tmp_path / "r.json")])
    assert rc == 1
    out = capsys.readouterr().out
    assert "missing_image" in out and "duplicate" in out
    assert json.loads((tmp_path / "r.json").read_text())["broken"] >= len(expected)
    assert main(["data", "check", str(path), "--max-len", "10"]) == 2  # needs a tokenizer: a clear error


def test_check_text_rows_counts_tokens_and_duplicates(tmp_path, tiny_run):
    path = tmp_path / "t.jsonl"
    path.write_text('{"text": "hello there"}\n{"text": ""}\n{"text": "hello there"}\n{"text": "a b c"}\n')
    report = check_dataset(path, CheckOptions(tokenizer=str(tiny_run), max_len=64), progress=False)
    assert report.bad == {1: "empty_turn", 2: "duplicate"}
    assert len(report.tokens) == 3 and min(report.tokens) >= 2  # every text ends with <|im_end|>


def test_synth_writes_a_dry_run_kit(tmp_path):
    assert main(["data", "synth", str(tmp_path / "kit"), "--rows", "10", "--broken", "0.2"]) == 0
    kit = tmp_path / "kit"
    assert check_dataset(kit / "captions.parquet", progress=False).problems.total() == 2
    assert SampleReader(kit / "captions.jsonl", image_dir=kit / "images").record(0)["images"]
    assert (kit / "tiny-siglip" / "config.json").is_file() and (kit / "text.jsonl").is_file()
