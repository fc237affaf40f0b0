"""Documents in: formats by content, colour modes, limits, every error code, and isolation."""

from __future__ import annotations

import math
import signal
from pathlib import Path

import pytest
from document_samples import (
    A4_POINTS,
    docx,
    encrypted_pdf,
    image_bytes,
    pdf,
    png,
    png_declaring,
    tiff,
    tiff_with_broken_frame,
)
from PIL import Image

from jobs.formats import (
    DocumentError,
    DocumentFormat,
    ErrorCode,
    check_format,
    parse_page_selection,
    path_safe_filename,
    safe_filename,
    sniff_format,
    validate_page_selection,
)
from pipeline import documents
from pipeline.documents import DocumentLimits, PageImage, inspect_document, render_pages

LIMITS = DocumentLimits()
BOTH = pytest.mark.parametrize("isolated", [True, False], ids=["isolated", "in-process"])


def error_of(call, *args, **kwargs) -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        call(*args, **kwargs)
    return caught.value


def only_page(data: bytes, limits: DocumentLimits = LIMITS, isolated: bool = True) -> PageImage:
    (result,) = render_pages(data, [1], limits, isolated=isolated)
    assert isinstance(result, PageImage), result
    assert result.image.mode == "RGB"
    return result


def close_to(pixel: tuple[int, ...], expected: tuple[int, ...], tolerance: int = 12) -> bool:
    return all(abs(a - b) <= tolerance for a, b in zip(pixel, expected, strict=True))


# --- formats by content ------------------------------------------------------------------------

PICTURE = Image.new("RGB", (40, 30), (30, 140, 60))
FORMAT_SAMPLES = {
    DocumentFormat.PDF: pdf(),
    DocumentFormat.PNG: image_bytes(PICTURE, "PNG"),
    DocumentFormat.JPEG: image_bytes(PICTURE, "JPEG", quality=95),
    DocumentFormat.WEBP: image_bytes(PICTURE, "WEBP", lossless=True),
    DocumentFormat.BMP: image_bytes(PICTURE, "BMP"),
    DocumentFormat.GIF: image_bytes(PICTURE, "GIF"),
    DocumentFormat.TIFF: image_bytes(PICTURE, "TIFF"),
}


@pytest.mark.parametrize("fmt", list(FORMAT_SAMPLES))
def test_every_format_is_sniffed_and_rendered_to_rgb(fmt: DocumentFormat) -> None:
    data = FORMAT_SAMPLES[fmt]
    assert sniff_format(data[:1024]) is fmt
    info = inspect_document(data, LIMITS)
    assert (info.format, info.page_count, info.byte_size) == (fmt, 1, len(data))
    page = only_page(data)
    if fmt is DocumentFormat.PDF:
        assert page.dpi == pytest.approx(200.0)
    else:
        assert page.dpi is None
        assert page.image.size == (40, 30)
        assert close_to(page.image.getpixel((5, 5)), (30, 140, 60))


def test_a_pdf_named_file_that_is_a_png_is_a_png() -> None:
    # There is no name to go by: the API hands over bytes, and the bytes say PNG.
    assert inspect_document(png(), LIMITS).format is DocumentFormat.PNG


def test_pdf_header_after_leading_junk_is_still_a_pdf() -> None:
    assert sniff_format(b"\r\n junk \r\n" + pdf()[:1000]) is DocumentFormat.PDF


