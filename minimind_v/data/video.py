"""Video as frames: a clip is sampled evenly into still images, which the model then reads as several images.

Animated GIF, WebP and PNG are read by Pillow alone; any other container (mp4, webm, mov, ...) through PyAV
(`pip install av`) when it is installed. Frames are taken from the middle of n equal stretches of the clip, so
a clip of any length gives exactly n frames spread over all of it (a clip of fewer frames repeats some).
"""
from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, UnidentifiedImageError

MAX_FRAMES = 64  # a model reads every frame as a whole image: more than this is a mistake, not a request


def frame_indices(total: int, n: int) -> list[int]:
    """n indices spread evenly over `total` frames: the middle frame of each of n equal stretches."""
    if total < 1:
        raise ValueError("the video has no frames")
    return [min(total - 1, int((i + 0.5) * total / n)) for i in range(n)]


def animation_frames(im: Image.Image, n_frames: int) -> list[Image.Image]:
    """n frames, sampled evenly, of an opened animated image -> RGB images in time order. Only the chosen frames
    are decoded and kept (the server's video_url path calls this on a size-checked image)."""
    chosen = frame_indices(getattr(im, "n_frames", 1), n_frames)
    kept: dict[int, Image.Image] = {}
    for i in sorted(set(chosen)):
        im.seek(i)
        kept[i] = im.convert("RGB")
    return [kept[i] for i in chosen]


def _pyav_frames(data: io.BytesIO, n_frames: int, name: str) -> list[Image.Image]:
    try:
        import av
    except ImportError:
        raise ValueError(f"{name} is not an animated image; reading other video containers needs PyAV "
                         f"(pip install av). Animated GIF, WebP and PNG work without it") from None

    def decode(keep) -> dict[int, Image.Image]:
        data.seek(0)
        with av.open(data) as container:
            if not container.streams.video:
                raise ValueError(f"{name} has no video stream")
            return {i: f.to_image() for i, f in enumerate(container.decode(video=0)) if keep(i)}

    try:
        with av.open(data) as container:
            total = container.streams.video[0].frames if container.streams.video else 0
        # The container's frame count, when it has one, lets one pass keep only the chosen frames; it can be
        # missing or wrong, and then a first pass counts them.
        if total <= 0:
            total = len(decode(lambda i: False))
        chosen = frame_indices(total, n_frames)
        kept = decode(set(chosen).__contains__)
        if any(i not in kept for i in chosen):  # the stated count was wrong: count, then choose again
            chosen = frame_indices(len(decode(lambda i: False)), n_frames)
            kept = decode(set(chosen).__contains__)
    except av.error.FFmpegError as e:
        raise ValueError(f"{name} could not be read as a video: {e}") from None
    return [kept[i].convert("RGB") for i in chosen]


def read_frames(source: str | Path | bytes, n_frames: int = 8, name: str | None = None) -> list[Image.Image]:
    """A video file's path or bytes -> n_frames RGB images in time order (a shorter clip repeats frames)."""
    if not 1 <= n_frames <= MAX_FRAMES:
        raise ValueError(f"frames must be between 1 and {MAX_FRAMES}, got {n_frames}")
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise FileNotFoundError(f"video {str(path)!r} does not exist")
        name, data = name or repr(str(path)), path.read_bytes()
    else:
        name, data = name or "the video", bytes(source)
    try:
        im = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        return _pyav_frames(io.BytesIO(data), n_frames, name)
    if getattr(im, "n_frames", 1) < 2:
        raise ValueError(f"{name} is a still image, not a video: send it as an image")
    return animation_frames(im, n_frames)


def save_gif(frames: list[Image.Image], path: str | Path, ms_per_frame: int = 250) -> Path:
    """Write frames as a looping GIF, e.g. a shapes-world clip from `motion.render_clip`."""
    if not frames:
        raise ValueError("no frames to write")
    frames[0].save(path, save_all=True, append_images=frames[1:], duration=ms_per_frame, loop=0)
    return Path(path)
