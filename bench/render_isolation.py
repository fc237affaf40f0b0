"""What rendering documents in an isolated child process costs, against rendering in-process.

    python -m bench.render_isolation [--repeat N]

Documents, made here: an A4 PDF whose page holds a scanned-looking image (rendered at 200 DPI
to 1654x2339) and a 1654x2339 PNG. For each: one page per call (the child's start-up paid
every time) and eight pages per call (one child for all of them, as a GPU chunk does). Prints
median wall-clock milliseconds per call: in-process; isolated with the renderer started ahead
(a pause between calls, as the work between two documents gives it); isolated back to back
(every call waits for a renderer's start-up).
"""

from __future__ import annotations

import argparse
import io
import platform
from collections.abc import Callable

import pypdfium2 as pdfium
from PIL import Image, ImageDraw

from bench.timing import median_ms
from pipeline.documents import DocumentLimits, inspect_document, render_pages

A4_POINTS = (595.2756, 841.8898)


def scanned_page() -> Image.Image:
    """A page-sized image with text-like strokes and noise, so that it compresses like a scan."""
    page = Image.new("L", (1654, 2339), 245)
    draw = ImageDraw.Draw(page)
    for row in range(120, 2200, 38):
        for column in range(120, 1500, 90):
            draw.rectangle((column, row, column + 60 + (row * column) % 25, row + 18), fill=30)
    noise = Image.effect_noise(page.size, 12)
    return Image.blend(page, noise, 0.15).convert("RGB")


def pdf_of(image: Image.Image, pages: int) -> bytes:
    document = pdfium.PdfDocument.new()
    for _ in range(pages):
        page = document.new_page(*A4_POINTS)
        picture = pdfium.PdfImage.new(document)
        picture.set_bitmap(pdfium.PdfBitmap.from_pil(image))
        picture.set_matrix(pdfium.PdfMatrix().scale(*A4_POINTS))
        page.insert_obj(picture)
        page.gen_content()
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=15)
    args = parser.parse_args()
    limits = DocumentLimits()
    scan = scanned_page()
    png = io.BytesIO()
    scan.save(png, "PNG")
    cases = {
        "PDF A4 @200 DPI": (pdf_of(scan, 1), pdf_of(scan, 8)),
        "PNG 1654x2339": (png.getvalue(), None),
    }
    print(f"python {platform.python_version()}, {platform.machine()}, median of {args.repeat} calls")
    print("| document | call | in-process ms | isolated, renderer ready ms | isolated, back to back ms |")
    print("| --- | --- | ---: | ---: | ---: |")
    eight = list(range(1, 9))
    for name, (one_page, eight_pages) in cases.items():
        calls: list[tuple[str, Callable[[bool], object]]] = [
            ("inspect", lambda isolated, data=one_page: inspect_document(data, limits, isolated=isolated)),
            (
                "render 1 page",
                lambda isolated, data=one_page: render_pages(data, [1], limits, isolated=isolated),
            ),
        ]
        if eight_pages is not None:
            calls.append(
                (
                    "render 8 pages",
                    lambda isolated, data=eight_pages: render_pages(data, eight, limits, isolated=isolated),
                )
            )
        for label, call in calls:
            local = median_ms(lambda call=call: call(False), args.repeat)
            # The pause (untimed) lets the spare renderer finish starting, as work between documents does.
            ready = median_ms(lambda call=call: call(True), args.repeat, pause_s=0.6)
            cold = median_ms(lambda call=call: call(True), args.repeat)
            print(f"| {name} | {label} | {local:.1f} | {ready:.1f} | {cold:.1f} |")


if __name__ == "__main__":
    main()
