"""Turn an `image_url` from an API request into a PIL image, safely.

Requests come from the network, so every image is untrusted: its encoded size is capped before decoding, its
pixel count is read from the header (PIL's `open` is lazy) and capped before the pixels are decompressed (a
50 KB PNG can claim 100000 x 100000 pixels: a decompression bomb), and only common still-image formats are
decoded. Where an image may come from is the server operator's choice: inline base64 `data:` URLs always,
`file://` paths only inside one allowed folder, remote http(s) URLs only when explicitly enabled.
"""
from __future__ import annotations

import base64
import binascii
import io
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from PIL import Image, UnidentifiedImageError

FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")


class ImageError(ValueError):
    """An image that cannot be used; `code` is a short machine-readable reason."""

    def __init__(self, message: str, code: str = "invalid_image"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * 1024 * 1024  # encoded file size
    max_pixels: int = 4096 * 4096  # width * height, checked before decoding
    max_images: int = 4  # per request
    local_dir: Path | None = None  # file:// URLs must point inside this folder; None refuses them all
    allow_remote: bool = False  # fetch http(s) URLs (the server then makes requests on a client's behalf)
    remote_timeout_s: float = 10.0


def decode_image(data: bytes, limits: ImageLimits) -> Image.Image:
    """Encoded bytes -> RGB image, refusing oversized, bomb-like or non-image data."""
    if len(data) > limits.max_bytes:
        raise ImageError(f"image is {len(data)} bytes, over the limit of {limits.max_bytes}", "image_too_large")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageError(f"image refused as a decompression bomb: {e}", "image_too_large") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageError(f"data is not a supported image ({', '.join(FORMATS)})") from None
    w, h = im.size
    if w * h > limits.max_pixels:
        raise ImageError(f"image is {w}x{h} = {w * h} pixels, over the limit of {limits.max_pixels}",
                         "image_too_large")
    if w < 1 or h < 1:
        raise ImageError(f"image has no pixels ({w}x{h})")
    try:
        im.load()  # first frame only for animations
        return im.convert("RGB")
    except Exception as e:  # truncated or corrupt data: PIL raises many kinds, all mean "bad image"
        raise ImageError(f"image could not be decoded: {e}") from None


def load_image_url(url: str, limits: ImageLimits) -> Image.Image:
    """A `data:`, `file://` or (if allowed) `http(s)://` URL -> RGB image. Raises ImageError."""
    if url.startswith("data:"):
        return decode_image(_data_url_bytes(url, limits), limits)
    scheme = urlparse(url).scheme.lower()
    if scheme == "file":
        return decode_image(_local_bytes(url, limits), limits)
    if scheme in ("http", "https"):
        if not limits.allow_remote:
            raise ImageError("remote image URLs are disabled on this server; send the image inline as a "
                             "base64 data: URL", "remote_images_disabled")
        return decode_image(_remote_bytes(url, limits), limits)
    raise ImageError(f"unsupported image URL {url[:40]!r}: use a base64 data: URL", "invalid_image_url")


def _data_url_bytes(url: str, limits: ImageLimits) -> bytes:
    header, comma, payload = url[len("data:"):].partition(",")
    if not comma:
        raise ImageError("malformed data URL: expected data:image/<type>;base64,<data>", "invalid_image_url")
    params = header.split(";")
    if params[0] and not params[0].lower().startswith("image/"):
        raise ImageError(f"data URL has media type {params[0]!r}, not an image", "invalid_image")
    if "base64" not in (p.strip().lower() for p in params[1:]):
        raise ImageError("only base64 data URLs are supported (data:image/png;base64,...)", "invalid_image_url")
    if len(payload) > limits.max_bytes * 4 // 3 + 1024:  # refuse before decoding what is too big anyway
        raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("image data is not valid base64", "invalid_base64") from None


def _local_bytes(url: str, limits: ImageLimits) -> bytes:
    if limits.local_dir is None:
        raise ImageError("file:// image URLs are disabled on this server (start it with --allow-local-dir)",
                         "local_files_disabled")
    parsed = urlparse(url)
    if parsed.netloc not in ("", "localhost"):
        raise ImageError(f"file:// URL names another host {parsed.netloc!r}", "invalid_image_url")
    path = Path(unquote(parsed.path)).resolve()  # resolves symlinks and '..' before the folder check
    if not path.is_relative_to(limits.local_dir.resolve()):
        raise ImageError("file:// URL points outside the folder this server may read", "local_file_forbidden")
    if not path.is_file():
        raise ImageError(f"no such image file: {unquote(parsed.path)}", "image_not_found")
    if path.stat().st_size > limits.max_bytes:
        raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
    return path.read_bytes()


def _remote_bytes(url: str, limits: ImageLimits) -> bytes:
    import httpx

    data = bytearray()
    try:
        with httpx.stream("GET", url, timeout=limits.remote_timeout_s, follow_redirects=False) as r:
            if r.status_code != 200:
                raise ImageError(f"fetching the image gave HTTP {r.status_code}", "image_fetch_failed")
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > limits.max_bytes:
                    raise ImageError(f"image is over the limit of {limits.max_bytes} bytes", "image_too_large")
    except httpx.HTTPError as e:
        raise ImageError(f"could not fetch the image: {e}", "image_fetch_failed") from None
    return bytes(data)
