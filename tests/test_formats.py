"""Real dataset formats: JSON-lines + image folder, parquet, saved `datasets`; lazy reads; broken rows skipped."""
from __future__ import annotations

import importlib.util
import json

import pytest
import torch
from PIL import Image

from conftest import shared_dir
from minimind_v.data.encode import SampleEncoder
from minimind_v.data.formats import (BadRow, JsonlRows, ParquetRows, SampleReader, check_conversation,
                                     parse_conversations)
from minimind_v.data.rows import index_lines
from minimind_v.data.robust import RowDataset, SkipCollate, SkipTally
from minimind_v.data.synthetic import synthetic_rows, write_jsonl, write_parquet
from minimind_v.model.checkpoint import load_run


def test_index_lines_skips_blank_lines_and_handles_no_final_newline(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_bytes(b'{"a": 1}\n\n{"a": 2}\r\n\r\n{"a": 3}')
    offs = index_lines(p, chunk=4)  # a tiny chunk: lines straddle chunk boundaries
    rows = JsonlRows(p)
    assert len(offs) == 3 and [rows[i]["a"] for i in range(3)] == [1, 2, 3]


def test_jsonl_reads_rows_on_demand_with_multi_image(tmp_path):
    rows, _ = synthetic_rows(5, seed=1, images=2)
    path = write_jsonl(rows, tmp_path / "d.jsonl", tmp_path / "imgs")
    line = json.loads(path.read_text().splitlines()[3])
    assert line["image"] == "000003_0.jpg, 000003_1.jpg"  # MiniMind-V's comma-separated form
    reader = SampleReader(path, image_dir=tmp_path / "imgs")
    s = reader[3]
    assert s["conversations"] == rows[3]["conversations"]
    assert len(s["images"]) == 2 and all(isinstance(im, Image.Image) and im.mode == "RGB" for im in s["images"])
    assert reader.rows._fh is not None and len(reader.rows.offsets) == 5  # an index, not the parsed rows


def test_parquet_reads_one_row_group_at_a_time(tmp_path):
    rows, _ = synthetic_rows(50, seed=2)
    path = write_parquet(rows, tmp_path / "d.parquet", row_group_size=8)
    reader = SampleReader(path)
    assert len(reader) == 50 and reader.blocks()[:2] == [(0, 8), (8, 16)]
    s = reader[17]
    assert s["conversations"] == rows[17]["conversations"]
    assert s["images"][0].size == Image.open(__import__("io").BytesIO(rows[17]["images"][0])).size
    for i in range(50):
        reader.rows[i]
    assert len(reader.rows._cache) == 4  # memory is bounded by the cache, not the file


def test_parquet_with_huge_row_groups_warns(tmp_path, monkeypatch):
    rows, _ = synthetic_rows(8, seed=2)
    path = write_parquet(rows, tmp_path / "d.parquet", row_group_size=8)
    monkeypatch.setattr(ParquetRows, "LARGE_GROUP_BYTES", 1000)
    with pytest.warns(UserWarning, match="row-group-size"):
        ParquetRows(path)


def test_parquet_list_of_images_and_list_conversations(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, _ = synthetic_rows(3, seed=3, images=2)
    table = pa.table({"conversations": [r["conversations"] for r in rows],  # a list, not a JSON string
                      "image_bytes": pa.array([r["images"] for r in rows], pa.list_(pa.binary()))})
    pq.write_table(table, tmp_path / "l.parquet")
    s = SampleReader(tmp_path / "l.parquet")[2]
    assert len(s["images"]) == 2 and s["conversations"][1]["content"] == rows[2]["conversations"][1]["content"]


def test_reference_parquet_rows_read(tmp_path):
    """The exact rows the reference benchmark writes (its make_parquet), read by our reader."""
    shared = shared_dir()
    script = shared / "tools" / "refbench" / "ref_bench.py" if shared else None
    if script is None or not script.is_file():
        pytest.skip("shared/tools/refbench/ref_bench.py is not available")
    spec = importlib.util.spec_from_file_location("ref_bench", script)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.make_parquet(str(tmp_path / "ref.parquet"), n=6, img_size=64, n_words=20, n_words_min=5)
    reader = SampleReader(tmp_path / "ref.parquet")
    assert len(reader) == 6
    s = reader[5]
    assert s["conversations"][0]["content"].startswith("<image>") and s["images"][0].size == (64, 64)


def test_saved_hf_dataset(tmp_path):
    datasets = pytest.importorskip("datasets")
    rows, _ = synthetic_rows(4, seed=4)
    ds = datasets.Dataset.from_dict({
        "conversations": [r["conversations"] for r in rows],
        "image": [Image.open(__import__("io").BytesIO(r["images"][0])) for r in rows],
    }).cast_column("image", datasets.Image())
    ds.save_to_disk(str(tmp_path / "hf"))
    reader = SampleReader(tmp_path / "hf")
    s = reader[1]
    assert len(reader) == 4 and s["conversations"] == rows[1]["conversations"] and s["images"][0].size == (48, 48)


@pytest.mark.parametrize("convs,n_images,reason", [
    ([{"role": "user", "content": "<image> hi"}, {"role": "assistant", "content": "yo"}], 0,
     "placeholder_mismatch"),
    ([{"role": "user", "content": "hi"}, {"role": "bot", "content": "yo"}], 0, "bad_roles"),
    ([{"role": "user", "content": "hi"}, {"role": "assistant", "content": " "}], 0, "empty_turn"),
    ([{"role": "user", "content": "hi"}], 0, "bad_roles"),
    ([{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}], 0, "bad_roles"),
])
def test_check_conversation_reasons(convs, n_images, reason):
    with pytest.raises(BadRow) as e:
        check_conversation(convs, n_images)
    assert e.value.reason == reason


def test_sharegpt_keys_and_bad_json():
    assert parse_conversations('[{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"}]') == [
        {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    with pytest.raises(BadRow, match="bad_json"):
        parse_conversations("[{not json")


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_broken_rows_are_skipped_and_counted_by_reason(tmp_path, tiny_run, fmt):
    model, tok = load_run(tiny_run)
    rows, expected = synthetic_rows(40, seed=5, broken=0.25, long_words=300)
    if fmt == "jsonl":
        reader = SampleReader(write_jsonl(rows, tmp_path / "d.jsonl", tmp_path / "im"), image_dir=tmp_path / "im")
    else:
        reader = SampleReader(write_parquet(rows, tmp_path / "d.parquet", row_group_size=16))
    enc = SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=200)
    ds = RowDataset(reader, enc)
    loader = torch.utils.data.DataLoader(ds, batch_size=8, collate_fn=SkipCollate(), num_workers=0)
    tally = SkipTally()
    for batch in loader:
        tally.add(batch)
        if "input_ids" in batch:
            assert batch["pixel_values"].shape[0] == batch["n_samples"]  # one image per good row
    got: dict[str, int] = {}
    assert tally.seen == 40 and sorted(tally.rows) == sorted(expected)
    for i, reason in expected.items():
        got[reason] = got.get(reason, 0) + 1
    assert dict(tally.counts) == got and len(got) == 6  # every fault kind was seeded and named correctly
    assert "skipped 10 of 40 rows" in tally.summary()


def test_tally_stops_when_most_rows_fail():
    tally = SkipTally(min_rows=10)
    with pytest.raises(ValueError, match="unusable"):
        tally.add({"skipped": [("missing_image", i, "x") for i in range(12)]})


def test_folder_of_parquet_files(tmp_path):
    rows, _ = synthetic_rows(10, seed=6)
    (tmp_path / "p").mkdir()
    write_parquet(rows[:4], tmp_path / "p" / "a.parquet")
    write_parquet(rows[4:], tmp_path / "p" / "b.parquet")
    rows_src = ParquetRows(tmp_path / "p")
    assert len(rows_src) == 10 and json.loads(rows_src[7]["conversations"]) == rows[7]["conversations"]


def test_unknown_format_is_a_clear_error(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="cannot tell the format"):
        SampleReader(tmp_path / "x.csv")
    with pytest.raises(FileNotFoundError):
        SampleReader(tmp_path / "nope.jsonl")


def test_text_rows_with_a_placeholder_image_train_as_text(tmp_path, tiny_run):
    """MiniMind-V's SFT set keeps language ability with text-only rows that carry an 8 x 8 black image and no
    <image> marker: they become text-only samples, counted; --unmarked-images error rejects them instead."""
    import io

    from minimind_v.data.check import CheckOptions, check_dataset

    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    rows, _ = synthetic_rows(3, seed=2)
    rows.append({"conversations": [{"role": "user", "content": "What is two plus two?"},
                                   {"role": "assistant", "content": "Four."}], "images": [buf.getvalue()]})
    path = write_parquet(rows, tmp_path / "sft.parquet")
    reader = SampleReader(path)
    rec = reader.record(3)
    assert rec["images"] == [] and rec["unmarked_images"] == 1
    with pytest.raises(BadRow, match="placeholder_mismatch"):
        SampleReader(path, unmarked_images="error").record(3)
    model, tok = load_run(tiny_run)
    ds = RowDataset(reader, SampleEncoder(tok, model.vision.preprocess, model.tokens_per_image, max_len=300))
    batch = SkipCollate()([ds[i] for i in range(4)])
    assert batch["pixel_values"].shape[0] == 3 and batch["n_samples"] == 4  # the text row brought no image
    tally = SkipTally()
    tally.add(batch)
    assert tally.notes == {"text_only_unmarked_image": 1} and "1 rows trained as text-only" in tally.summary()
    report = check_dataset(path, CheckOptions(), progress=False)
    assert report.ok == 4 and report.text_only == 1 and "train as text-only" in report.text()
    strict = check_dataset(path, CheckOptions(unmarked_images="error"), progress=False)
    assert strict.problems == {"placeholder_mismatch": 1}
