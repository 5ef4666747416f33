"""Video as frames: sampling, GIF without extra packages, other containers through PyAV, the moving-object kind
of the shapes world, `ask --video`, and the server's video_url part."""
from __future__ import annotations

import base64
import io
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import png
from minimind_v.cli import main
from minimind_v.data.chatmix import eval_items, make_sample
from minimind_v.data.motion import (DIRECTIONS, HELD_OUT_WORDINGS, STEP, TRAIN_WORDINGS, render_clip,
                                    sample_clip)
from minimind_v.data.video import frame_indices, read_frames, save_gif
from minimind_v.eval.score import read_key, score

GREYS = [10 + 20 * i for i in range(10)]  # frame i is a flat grey of this level: which frame came back is visible


def grey_frames(size: int = 32) -> list[Image.Image]:
    return [Image.new("RGB", (size, size), (g, g, g)) for g in GREYS]


def level(im: Image.Image) -> int:
    return round(im.getpixel((5, 5))[0])


def test_frames_come_from_the_middle_of_equal_stretches():
    assert frame_indices(10, 4) == [1, 3, 6, 8]
    assert frame_indices(100, 1) == [50]
    assert frame_indices(3, 6) == [0, 0, 1, 1, 2, 2]  # a short clip repeats frames: always n images
    with pytest.raises(ValueError, match="no frames"):
        frame_indices(0, 4)


def test_gif_frames_without_extra_packages(tmp_path):
    gif = save_gif(grey_frames(), tmp_path / "clip.gif")
    frames = read_frames(gif, 4)
    assert [f.mode for f in frames] == ["RGB"] * 4
    assert [level(f) for f in frames] == [GREYS[i] for i in (1, 3, 6, 8)]
    assert [level(f) for f in read_frames(gif.read_bytes(), 2)] == [GREYS[2], GREYS[7]]


def test_bad_videos_get_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_frames(tmp_path / "missing.gif", 4)
    (tmp_path / "still.png").write_bytes(png())
    with pytest.raises(ValueError, match="still image"):
        read_frames(tmp_path / "still.png", 4)
    with pytest.raises(ValueError, match="frames must be between"):
        read_frames(tmp_path / "still.png", 0)
    with pytest.raises(ValueError, match="PyAV|could not be read"):
        read_frames(b"certainly not a video", 4)


def test_mp4_through_pyav(tmp_path):
    av = pytest.importorskip("av", reason="reading mp4 needs PyAV (pip install av)")
    path = tmp_path / "clip.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=10)
        stream.width = stream.height = 32
        stream.pix_fmt = "yuv420p"
        for im in grey_frames():
            out.mux(stream.encode(av.VideoFrame.from_image(im)))
        out.mux(stream.encode(None))
    got = [level(f) for f in read_frames(path, 4)]
    assert all(abs(g - GREYS[i]) <= 6 for g, i in zip(got, (1, 3, 6, 8))), got  # lossy codec: close, in order


@pytest.mark.parametrize("direction", DIRECTIONS)
def test_a_clip_moves_one_object_one_cell_and_keeps_the_others(direction):
    clip = sample_clip(random.Random(7), 5, direction)
    first, last = clip.frames[0], clip.frames[-1]
    moved = [(a, b) for a, b in zip(first.objects, last.objects) if a != b]
    assert len(moved) == 1 and moved[0][0] == clip.mover
    a, b = moved[0]
    dr, dc = STEP[direction]
    assert (b.row - a.row, b.col - a.col) == (dr, dc)
    assert b.cx - a.cx == pytest.approx(dc / 3) and b.cy - a.cy == pytest.approx(dr / 3)
    frames = render_clip(clip, 48, random.Random(0), jitter=True)
    backgrounds = [float(np.median(np.asarray(f.convert("L")))) for f in frames]  # the background's grey
    assert len(frames) == 5 and max(backgrounds) - min(backgrounds) <= 4  # one style a clip, not one a frame


def test_motion_in_training_and_in_the_balanced_evaluation():
    rng = random.Random(0)
    def opening(template: str) -> str:
        return template.split("{obj}")[0]

    seen = set()
    for _ in range(300):
        s = make_sample(rng, kinds="motion")
        question = s["conversations"][0]["content"].split("\n")[-1]
        assert len(s["images"]) == s["conversations"][0]["content"].count("<image>") in (3, 4, 5)
        assert not any(question.startswith(opening(t)) for t in HELD_OUT_WORDINGS)  # never trained on
        seen |= {t for t in TRAIN_WORDINGS if question.startswith(opening(t))}
    assert seen == set(TRAIN_WORDINGS)
    items = [it for it in eval_items(8, image_size=48) if it["kind"] == "motion"]
    canonical = [it for it in items if it["wording"] == "canonical"]
    assert sorted(it["key"] for it in canonical) == sorted(DIRECTIONS * 2)
    assert all(len(it["images"]) == 4 for it in items) and len(items) == 16
    assert score("motion", "It moves left.", "left") == 1.0
    assert score("motion", "It moves left, then right.", "left") == 0.0
    assert read_key("motion", "It goes up.") == "up"


def test_ask_with_a_video(tiny_run, tmp_path, monkeypatch):
    from minimind_v.infer.api import VLMChat

    gif = save_gif(grey_frames(), tmp_path / "clip.gif")
    asked = []
    answer = VLMChat.answer
    monkeypatch.setattr(VLMChat, "answer", lambda self, images, q, **kw: asked.append((images, q))
                        or answer(self, images, q, **kw))
    assert main(["ask", "--model", str(tiny_run), "--device", "cpu", "--video", str(gif), "--frames", "3",
                 "--max-new-tokens", "4", "Which way does the red circle move?"]) == 0
    (images, question), = asked
    assert [level(im) for im in images] == [GREYS[i] for i in frame_indices(10, 3)]
    assert question.count("<image>") == 3 and question.endswith("Which way does the red circle move?")
    assert main(["ask", "--model", str(tiny_run), "--video", str(tmp_path / "none.gif"), "Which way?"]) == 2
