"""Documents the tests write themselves: every supported format, broken ones and hostile ones.

Pillow writes the images, pypdfium2 the PDFs, pypdf encrypts one; nothing is downloaded.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from typing import Any

import pypdfium2 as pdfium
from PIL import Image
from pypdf import PdfReader, PdfWriter

A4_POINTS = (595.2756, 841.8898)  # 210 x 297 mm


def image_bytes(image: Image.Image, fmt: str, **save: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save)
    return buffer.getvalue()


def png(size: tuple[int, int] = (64, 48), color: Any = (200, 30, 30), mode: str = "RGB") -> bytes:
    return image_bytes(Image.new(mode, size, color), "PNG")


def pdf(pages: list[tuple[float, float]] | None = None, color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A PDF (one A4 page unless told) whose pages show a `color` square from (100, 100) to (400, 400) pt."""
    document = pdfium.PdfDocument.new()
    for width, height in [A4_POINTS] if pages is None else pages:
        page = document.new_page(width, height)
        square = pdfium.PdfImage.new(document)
        square.set_bitmap(pdfium.PdfBitmap.from_pil(Image.new("RGB", (8, 8), color)))
        square.set_matrix(pdfium.PdfMatrix().scale(300, 300).translate(100, 100))
        page.insert_obj(square)
        page.gen_content()
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def encrypted_pdf(password: str = "secret") -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(pdf())))
    writer.encrypt(password, algorithm="AES-256")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def tiff(colors: list[str], size: tuple[int, int] = (64, 48), compression: str = "tiff_deflate") -> bytes:
    frames = [Image.new("RGB", size, color) for color in colors]
    return image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:], compression=compression)


def tiff_with_broken_frame(colors: list[str], broken: int) -> bytes:
    """A multi-page TIFF whose frame `broken` (1-based) has its compressed data overwritten."""
    data = bytearray(tiff(colors))
    with Image.open(io.BytesIO(bytes(data))) as image:
        image.seek(broken - 1)
        offset, length = image.tag_v2[273][0], image.tag_v2[279][0]  # StripOffsets, StripByteCounts
    data[offset : offset + length] = b"\xff" * length
    return bytes(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_declaring(width: int, height: int) -> bytes:
    """A tiny, well-formed PNG header that claims `width` x `height` greyscale pixels."""
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 1024, 9)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", rows)
        + _png_chunk(b"IEND", b"")
    )


def docx() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("[Content_Types].xml", "<Types/>")
        archive.writestr("word/document.xml", "<w:document/>")
    return buffer.getvalue()


def seeds() -> dict[str, bytes]:
    """One small valid file per format, for mutation-based fuzzing."""
    picture = Image.new("RGB", (24, 16), (10, 120, 200))
    return {
        "pdf": pdf([(72.0, 72.0)]),
        "png": image_bytes(picture.convert("RGBA"), "PNG"),
        "jpeg": image_bytes(picture, "JPEG", quality=80),
        "webp": image_bytes(picture, "WEBP"),
        "bmp": image_bytes(picture, "BMP"),
        "gif": image_bytes(picture.convert("P"), "GIF"),
        "tiff": tiff(["red", "blue"], size=(24, 16)),
    }
