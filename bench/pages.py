"""Synthetic document pages for the benchmarks."""

from __future__ import annotations

from PIL import Image, ImageDraw


def a4_page(seed: int = 0) -> Image.Image:
    """A 200-DPI A4 page (1654x2339): a coloured header, forty lines of an invoice, rules."""
    image = Image.new("RGB", (1654, 2339), "white")
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, 0, 1654, 180), fill=(30, 80, 160))
    draw.text((80, 60), f"INVOICE 2024-{seed:04d}", fill="white", font_size=64)
    for row in range(40):
        y = 260 + row * 50
        line = f"Item {row:02d}  Widget model {(row + seed) * 7 % 13}  qty {row % 5 + 1}"
        draw.text((80, y), line, fill="black", font_size=30)
        draw.text((1300, y), f"${(row * 37 + seed) % 500}.{row % 100:02d}", fill="black", font_size=30)
        draw.line((80, y + 44, 1574, y + 44), fill=(200, 200, 200), width=2)
    return image
