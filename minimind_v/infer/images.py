"""Turn an `image_url` from an API request into a PIL image, safely.

Requests come from the network, so every image is untrusted. Its encoded size is capped before decoding. Its
size is read from the header (PIL's `open` is lazy) and checked before any pixel is decompressed: the pixel
count (a 50 KB PNG can claim 100000 x 100000 pixels: a decompression bomb), each side, and the aspect ratio —
the image processor scales the short side up to the encoder's size, so a 1,000,000 x 16 strip would become
gigabytes after resizing although it has few pixels. Only common still-image formats are decoded. Where an
image may come from is the server operator's choice: inline base64 `data:` URLs always, `file://` paths only
inside one allowed folder, remote http(s) URLs only when explicitly enabled (and never private addresses,
fetch.py).
"""
from __future__ import annotations

import base64
import binascii
import io
import re
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

from ..data.video import animation_frames

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
MAX_PATH_CHARS = 4096  # PATH_MAX on Linux; longer file:// paths are refused before touching the file system
MAX_NAME_CHARS = 255  # NAME_MAX: one path component


class ImageError(ValueError):
    """An image that cannot be used; `code` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_image"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * 1024 * 1024  # encoded file size
    max_pixels: int = 4096 * 4096  # width * height, checked before decoding
    max_side: int = 8192  # longest side in pixels, checked before decoding
    max_aspect: float = 20.0  # long side / short side: what the resize to the encoder's size multiplies
    max_images: int = 4  # per request
    max_video_frames: int = 16  # frames of all videos of a request together
    local_dir: Path | None = None  # file:// URLs must point inside this folder; None refuses them all
    allow_remote: bool = False  # fetch http(s) URLs (the server then makes requests on a client's behalf)
    remote_timeout_s: float = 10.0  # the whole download, not only each read
    trusted_networks: tuple[str, ...] = ()  # CIDRs remote URLs may reach although private (e.g. an image store)


def open_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Encoded bytes -> a lazily opened image whose header passed every size check (no pixel decoded yet)."""
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}", "image_too_large")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageError(f"image refused as a decompression bomb: {e}", "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, MemoryError):
        raise ImageError(f"data is not a supported image ({', '.join(FORMATS)})") from None
    w, h = im.size
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    if w * h > limits.max_pixels:
        raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
                         "image_too_large")
    if max(w, h) > limits.max_side:
        raise ImageError(f"image is {w}x{h}: a side is over the limit of {limits.max_side} pixels", "image_too_large")
    if max(w, h) > limits.max_aspect * min(w, h):
        raise ImageError(f"image is {w}x{h}: its aspect ratio is over the limit of {limits.max_aspect:g}:1",
                         "image_aspect_ratio")
    return im


def load_pixels(im: Image.Image) -> Image.Image:
    """Decode a checked image (first frame of an animation) into RGB."""
    try:
        im.load()
        return im.convert("RGB")
    except MemoryError:
        raise ImageError("image is too large to decode on this server", "image_too_large") from None
    except Exception as e:  # truncated or corrupt data: PIL raises many kinds, all mean "bad image"
        raise ImageError(f"image could not be decoded: {e}") from None


