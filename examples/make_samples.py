"""Writes the sample documents of `examples/`: the demo's job and the end-to-end tests' input.

    python examples/make_samples.py [DIR]

- `invoice.pdf`: a born-digital 2-page PDF whose text is real PDF text (Helvetica), not an image;
- `receipt.png`: a grayscale photo-like receipt;
- `fax.tiff`: a 3-page bilevel TIFF (Group 4), as a fax machine would write it.

The files are committed; rerun this after changing it. Each stays well under 300 KB.
"""

from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageDraw, ImageFont

HERE = Path(__file__).resolve().parent

INVOICE_PAGES = [
    [
        ("INVOICE  No. 2024-0117", 22),
        ("Monkey Paper Supplies Ltd.", 14),
        ("12 Banana Road, Leeds LS1 4AP", 12),
        ("Bill to: Acme Research GmbH, Berlin", 12),
        ("Date: 14 March 2024      Due: 13 April 2024", 12),
        ("Item                         Qty    Price", 12),
        ("A4 copier paper (box)          4    36.00", 12),
        ("Toner cartridge, black         2    89.90", 12),
        ("Document scanner service       1   120.00", 12),
        ("Subtotal                            245.90", 12),
        ("VAT 20%                              49.18", 12),
        ("TOTAL AMOUNT DUE              GBP   295.08", 14),
    ],
    [
        ("Terms and conditions", 18),
        ("1. Payment is due within 30 days of the invoice date.", 12),
        ("2. Late payments carry interest of 2% per month.", 12),
        ("3. Goods remain our property until paid in full.", 12),
        ("Bank: Northern Bank, IBAN GB29 NWBK 6016 1331 9268 19", 12),
        ("Signed: J. Whitfield, Accounts Manager", 12),
    ],
]

RECEIPT_LINES = [  # (left text, right-aligned amount)
    ("CORNER CAFE", ""),
    ("221 High Street", ""),
    ("Tel 0161 555 0199", ""),
    ("", ""),
    ("2x Flat white", "7.00"),
    ("1x Croissant", "2.80"),
    ("1x Orange juice", "3.20"),
    ("", ""),
    ("TOTAL", "13.00"),
    ("CARD", "13.00"),
    ("", ""),
    ("Thank you - 09/02/2024 08:41", ""),
]

FAX_PAGES = [
    ["FAX", "To: Records office", "From: Dr. A. Meyer", "Pages: 3 including this one"],
    ["Patient referral", "Name: Jane Doe", "Date of birth: 02/05/1980", "Reason: follow-up scan"],
    ["Please confirm receipt", "by phone or fax.", "Fax: +44 20 7946 0000"],
]


def _pdf_text(
    pdf: pdfium.PdfDocument, page: pdfium.PdfPage, font: object, text: str, size: float, x: float, y: float
) -> None:
    """Adds one line of real (selectable) PDF text at (x, y) points from the bottom-left corner."""
    obj = pdfium_c.FPDFPageObj_CreateTextObj(pdf, font, ctypes.c_float(size))
    encoded = (text + "\x00").encode("utf-16-le")
    buffer = ctypes.create_string_buffer(encoded, len(encoded))
    pdfium_c.FPDFText_SetText(obj, ctypes.cast(buffer, ctypes.POINTER(pdfium_c.FPDF_WCHAR)))
    pdfium_c.FPDFPageObj_Transform(obj, 1, 0, 0, 1, x, y)
    pdfium_c.FPDFPage_InsertObject(page, obj)


def make_invoice_pdf(path: Path) -> None:
    pdf = pdfium.PdfDocument.new()
    font = pdfium_c.FPDFText_LoadStandardFont(pdf, b"Courier")  # monospace keeps the columns aligned
    for lines in INVOICE_PAGES:
        page = pdf.new_page(595, 842)  # A4 in points
        y = 780.0
        for text, size in lines:
            _pdf_text(pdf, page, font, text, size, 60.0, y)
            y -= size * 2.2
        page.gen_content()
    pdf.save(path)


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def make_receipt_png(path: Path) -> None:
    image = Image.new("L", (520, 760), 244)
    draw = ImageDraw.Draw(image)
    draw.rectangle((20, 20, 500, 740), outline=120, width=2)
    y = 50
    for index, (left, right) in enumerate(RECEIPT_LINES):
        size = 34 if index == 0 else 24
        draw.text((50, y), left, fill=20, font=_font(size))
        draw.text((470, y), right, fill=20, font=_font(size), anchor="ra")
        y += size + 26
    image.save(path, optimize=True)


def make_fax_tiff(path: Path) -> None:
    frames = []
    for lines in FAX_PAGES:
        page = Image.new("L", (850, 1100), 255)
        draw = ImageDraw.Draw(page)
        y = 90
        for index, line in enumerate(lines):
            size = 56 if index == 0 else 36
            draw.text((80, y), line, fill=0, font=_font(size))
            y += size + 40
        frames.append(page.convert("1"))
    frames[0].save(path, save_all=True, append_images=frames[1:], compression="group4", dpi=(100, 100))


def main(directory: Path = HERE) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    make_invoice_pdf(directory / "invoice.pdf")
    make_receipt_png(directory / "receipt.png")
    make_fax_tiff(directory / "fax.tiff")
    for name in ("invoice.pdf", "receipt.png", "fax.tiff"):
        print(f"{directory / name}: {(directory / name).stat().st_size} bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE)
