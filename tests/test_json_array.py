"""LLaVA's `.json` files: one JSON array of rows, indexed without loading it, read like JSON lines."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from PIL import Image

from minimind_v.data.formats import SampleReader
from minimind_v.data.json_array import JsonArrayRows, index_array
from minimind_v.data.rows import JsonlRows, open_rows


def _llava_rows(n: int) -> list[dict]:
    """Rows in LLaVA-Pretrain's layout: id, image path, ShareGPT from/value turns (with brackets, quotes and
    non-ASCII text inside strings, which a naive scanner would miscount)."""
    return [{"id": f"{i:09d}", "image": f"00000/{i:09d}.jpg",
             "conversations": [{"from": "human", "value": "<image>\nWhat is ] in [ this, \"photo\"? 图片 é"},
                               {"from": "gpt", "value": "a cat {on} a mat " + "x" * (i % 50)}]} for i in range(n)]


def _write_images(root, n):
    (root / "00000").mkdir(parents=True)
    for i in range(n):
        Image.new("RGB", (16, 16), (i * 40 % 255, 80, 120)).save(root / "00000" / f"{i:09d}.jpg")


def test_an_array_file_reads_row_by_row_like_json_lines(tmp_path):
    rows = _llava_rows(400)
    path = tmp_path / "blip_laion_cc_sbu_558k.json"
    path.write_text("\ufeff" + json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")  # BOM, pretty
    offsets, lengths = index_array(path, chunk=1000)  # tiny chunks: rows straddle every boundary
    assert len(offsets) == 400 and (lengths > 0).all()
    opened = open_rows(path)
    assert isinstance(opened, JsonArrayRows)
    assert all(opened[i] == rows[i] for i in range(0, 400, 7))
    _write_images(tmp_path, 3)
    reader = SampleReader(path)
    s = reader[2]
    assert s["conversations"][0] == {"role": "user", "content": rows[2]["conversations"][0]["value"]}
    assert len(s["images"]) == 1 and s["images"][0].size == (16, 16)
    assert list(reader.approx_lengths()) == list(lengths)


def test_json_lines_with_a_json_suffix_stay_json_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n".join(json.dumps(r) for r in _llava_rows(3)))
    assert isinstance(open_rows(path), JsonlRows) and len(open_rows(path)) == 3


@pytest.mark.parametrize("cut", [-40, -1])
def test_a_cut_off_array_is_a_clear_error(tmp_path, cut):
    path = tmp_path / "mix665k.json"
    path.write_bytes(json.dumps(_llava_rows(50)).encode()[:cut])
    with pytest.raises(ValueError, match=r"cut off or broken after \d+ complete rows.*incomplete"):
        JsonArrayRows(path)


def test_an_array_of_non_objects_is_a_bad_row(tmp_path):
    path = tmp_path / "odd.json"
    path.write_text('[{"conversations": []}, 5, "text"]')
    rows = JsonArrayRows(path)
    assert len(rows) == 3
    from minimind_v.data.rows import BadRow

    with pytest.raises(BadRow, match="element 2 is a JSON int"):
        rows[1]


def test_data_check_and_convert_read_an_array(tmp_path):
    rows = _llava_rows(4)
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(rows))
    _write_images(tmp_path, 4)
    out = tmp_path / "llava.parquet"
    for args in (["data", "check", str(path)], ["data", "convert", str(path), str(out)]):
        p = subprocess.run([sys.executable, "-m", "minimind_v.cli", *args], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr[-2000:]
    converted = SampleReader(out)
    assert len(converted) == 4 and converted.record(3)["conversations"][1]["content"] == rows[3]["conversations"][1]["value"]