def load_frames(im: Image.Image, n: int) -> list[Image.Image]:
    """n frames, sampled evenly, of a checked animated image (GIF / WebP / PNG) -> RGB images in time order;
    what goes wrong is an ImageError (a 4xx for the server)."""
    if getattr(im, "n_frames", 1) < 2:
        raise ImageError("a video_url must be an animated image (GIF, WebP or PNG) of two frames or more; send a "
                         "still image as image_url", "invalid_video")
    try:
        return animation_frames(im, n)
    except MemoryError:
        raise ImageError("video is too large to decode on this server", "image_too_large") from None
    except Exception as e:  # truncated or corrupt data
        raise ImageError(f"video could not be decoded: {e}", "invalid_video") from None


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Encoded bytes -> RGB image, refusing oversized, bomb-like or non-image data."""
    return load_pixels(open_image(data, limits))


def image_bytes(url: str, limits: ImageLimits) -> bytes:
    """The encoded bytes behind a `data:`, `file://` or (if allowed) `http(s)://` URL. Raises ImageError."""
    if url.startswith("data:"):
        return _data_url_bytes(url, limits)
    scheme = url.partition(":")[0].lower()
    if scheme == "file":
        return _local_bytes(url, limits)
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise ImageError("remote image URLs are disabled on this server; send the image inline as a "
                             "base64 data: URL", "remote_images_disabled")
        from .fetch import fetch_image

        return fetch_image(url, limits)
    raise ImageError(f"unsupported image URL {url[:40]!r}: use a base64 data: URL", "invalid_image_url")


def load_image_url(url: str, limits: ImageLimits) -> Image.Image:
    """A `data:`, `file://` or (if allowed) `http(s)://` URL -> RGB image. Raises ImageError."""
    return decode_image(image_bytes(url, limits), limits)


def _data_url_bytes(url: str, limits: ImageLimits) -> bytes:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise ImageError("malformed data URL: expected data:image/<type>;base64,<data>", "invalid_image_url")
    params = header.split(";")
    if params[0] and not params[0].lower().startswith("image/"):
        raise ImageError(f"data URL has media type {params[0][:40]!r}, not an image", "invalid_image")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ImageError("only base64 data URLs are supported (data:image/png;base64,...)", "invalid_image_url")
    if len(payload) > limits.max_bytes * 4 // 3 + 1024:  # refuse before decoding what is too big anyway
        raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image data is not valid base64", "invalid_base64") from None


def _local_path(url: str) -> str:
    """The file system path of a file:// URL, refusing what no real file can be called (so that nothing odd
    reaches the operating system): NUL bytes, text that is not valid UTF-8, over-long paths or names."""
    try:
        parsed = urlparse(url)
    except ValueError:
        raise ImageError("malformed file:// URL", "invalid_image_url") from None
    if parsed.netloc not in ("", "localhost"):
        raise ImageError(f"file:// URL names another host {parsed.netloc[:40]!r}", "invalid_image_url")
    try:
        path = unquote(parsed.path, errors="strict")
        path.encode("utf-8")
    except UnicodeError:
        raise ImageError("file:// URL is not valid UTF-8", "invalid_image_url") from None
    if "\0" in path:
        raise ImageError("file:// URL contains a NUL byte", "invalid_image_url")
    if len(path) > MAX_PATH_CHARS or any(len(part) > MAX_NAME_CHARS for part in path.split("/")):
        raise ImageError(f"file:// path is too long (at most {MAX_PATH_CHARS} characters, {MAX_NAME_CHARS} per "
                         f"name)", "invalid_image_url")
    return path


def _local_bytes(url: str, limits: ImageLimits) -> bytes:
    if limits.local_dir is None:
        raise ImageError("file:// image URLs are disabled on this server (start it with --allow-local-dir)",
                         "local_files_disabled")
    name = _local_path(url)
    try:
        path = Path(name).resolve()  # resolves symlinks and '..' before the folder check
        if not path.is_relative_to(limits.local_dir.resolve()):
            raise ImageError("file:// URL points outside the folder this server may read", "local_file_forbidden")
        if not path.is_file():
            raise ImageError(f"no such image file: {_printable(name)}", "image_not_found")
        if path.stat().st_size > limits.max_bytes:
            raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
        return path.read_bytes()
    except (OSError, ValueError) as e:
        if isinstance(e, ImageError):
            raise
        reason = getattr(e, "strerror", None) or e
        raise ImageError(f"could not read {_printable(name)}: {reason}", "image_not_found") from None


def _printable(text: str) -> str:
    return re.sub(r"[^\x20-\x7e]", "?", text[:200])
