"""`minimind-v ask / chat / caption`: real commands against the tiny random run."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import minimind_v
from minimind_v.cli import main


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    d = tmp_path_factory.mktemp("pics")
    Image.new("RGB", (48, 48), (220, 20, 20)).save(d / "red.png")
    Image.new("RGB", (30, 40), (20, 20, 220)).save(d / "blue.jpg")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nthis is not really a png")
    Image.new("RGB", (32, 32)).save(d / "half.png")
    (d / "half.png").write_bytes((d / "half.png").read_bytes()[:40])  # truncated
    (d / "notes.txt").write_text("not an image, not even tried")
    return d


def run_chat(tiny_run, lines, monkeypatch, capsys, *extra):
    monkeypatch.setattr(sys, "stdin", io.StringIO("".join(line + "\n" for line in lines)))
    rc = main(["chat", "--model", str(tiny_run), "--device", "cpu", "--max-new-tokens", "6", *extra])
    out, err = capsys.readouterr()
    return rc, out, err


def test_ask_prints_the_greedy_answer(tiny_run, pics, capsys):
    assert main(["ask", "--model", str(tiny_run), "--device", "cpu", "--image", str(pics / "red.png"),
                 "--max-new-tokens", "5", "What color is the circle?"]) == 0
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    im = Image.open(pics / "red.png").convert("RGB")
    assert capsys.readouterr().out.strip() == vlm.answer([im], "<image>\nWhat color is the circle?", max_new_tokens=5)


def test_chat_multi_turn_with_images_reset_and_exit(tiny_run, pics, monkeypatch, capsys):
    lines = [f"/image {pics / 'red.png'}", "What color is the circle?", "And now?", "/reset",
             f"/image {pics / 'missing.png'}", f"/image {pics / 'broken.png'}", "/bogus", "Hello!", "/exit",
             "never read"]
    rc, out, err = run_chat(tiny_run, lines, monkeypatch, capsys)
    assert rc == 0
    assert err.count("tokens/s") == 3  # one speed line per answer
    assert "image 1 attached" in err and "conversation cleared" in err
    assert "does not exist" in err and "could not be read" in err and "unknown command '/bogus'" in err
    # the first answer is what the Python API streams for the same conversation
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    im = Image.open(pics / "red.png").convert("RGB")
    first = "".join(vlm.stream_chat([{"role": "user", "content": "<image>\nWhat color is the circle?"}], [im],
                                    max_new_tokens=6))
    assert out.startswith(first + "\n")
    # after /reset the broken images attached nothing: "Hello!" is a plain text question
    hello = "".join(vlm.stream_chat([{"role": "user", "content": "Hello!"}], max_new_tokens=6))
    assert out.rstrip("\n").endswith(hello.rstrip("\n"))


def test_chat_marker_mismatch_and_context_overflow_are_reported(tiny_run, pics, monkeypatch, capsys):
    lines = [f"/image {pics / 'red.png'}", "<image> <image> two markers, one image", "word " * 400]
    rc, out, err = run_chat(tiny_run, lines, monkeypatch, capsys)
    assert rc == 0
    assert "2 <image> markers but 1 images" in err
    assert "context" in err  # one message longer than the whole context: an error, not a crash


def test_chat_forgets_old_turns_when_the_context_is_full(tiny_run, monkeypatch, capsys):
    lines = ["Describe the image. " * 12 + "Hi"] * 8  # ~60 tokens a turn, context 256
    rc, out, err = run_chat(tiny_run, lines, monkeypatch, capsys, "--temperature", "1", "--seed", "1")
    assert rc == 0 and err.count("tokens/s") == 8 and "forgot the oldest exchange" in err


def test_chat_reads_piped_stdin_as_a_real_command(tiny_run, pics):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "minimind_v.cli", "chat", "--model", str(tiny_run),
                           "--device", "cpu", "--max-new-tokens", "4"],
                          input=f"/image {pics / 'blue.jpg'}\nWhat is in the image?\n", capture_output=True,
                          text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "tokens/s" in proc.stderr and "Traceback" not in proc.stderr


def test_caption_a_folder_skips_broken_files(tiny_run, pics, capsys):
    rc = main(["caption", str(pics), "--model", str(tiny_run), "--device", "cpu", "--max-new-tokens", "4",
               "--batch-size", "1", "--jsonl"])
    out, err = capsys.readouterr()
    assert rc == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["file"] for r in rows] == ["blue.jpg", "red.png"]
    vlm = minimind_v.load(str(tiny_run), device="cpu")
    im = Image.open(pics / "red.png").convert("RGB")
    assert rows[1]["caption"] == vlm.answer([im], "<image>\nDescribe the image.", max_new_tokens=4)
    assert "skipped broken.png" in err and "skipped half.png" in err and "notes.txt" not in err
    assert "captioned 2 images, skipped 2" in err
    # batching does not change the captions
    assert main(["caption", str(pics), "--model", str(tiny_run), "--device", "cpu", "--max-new-tokens", "4"]) == 0
    assert capsys.readouterr().out.splitlines() == [f"{r['file']}\t{r['caption']}" for r in rows]


def test_caption_errors(tiny_run, tmp_path, capsys):
    assert main(["caption", str(tmp_path / "nope"), "--model", str(tiny_run)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert main(["caption", str(tmp_path), "--model", str(tiny_run)]) == 2
    assert "no images" in capsys.readouterr().err
