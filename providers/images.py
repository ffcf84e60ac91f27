"""Images in prompts: what counts as one (the content's signature, never the file name), its MIME type,
and the ``data:`` URL chat APIs receive it in."""

from __future__ import annotations

import base64
import binascii
import mimetypes
import os

__all__ = ["sniff_image_type", "image_mime_type", "image_data_url", "load_image", "fix_data_url_mime"]


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type the first bytes of ``data`` announce (PNG, JPEG, GIF, WebP, BMP, TIFF, HEIC/HEIF,
    AVIF), or None when they are not an image format's signature."""
    head = bytes(data[:32])
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head.startswith(b"BM") and len(head) >= 14:
        return "image/bmp"
    if head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image/tiff"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"avif", b"avis"):
            return "image/avif"
        if brand in (b"heic", b"heix", b"hevc", b"heim", b"heis", b"mif1", b"msf1"):
            return "image/heic" if brand != b"mif1" else "image/heif"
    return None


def image_mime_type(base64_data: str, path: str | None = None) -> str:
    """The MIME type of a base64 image: sniffed from its first bytes, else guessed from ``path``."""
    try:
        head = base64.b64decode(base64_data[:44] + "=" * (-len(base64_data[:44]) % 4))
    except (binascii.Error, ValueError):
        head = b""
    sniffed = sniff_image_type(head)
    if sniffed is not None:
        return sniffed
    if path:
        guessed, _ = mimetypes.guess_type(path)
        if guessed and guessed.startswith("image/"):
            return guessed
    return "application/octet-stream"


def image_data_url(base64_data: str, path: str | None = None) -> str:
    """``data:<mime>;base64,<data>`` for an image."""
    return f"data:{image_mime_type(base64_data, path)};base64,{base64_data}"


def _check_image(data: bytes, what: str) -> None:
    """Raise unless ``data`` starts with an image format's signature (the content decides, never the
    file name: a text file called ``x.png`` must not travel as ``image/png``)."""
    if sniff_image_type(data) is None:
        raise ValueError(
            f"image: {what} is not an image (its first bytes {bytes(data[:8])!r} are no PNG, JPEG, GIF, WebP, "
            "BMP, TIFF, HEIC or AVIF signature)"
        )


def load_image(source: str | os.PathLike | bytes) -> tuple[str, str]:
    """``(path, base64)`` for a file path, raw bytes (path ``"<bytes>"``) or a base64 data URL.

    The content must be an image (:func:`sniff_image_type`); anything else raises ``ValueError``.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        if not data:
            raise ValueError("image: empty bytes")
        _check_image(data, "the bytes given")
        return "<bytes>", base64.b64encode(data).decode("ascii")
    if isinstance(source, str) and source.startswith("data:"):
        header, sep, payload = source.partition(",")
        if not sep or not header.endswith(";base64"):
            raise ValueError("image: a data URL must be 'data:<mime>;base64,<data>'")
        try:
            decoded = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("image: the data URL's payload is not valid base64") from None
        _check_image(decoded, "the data URL's payload")
        return "<data-url>", payload
    if isinstance(source, str) and source.startswith(("http://", "https://")):
        raise ValueError("image: remote URLs are not fetched; pass a local path or bytes")
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"image: expected a path, bytes or data URL, got {type(source).__name__}")
    path = os.fspath(source)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise ValueError(f"image: cannot read {path!r}: {err.strerror}") from None
    if not data:
        raise ValueError(f"image: {path!r} is empty")
    _check_image(data, repr(path))
    return path, base64.b64encode(data).decode("ascii")


def fix_data_url_mime(url: str) -> str:
    """A base64 image ``data:`` URL with the MIME type its content announces.

    Frontends label images loosely (SGLang's writes ``image/jpeg`` for every image); an API that
    checks the label against the bytes (Anthropic, Gemini) rejects a PNG sent as JPEG. Other URLs, and
    content without a known signature, are returned unchanged.
    """
    if not url.startswith("data:"):
        return url
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        return url
    try:
        head = base64.b64decode(payload[:44] + "=" * (-len(payload[:44]) % 4))
    except (binascii.Error, ValueError):
        return url
    sniffed = sniff_image_type(head)
    if sniffed is None or header == f"data:{sniffed};base64":
        return url
    return f"data:{sniffed};base64,{payload}"