@pytest.mark.parametrize(
    ("data", "named"),
    [
        (docx(), "ZIP archive"),
        (b"Invoice 2024-001\nTotal: 12.00 EUR\n", "plain text"),
        (b"<!DOCTYPE html><html><body>hi</body></html>", "HTML"),
        (b"BM but just text that starts with BM", "plain text"),
        (b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00", "HEIC"),
    ],
    ids=["docx", "text", "html", "bm-text", "heic"],
)
def test_unsupported_types_are_named_in_the_error(data: bytes, named: str) -> None:
    assert sniff_format(data) is None
    error = error_of(inspect_document, data, LIMITS)
    assert error.code is ErrorCode.UNSUPPORTED_TYPE
    assert named in error.message
    assert error_of(check_format, data[:1024]).code is ErrorCode.UNSUPPORTED_TYPE


def test_empty_file() -> None:
    error = error_of(inspect_document, b"", LIMITS)
    assert error.code is ErrorCode.EMPTY_FILE
    assert error_of(check_format, b"").code is ErrorCode.EMPTY_FILE


def test_file_over_the_byte_limit() -> None:
    error = error_of(inspect_document, pdf(), DocumentLimits(max_file_bytes=100))
    assert error.code is ErrorCode.FILE_TOO_LARGE
    assert "MiB" in error.message


# --- colour modes and orientation --------------------------------------------------------------


def _transparent_palette() -> Image.Image:
    image = Image.new("P", (20, 20), 1)
    image.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    image.info["transparency"] = 1
    return image


def _beyond_16_bits() -> Image.Image:
    # 32-bit data outside 0..65535 is stretched from its darkest to its lightest value.
    image = Image.new("I", (20, 20), -5)
    image.paste(300_000, (10, 0, 20, 20))
    return image


@pytest.mark.parametrize(
    ("image", "fmt", "expected"),
    [
        (Image.new("CMYK", (20, 20), (255, 0, 0, 0)), "JPEG", (0, 255, 255)),
        (Image.new("I;16", (20, 20), 32768), "PNG", (127, 127, 127)),
        (Image.new("I;16", (20, 20), 65535), "TIFF", (255, 255, 255)),
        (Image.new("F", (20, 20), 0.5), "TIFF", (127, 127, 127)),
        (_beyond_16_bits(), "TIFF", (255, 255, 255)),
        (_transparent_palette(), "PNG", (255, 255, 255)),
        (_transparent_palette(), "GIF", (255, 255, 255)),
        (Image.new("LA", (20, 20), (0, 0)), "PNG", (255, 255, 255)),
        (Image.new("RGBA", (20, 20), (0, 0, 255, 0)), "WEBP", (255, 255, 255)),
        (Image.new("RGBA", (20, 20), (0, 0, 0, 128)), "PNG", (127, 127, 127)),
        (Image.new("1", (20, 20), 1), "BMP", (255, 255, 255)),
        (Image.new("L", (20, 20), 60), "JPEG", (60, 60, 60)),
    ],
    ids=["cmyk-jpeg", "16bit-png", "16bit-tiff", "float-tiff", "int32-tiff", "palette-alpha-png",
         "palette-alpha-gif", "la-png", "rgba-webp", "rgba-half-png", "1bit-bmp", "grey-jpeg"],
)  # fmt: skip
def test_colour_modes_become_rgb(image: Image.Image, fmt: str, expected: tuple[int, int, int]) -> None:
    page = only_page(image_bytes(image, fmt), isolated=False)
    assert close_to(page.image.getpixel((10, 10)), expected, tolerance=3)


def test_jpeg_exif_orientation_is_applied() -> None:
    # Stored 40x20 with red on the left; orientation 6 means "turn 90 degrees clockwise to view",
    # so the viewer sees 20x40 with red at the top.
    stored = Image.new("RGB", (40, 20), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 20, 20))
    exif = Image.Exif()
    exif[0x0112] = 6
    page = only_page(image_bytes(stored, "JPEG", quality=95, exif=exif))
    assert page.image.size == (20, 40)
    assert close_to(page.image.getpixel((10, 5)), (255, 0, 0), tolerance=30)
    assert close_to(page.image.getpixel((10, 35)), (0, 0, 255), tolerance=30)


def test_gif_reads_the_first_frame() -> None:
    frames = [Image.new("RGB", (16, 16), color) for color in ((255, 0, 0), (0, 0, 255))]
    data = image_bytes(frames[0], "GIF", save_all=True, append_images=frames[1:])
    assert inspect_document(data, LIMITS).page_count == 1
    assert only_page(data).image.getpixel((8, 8)) == (255, 0, 0)


def test_multi_page_tiff_pages_are_frames() -> None:
    data = tiff(["red", "lime", "blue"])
    assert inspect_document(data, LIMITS).page_count == 3
    results = render_pages(data, [3, 1], LIMITS)
    assert [r.page_number for r in results] == [3, 1]
    assert [r.image.getpixel((0, 0)) for r in results] == [(0, 0, 255), (255, 0, 0)]


# --- PDFs ---------------------------------------------------------------------------------------


def test_a4_pdf_page_renders_at_200_dpi_with_its_content() -> None:
    data = pdf([A4_POINTS, A4_POINTS])
    assert inspect_document(data, LIMITS).page_count == 2
    page = only_page(data)
    assert page.image.size == (1654, 2339)
    # The square spans 100..400 pt from the bottom-left corner; 250 pt is inside it.
    inside = round(250 * 200 / 72)
    assert page.image.getpixel((inside, 2339 - inside)) == (200, 30, 30)
    assert page.image.getpixel((5, 5)) == (255, 255, 255)


def test_pdf_dpi_is_configurable() -> None:
    page = only_page(pdf(), DocumentLimits(pdf_dpi=72))
    assert page.image.size == (596, 842)


@BOTH
def test_huge_pdf_page_is_rendered_at_a_lower_dpi_under_the_pixel_cap(isolated: bool) -> None:
    limits = DocumentLimits(max_page_pixels=1_000_000)
    page = only_page(pdf([(2000.0, 3000.0)]), limits, isolated=isolated)
    width, height = page.image.size
    assert width * height <= 1_000_000
    assert width * height > 0.98 * 1_000_000  # as sharp as the cap allows
    assert page.dpi is not None and page.dpi < 200
    assert math.isclose(width / height, 2 / 3, rel_tol=0.01)


def test_pdf_scale_stays_under_the_cap_for_awkward_sizes() -> None:
    for width, height in [(14400.0, 14400.0), (0.5, 14400.0), (1234.567, 89.01), (3.0, 3.0)]:
        limits = DocumentLimits(max_page_pixels=123_457)
        scale = documents._pdf_scale(width, height, limits)
        assert math.ceil(width * scale) * math.ceil(height * scale) <= limits.max_page_pixels


@BOTH
def test_truncated_and_corrupt_pdfs(isolated: bool) -> None:
    good = pdf()
    for broken in (good[: len(good) // 2], b"%PDF-1.7\n" + b"\x00garbage\xff" * 50):
        error = error_of(inspect_document, broken, LIMITS, isolated=isolated)
        assert error.code is ErrorCode.CORRUPT_PDF


@BOTH
def test_encrypted_pdf(isolated: bool) -> None:
    error = error_of(render_pages, encrypted_pdf(), [1], LIMITS, isolated=isolated)
    assert error.code is ErrorCode.ENCRYPTED_PDF
    assert "password" in error.message


@BOTH
def test_pdf_without_pages(isolated: bool) -> None:
    error = error_of(inspect_document, pdf([]), LIMITS, isolated=isolated)
    assert error.code is ErrorCode.PDF_WITHOUT_PAGES


# --- limits -------------------------------------------------------------------------------------


@BOTH
def test_decompression_bomb_png_is_refused_unread(isolated: bool) -> None:
    bomb = png_declaring(100_000, 100_000)
    assert len(bomb) < 200
    error = error_of(inspect_document, bomb, LIMITS, isolated=isolated)
    assert error.code is ErrorCode.DECOMPRESSION_BOMB
    assert "decompression bomb" in error.message and "10000000000 pixels" in error.message


@BOTH
def test_raster_page_over_the_pixel_cap(isolated: bool) -> None:
    limits = DocumentLimits(max_page_pixels=10_000)
    over = error_of(inspect_document, png((150, 100)), limits, isolated=isolated)
    assert over.code is ErrorCode.PAGE_OVER_PIXEL_CAP
    assert "150x100" in over.message
    far_over = error_of(inspect_document, png((300, 300)), limits, isolated=isolated)
    assert far_over.code is ErrorCode.DECOMPRESSION_BOMB
    assert only_page(png((100, 100)), limits, isolated=isolated).image.size == (100, 100)


def test_tiff_frame_over_the_pixel_cap_fails_that_page_only() -> None:
    frames = [Image.new("RGB", (50, 50), "red"), Image.new("RGB", (150, 100), "blue")]
    data = image_bytes(frames[0], "TIFF", save_all=True, append_images=frames[1:])
    first, second = render_pages(data, [1, 2], DocumentLimits(max_page_pixels=10_000))
    assert isinstance(first, PageImage)
    assert isinstance(second, DocumentError) and second.code is ErrorCode.PAGE_OVER_PIXEL_CAP


@BOTH
def test_too_many_pages(isolated: bool) -> None:
    limits = DocumentLimits(max_pages=2)
    for data in (pdf([A4_POINTS] * 3), tiff(["red", "lime", "blue"])):
        error = error_of(inspect_document, data, limits, isolated=isolated)
        assert error.code is ErrorCode.TOO_MANY_PAGES
    assert inspect_document(tiff(["red", "blue"]), limits, isolated=isolated).page_count == 2


def test_page_out_of_range() -> None:
    error = error_of(render_pages, pdf(), [1, 2], LIMITS)
    assert error.code is ErrorCode.PAGE_OUT_OF_RANGE
    assert "Page 2" in error.message


# --- broken images ------------------------------------------------------------------------------


@BOTH
def test_corrupt_image_header(isolated: bool) -> None:
    broken = png()[:8] + b"\x00\x00\x00\x0dIHDR" + b"\xff" * 40
    error = error_of(inspect_document, broken, LIMITS, isolated=isolated)
    assert error.code is ErrorCode.CORRUPT_IMAGE


@BOTH
def test_truncated_image_fails_its_page(isolated: bool) -> None:
    noisy = Image.effect_noise((200, 200), 60).convert("RGB")
    data = image_bytes(noisy, "PNG")
    assert inspect_document(data[: len(data) // 2], LIMITS, isolated=isolated).page_count == 1
    (result,) = render_pages(data[: len(data) // 2], [1], LIMITS, isolated=isolated)
    assert isinstance(result, DocumentError) and result.code is ErrorCode.CORRUPT_IMAGE
    assert "truncated" in result.message


@BOTH
def test_tiff_with_one_unreadable_frame_keeps_the_good_frames(isolated: bool) -> None:
    data = tiff_with_broken_frame(["red", "lime", "blue"], broken=2)
    assert inspect_document(data, LIMITS, isolated=isolated).page_count == 3
    first, second, third = render_pages(data, [1, 2, 3], LIMITS, isolated=isolated)
    assert isinstance(first, PageImage) and first.image.getpixel((0, 0)) == (255, 0, 0)
    assert isinstance(second, DocumentError) and second.code is ErrorCode.UNREADABLE_FRAME
    assert "Frame 2" in second.message
    assert isinstance(third, PageImage) and third.image.getpixel((0, 0)) == (0, 0, 255)


# --- isolation ----------------------------------------------------------------------------------

HOOKED_RENDERER = """
import os, signal, sys, time
from pipeline import documents, render_worker

original = documents._RasterDocument.render

def render(self, page_number):
    if page_number == 1:
        {action}
    return original(self, page_number)

documents._RasterDocument.render = render
render_worker.main()
"""


@pytest.fixture
def hooked_renderer(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Swap in a renderer that misbehaves on page 1 in a given way (and renders other pages)."""

    def install(action: str) -> None:
        (tmp_path / "hooked_renderer.py").write_text(HOOKED_RENDERER.format(action=action))
        monkeypatch.setenv("PYTHONPATH", str(tmp_path))
        monkeypatch.setattr(documents, "_WORKER_MODULE", "hooked_renderer")

    return install


def test_a_page_that_hangs_times_out_and_the_next_page_renders(hooked_renderer) -> None:
    hooked_renderer("time.sleep(60)")
    data = tiff(["red", "blue"])
    first, second = render_pages(data, [1, 2], DocumentLimits(render_timeout_s=1.0))
    assert isinstance(first, DocumentError) and first.code is ErrorCode.RENDER_TIMEOUT
    assert "1 s" in first.message
    assert isinstance(second, PageImage) and second.image.getpixel((0, 0)) == (0, 0, 255)


def test_a_page_that_kills_the_renderer_fails_alone(hooked_renderer) -> None:
    hooked_renderer(f"os.kill(os.getpid(), {int(signal.SIGSEGV)})")
    first, second = render_pages(tiff(["red", "blue"]), [1, 2], LIMITS)
    assert isinstance(first, DocumentError) and first.code is ErrorCode.RENDER_CRASHED
    assert isinstance(second, PageImage)


def test_a_renderer_that_cannot_start_is_a_crash(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(documents, "_WORKER_MODULE", "pipeline.no_such_module")
    assert error_of(inspect_document, png(), LIMITS).code is ErrorCode.RENDER_CRASHED


def test_tiny_render_timeout() -> None:
    error = error_of(inspect_document, pdf(), DocumentLimits(render_timeout_s=1e-6))
    assert error.code is ErrorCode.RENDER_TIMEOUT


def test_memory_limit_fails_the_page_not_the_worker() -> None:
    # 6000x6000 RGB needs 108 MB once decoded; the renderer may add only 64 MiB.
    data = png((6000, 6000), color=(255, 255, 255))
    (result,) = render_pages(data, [1], DocumentLimits(memory_limit_bytes=64 * 1024**2))
    assert isinstance(result, DocumentError) and result.code is ErrorCode.RENDER_MEMORY_EXCEEDED


def test_isolated_and_in_process_pixels_are_identical() -> None:
    for data in (pdf(), tiff(["red", "blue"]), FORMAT_SAMPLES[DocumentFormat.JPEG]):
        isolated = render_pages(data, [1], LIMITS)[0]
        in_process = render_pages(data, [1], LIMITS, isolated=False)[0]
        assert isinstance(isolated, PageImage) and isinstance(in_process, PageImage)
        assert isolated.image.tobytes() == in_process.image.tobytes()
        assert isolated.dpi == in_process.dpi


# --- page selection -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "count", "pages"),
    [("1-3,7", 7, [1, 2, 3, 7]), (" 2 ", 2, [2]), ("5,1-2,2", 5, [1, 2, 5]), ("3-3", None, [3])],
)
def test_page_selection(spec: str, count: int | None, pages: list[int]) -> None:
    assert parse_page_selection(spec, count) == pages
    validate_page_selection(spec)


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        ("", "empty"),
        ("0", "start at 1"),
        ("3-1", "backwards"),
        ("1,,2", "not a page number"),
        ("a-b", "not a page number"),
        ("1-2-3", "not a page number"),
        ("-2", "not a page number"),
        ("١", "not a page number"),  # a non-ASCII digit
        ("1-999999999", "largest page number"),
        ("1," * 600, "longer than"),
    ],
)
def test_invalid_page_selection(spec: str, reason: str) -> None:
    for call in (lambda: validate_page_selection(spec), lambda: parse_page_selection(spec, 10)):
        error = error_of(call)
        assert error.code is ErrorCode.INVALID_PAGE_SELECTION
        assert reason in error.message


def test_page_selection_beyond_the_document() -> None:
    error = error_of(parse_page_selection, "1-3,7", 5)
    assert error.code is ErrorCode.PAGE_OUT_OF_RANGE
    assert "page 7" in error.message and "5 pages" in error.message


# --- file names ---------------------------------------------------------------------------------


def test_file_names_are_stored_escaped() -> None:
    assert safe_filename("../../etc/passwd") == "../../etc/passwd"  # shown as given, never a path
    assert safe_filename("a\x00b\nc\x1b[31m.pdf") == "a\\x00b\\x0ac\\x1b[31m.pdf"
    assert safe_filename("invoice\u202egpj.pdf") == "invoice\\u202egpj.pdf"  # right-to-left override
    assert safe_filename("back\\slash") == "back\\\\slash"  # so that escapes cannot be forged
    assert safe_filename("") == "(unnamed)"
    assert len(safe_filename("x" * 5000)) == 255


def test_path_safe_filename_is_one_harmless_component() -> None:
    assert path_safe_filename("../../etc/passwd") == "passwd"
    assert path_safe_filename("..\\..\\boot.ini") == "boot.ini"
    assert path_safe_filename("../\x00\x07.bashrc") == "bashrc"
    assert path_safe_filename("..") == "document"
    long = path_safe_filename("a" * 400 + ".pdf")
    assert len(long) == 255 and long.endswith(".pdf")


def test_document_error_is_a_stable_pair() -> None:
    error = DocumentError("encrypted_pdf", "needs a password")
    assert error.code is ErrorCode.ENCRYPTED_PDF
    assert error.to_dict() == {"code": "encrypted_pdf", "message": "needs a password"}
    assert str(error) == "encrypted_pdf: needs a password"
