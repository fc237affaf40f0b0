"""Documents to page images: sniff, validate, count pages and render, isolated from the caller.

API for the workers (everything that can go wrong with an input is a `jobs.formats.DocumentError`
with a stable `.code` and a human `.message`; nothing else escapes for any input bytes):

    from jobs.formats import DocumentError, parse_page_selection
    from pipeline.documents import DocumentLimits, inspect_document, render_pages

    limits = DocumentLimits(
        max_file_bytes=s.max_file_bytes, max_pages=s.max_pages_per_document,
        max_page_pixels=s.max_page_pixels, pdf_dpi=s.pdf_dpi, render_timeout_s=s.render_timeout_s,
    )
    # ingest: raises DocumentError for a document that fails as a whole
    info = inspect_document(data, limits)              # DocumentInfo(format, page_count, byte_size)
    pages = parse_page_selection(spec, info.page_count) if spec else list(range(1, info.page_count + 1))
    # gpu worker: one entry per requested page, in order; a page that fails is a DocumentError
    for result in render_pages(data, pages, limits):  # list[PageImage | DocumentError]
        if isinstance(result, DocumentError): ...      # mark that page failed with result.code
        else: result.pixels                            # (h, w, 3) uint8 RGB; .image, .page_number, .dpi

`render_pages` raises (rather than returning per-page errors) when the document as a whole is
unreadable or a requested page does not exist (`page_out_of_range`).

What it does: formats are recognised by content (`jobs.formats.sniff_format`). PDF pages are
rendered with pypdfium2 at `pdf_dpi` (200 DPI turns A4 into 1654x2339), huge pages at the
highest DPI that keeps them under `max_page_pixels`. Raster images (PNG, JPEG, WebP, BMP, GIF:
first frame; TIFF: every frame is a page) get their EXIF orientation applied and every colour
mode is normalised to RGB (alpha composited on white, 16-bit and float scaled down); the common
PNG (8-bit RGB or grey, nothing that changes its pixels) takes `pipeline.png`'s faster decoder. A raster
page over `max_page_pixels` fails with `page_over_pixel_cap`, and over twice the cap (Pillow's
decompression-bomb threshold) with `decompression_bomb`, before any pixel is decoded.

Isolation: by default all parsing and decoding runs in a child process (`pipeline.render_worker`,
one per call, kept for all pages of the call) whose address space is capped at its start-up
footprint plus `memory_limit_bytes` (RLIMIT_AS) and whose every request has a wall-clock limit of
`render_timeout_s` (the child is killed and the page fails with `render_timeout`). A child that
dies fails the page with `render_crashed` (or `render_memory_exceeded` when it ran out of
memory); the remaining pages continue in a fresh child. Pixels come back as raw RGB bytes.
`isolated=False` decodes in the calling process instead (no memory or time bound; it sets
Pillow's process-wide `Image.MAX_IMAGE_PIXELS` for the duration of the call, and pdfium is not
thread-safe): for tests, for benchmarks and for trusted files. `docs/benchmarks.md` has what isolation costs.
"""

from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import select
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import numpy as np
import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c
from PIL import Image, ImageOps, UnidentifiedImageError

from jobs.formats import SNIFF_BYTES, DocumentError, DocumentFormat, ErrorCode, check_format
from pipeline.png import decode_png

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DocumentLimits:
    """Bounds on one document. The defaults equal those of `jobs.settings.Settings`."""

    max_file_bytes: int = 100 * 1024**2
    max_pages: int = 2000
    max_page_pixels: int = 40_000_000
    pdf_dpi: float = 200.0
    render_timeout_s: float = 60.0  # per page, and for opening the document
    # Address space the isolated renderer may add to its start-up footprint (the document included).
    memory_limit_bytes: int = 2 * 1024**3


@dataclass(frozen=True)
class DocumentInfo:
    format: DocumentFormat
    page_count: int
    byte_size: int


@dataclass(frozen=True)
class PageImage:
    page_number: int  # 1-based, in the document
    pixels: np.ndarray  # (height, width, 3) uint8 RGB, what the engine takes
    dpi: float | None  # PDF: the DPI rendered at (below `pdf_dpi` for huge pages); images: None

    @property
    def image(self) -> Image.Image:
        """The page as a PIL image (a copy), for callers that want one."""
        return Image.fromarray(self.pixels)


def inspect_document(data: bytes, limits: DocumentLimits, *, isolated: bool = True) -> DocumentInfo:
    """Sniff, validate and count the pages of a document; raise `DocumentError` if it is unusable."""
    with pixel_guard(limits):
        document = _open(data, limits, isolated=isolated, requests=1)
        document.close()
    return document.info


def render_pages(
    data: bytes, page_numbers: Sequence[int], limits: DocumentLimits, *, isolated: bool = True
) -> list[PageImage | DocumentError]:
    """Render the given 1-based pages to RGB images, one result per page in the given order."""
    with pixel_guard(limits):
        return _render(_open(data, limits, isolated=isolated, requests=len(page_numbers) + 1), page_numbers)


def _render(document: _Document, page_numbers: Sequence[int]) -> list[PageImage | DocumentError]:
    try:
        missing = [n for n in page_numbers if not 1 <= n <= document.info.page_count]
        if missing:
            count = document.info.page_count
            raise DocumentError(
                ErrorCode.PAGE_OUT_OF_RANGE,
                f"Page {missing[0]} was asked for, but the document has {count} page(s).",
            )
        results: list[PageImage | DocumentError] = []
        for number in page_numbers:
            try:
                results.append(document.render(number))
            except DocumentError as exc:
                results.append(exc)
        return results
    finally:
        document.close()


# --- decoding in this process ------------------------------------------------------------------


class _Document(Protocol):
    info: DocumentInfo

    def render(self, page_number: int) -> PageImage: ...

    def close(self) -> None: ...


def _open(data: bytes, limits: DocumentLimits, *, isolated: bool, requests: int) -> _Document:
    fmt = _check_file(data, limits)
    if isolated:
        return _IsolatedDocument(data, limits, requests=requests)
    return open_in_process(data, limits, fmt)


def _check_file(data: bytes, limits: DocumentLimits) -> DocumentFormat:
    if len(data) > limits.max_file_bytes:
        raise DocumentError(
            ErrorCode.FILE_TOO_LARGE,
            f"The file is {_mib(len(data))}, over the limit of {_mib(limits.max_file_bytes)} per document.",
        )
    return check_format(data[:SNIFF_BYTES])


@contextmanager
def pixel_guard(limits: DocumentLimits) -> Iterator[None]:
    """Pillow's decompression-bomb guard at our cap while a call decodes (it warns above the limit
    and raises above twice it). The setting is process-wide, so it is restored afterwards."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = limits.max_page_pixels
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def open_in_process(data: bytes, limits: DocumentLimits, fmt: DocumentFormat | None = None) -> _Document:
    """Open a document for rendering in this process (the isolated renderer's own entry point)."""
    fmt = fmt or _check_file(data, limits)
    if fmt is DocumentFormat.PDF:
        return _PdfDocument(data, limits)
    return _RasterDocument(data, fmt, limits)


def _mib(size: int) -> str:
    return f"{size / 1024**2:.1f} MiB"


def _check_page_count(count: int, limits: DocumentLimits) -> None:
    if count > limits.max_pages:
        raise DocumentError(
            ErrorCode.TOO_MANY_PAGES,
            f"The document has more than {limits.max_pages} pages, the most read from one document; "
            "split it into smaller files.",
        )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, UnidentifiedImageError):
        return "the data is not a valid image of its format"
    text = str(exc).strip() or type(exc).__name__
    return text[:300]


@contextmanager
def _decoding(code: ErrorCode, what: str) -> Iterator[None]:
    """Turn whatever a decoder raises on hostile input into a DocumentError about `what`."""
    try:
        with warnings.catch_warnings():
            # Decoders warn about what they survive (corrupt EXIF, pixel counts our own checks
            # report precisely); nobody can act on those warnings, failures are raised below.
            warnings.simplefilter("ignore")
            yield
    except DocumentError:
        raise
    except Image.DecompressionBombError as exc:
        raise DocumentError(
            ErrorCode.DECOMPRESSION_BOMB, f"{what} was refused unread as a possible decompression bomb: {exc}"
        ) from None
    except MemoryError:
        raise DocumentError(
            ErrorCode.RENDER_MEMORY_EXCEEDED, f"{what} needs more memory than the renderer may use."
        ) from None
    # Decoders raise many types on broken input (OSError, ValueError, SyntaxError, EOFError,
    # struct.error, zlib.error, IndexError, RecursionError, ...): all mean "cannot be read".
    except Exception as exc:
        raise DocumentError(code, f"{what} cannot be decoded: {_describe(exc)}") from None


def _check_pixels(width: int, height: int, limits: DocumentLimits, what: str) -> None:
    pixels = width * height
    if width < 1 or height < 1:
        raise DocumentError(ErrorCode.CORRUPT_IMAGE, f"{what} has no pixels ({width}x{height}).")
    if pixels > 2 * limits.max_page_pixels:
        raise DocumentError(
            ErrorCode.DECOMPRESSION_BOMB,
            f"{what} declares {width}x{height} = {pixels:,} pixels, more than twice the cap of "
            f"{limits.max_page_pixels:,}; it was refused unread as a possible decompression bomb.",
        )
    if pixels > limits.max_page_pixels:
        raise DocumentError(
            ErrorCode.PAGE_OVER_PIXEL_CAP,
            f"{what} is {width}x{height} = {pixels:,} pixels, over the cap of {limits.max_page_pixels:,} "
            "pixels per page; downscale it and submit it again.",
        )


class _PdfDocument:
    def __init__(self, data: bytes, limits: DocumentLimits) -> None:
        self._limits = limits
        with _decoding(ErrorCode.CORRUPT_PDF, "The PDF"):
            # The raw call, because pdfium's last-error code is only fresh when loading fails:
            # pypdfium2 reads it for a document without pages too and may report a stale error.
            handle = pdfium_c.FPDF_LoadMemDocument64(data, len(data), None)
            if not handle:
                raise _pdf_open_error(pdfium_c.FPDF_GetLastError())
            self._data = data  # pdfium reads from this buffer for as long as the document is open
            self._pdf = pdfium.PdfDocument(handle)
            count = len(self._pdf)
            if count == 0:
                self._pdf.close()
                raise DocumentError(ErrorCode.PDF_WITHOUT_PAGES, "The PDF opens but contains no pages.")
            _check_page_count(count, limits)
            # Filled-in form fields are part of what a reader sees on the page.
            self._pdf.init_forms()
        self.info = DocumentInfo(DocumentFormat.PDF, count, len(data))

    def render(self, page_number: int) -> PageImage:
        what = f"Page {page_number} of the PDF"
        with _decoding(ErrorCode.CORRUPT_PDF, what):
            page = self._pdf[page_number - 1]
            try:
                width, height = page.get_size()
                if not (math.isfinite(width * height) and width > 0 and height > 0):
                    raise DocumentError(ErrorCode.CORRUPT_PDF, f"{what} has no area ({width}x{height} pt).")
                scale = _pdf_scale(width, height, self._limits)
                bitmap = page.render(scale=scale, rev_byteorder=True, may_draw_forms=True)
                pixels = np.asarray(bitmap.to_pil())
            finally:
                page.close()
        return PageImage(page_number, pixels, dpi=scale * 72)

    def close(self) -> None:
        self._pdf.close()


_PDFIUM_ERRORS = {
    pdfium_c.FPDF_ERR_FILE: "file not found or could not be opened",
    pdfium_c.FPDF_ERR_FORMAT: "not in PDF format or corrupted",
    pdfium_c.FPDF_ERR_PAGE: "page not found or content error",
}


def _pdf_open_error(err_code: int) -> DocumentError:
    if err_code in (pdfium_c.FPDF_ERR_PASSWORD, pdfium_c.FPDF_ERR_SECURITY):
        return DocumentError(
            ErrorCode.ENCRYPTED_PDF,
            "The PDF is encrypted and needs a password to open; remove the password and submit it again.",
        )
    reason = _PDFIUM_ERRORS.get(err_code, "unknown error")
    return DocumentError(
        ErrorCode.CORRUPT_PDF, f"The PDF is damaged or truncated and cannot be opened (PDFium: {reason})."
    )


def _pdf_scale(width_pt: float, height_pt: float, limits: DocumentLimits) -> float:
    """Points-to-pixels factor: `pdf_dpi`, lowered for a page that would exceed the pixel cap."""
    scale = min(limits.pdf_dpi / 72, math.sqrt(limits.max_page_pixels / (width_pt * height_pt)))
    # The renderer rounds each side up, which can add a row and a column: step down until it fits.
    while math.ceil(width_pt * scale) * math.ceil(height_pt * scale) > limits.max_page_pixels:
        scale *= 0.995
    return scale


_PIL_FORMATS: dict[DocumentFormat, str] = {
    DocumentFormat.TIFF: "TIFF",
    DocumentFormat.PNG: "PNG",
    DocumentFormat.JPEG: "JPEG",
    DocumentFormat.WEBP: "WEBP",
    DocumentFormat.BMP: "BMP",
    DocumentFormat.GIF: "GIF",
}


class _RasterDocument:
    def __init__(self, data: bytes, fmt: DocumentFormat, limits: DocumentLimits) -> None:
        self._limits = limits
        self._fmt = fmt
        self._data = data
        name = fmt.value.upper()
        with _decoding(ErrorCode.CORRUPT_IMAGE, f"The {name} image"):
            # Only the plugin of the sniffed format may parse it: content decides, once.
            self._image = Image.open(io.BytesIO(data), formats=[_PIL_FORMATS[fmt]])
            _check_pixels(*self._image.size, limits, f"The {name} image")
            count = self._count_tiff_frames() if fmt is DocumentFormat.TIFF else 1
        self.info = DocumentInfo(fmt, count, len(data))

    def _count_tiff_frames(self) -> int:
        """Frames of a TIFF, counted by walking its directories, at most `max_pages + 1`."""
        count = 1
        while count <= self._limits.max_pages:
            try:
                self._image.seek(count)
            except EOFError:
                break
            except Exception:  # a broken directory: a page of its own, failing when rendered
                count += 1
                break
            count += 1
        _check_page_count(count, self._limits)
        return count

    def render(self, page_number: int) -> PageImage:
        multi_frame = self.info.page_count > 1
        what = f"Frame {page_number} of the TIFF" if multi_frame else f"The {self._fmt.value.upper()} image"
        code = ErrorCode.UNREADABLE_FRAME if multi_frame else ErrorCode.CORRUPT_IMAGE
        with _decoding(code, what):
            if self._fmt is DocumentFormat.PNG and (pixels := decode_png(self._data)) is not None:
                return PageImage(page_number, pixels, dpi=None)
            image = self._image
            if self._fmt is DocumentFormat.TIFF:
                image.seek(page_number - 1)
                _check_pixels(*image.size, self._limits, what)
            image.load()
            rgb = _to_rgb(_upright(image))
        return PageImage(page_number, np.asarray(rgb), dpi=None)

    def close(self) -> None:
        self._image.close()


def _upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says (phone photos are stored sideways)."""
    try:
        return ImageOps.exif_transpose(image)
    except Exception:  # a broken EXIF block must not fail a page that decodes fine
        return image


_DEEP_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I", "F"})


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode as 8-bit RGB: transparency on white, 16-bit/float scaled to 8 bits."""
    if image.mode == "RGB":
        return image
    if image.mode in _DEEP_MODES:
        return _deep_to_l(image).convert("RGB")
    if image.has_transparency_data:
        rgba = image.convert("RGBA")
        page = Image.new("RGB", rgba.size, "white")
        page.paste(rgba, mask=rgba.getchannel("A"))
        return page
    return image.convert("RGB")


def _deep_to_l(image: Image.Image) -> Image.Image:
    """16/32-bit integer or float greyscale to 8 bits, keeping the full range of common data."""
    image = image.convert("F")
    low, high = image.getextrema()
    # 16-bit scans use 0..65535 and float images 0..1: scale those as they are, so a light page
    # stays light; anything else is stretched from its darkest to its lightest value.
    if image.mode == "F" and low >= 0 and high <= 1.0:
        low, high = 0.0, 1.0
    elif low >= 0 and 1.0 < high <= 65535:
        low, high = 0.0, 65535.0
    span = (high - low) or 1.0
    return image.point(lambda value: (value - low) * 255.0 / span).convert("L")


# --- the isolated renderer ---------------------------------------------------------------------
#
# Protocol over the child's stdin/stdout: each message is a JSON header (4-byte big-endian
# length, then UTF-8 JSON) and a payload (8-byte length, then bytes). Plain data in both
# directions, so a child subverted by a hostile file cannot make the parent run code (as
# unpickling its output could).

_HEADER = struct.Struct(">I")
_PAYLOAD = struct.Struct(">Q")
_MAX_HEADER_BYTES = 1 << 20
# Python start-up and imports are not the document's fault; they get their own, generous bound.
_STARTUP_TIMEOUT_S = 30.0
_WORKER_MODULE = "pipeline.render_worker"


def write_message(stream: BinaryIO, header: dict[str, Any], payload: bytes = b"") -> None:
    """Write one message to a blocking stream (the child's side)."""
    body = json.dumps(header).encode()
    stream.write(_HEADER.pack(len(body)) + body + _PAYLOAD.pack(len(payload)))
    stream.write(payload)
    stream.flush()


def read_message(stream: BinaryIO) -> tuple[dict[str, Any], bytes] | None:
    """Read one message from a blocking stream (the child's side); None at end of input."""
    raw = stream.read(_HEADER.size)
    if len(raw) < _HEADER.size:
        return None
    header = json.loads(stream.read(_HEADER.unpack(raw)[0]))
    (size,) = _PAYLOAD.unpack(stream.read(_PAYLOAD.size))
    return header, stream.read(size)


class _ChildDied(Exception):
    pass


class _ChildTimedOut(Exception):
    pass


class _Child:
    """One renderer process and deadline-bounded, non-blocking I/O with it (the parent's side)."""

    def __init__(self) -> None:
        self.command = _renderer_command()
        self.owner_pid = os.getpid()
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115 - closed in kill(), it outlives __init__
        env = dict(os.environ)
        root = str(Path(__file__).resolve().parents[1])
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        self._process = subprocess.Popen(
            [sys.executable, "-m", self.command[0]],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=env,
        )
        assert self._process.stdin is not None and self._process.stdout is not None
        self._in = self._process.stdin.fileno()
        self._out = self._process.stdout.fileno()
        for fd in (self._in, self._out):
            os.set_blocking(fd, False)
            with suppress(OSError):  # bigger pipes: a page of pixels crosses in fewer wake-ups
                fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, 1 << 20)

    def wait_ready(self) -> None:
        self.receive(time.monotonic() + _STARTUP_TIMEOUT_S, max_payload=0)

    def request(
        self, header: dict[str, Any], payload: bytes, timeout: float, max_payload: int
    ) -> tuple[dict[str, Any], bytes]:
        deadline = time.monotonic() + timeout
        body = json.dumps(header).encode()
        self._send(_HEADER.pack(len(body)) + body + _PAYLOAD.pack(len(payload)), deadline)
        self._send(payload, deadline)
        return self.receive(deadline, max_payload)

    def receive(self, deadline: float, max_payload: int) -> tuple[dict[str, Any], bytes]:
        (size,) = _HEADER.unpack(self._receive(_HEADER.size, deadline))
        if size > _MAX_HEADER_BYTES:
            raise _ChildDied(f"sent a {size}-byte header")
        header = json.loads(self._receive(size, deadline))
        (size,) = _PAYLOAD.unpack(self._receive(_PAYLOAD.size, deadline))
        if size > max_payload:
            raise _ChildDied(f"sent a {size}-byte payload")
        return header, self._receive(size, deadline)

    def _send(self, data: bytes, deadline: float) -> None:
        view = memoryview(data)
        while view:
            if not select.select([], [self._in], [], self._remaining(deadline))[1]:
                raise _ChildTimedOut
            try:
                view = view[os.write(self._in, view[: 1 << 20]) :]
            except BrokenPipeError:
                raise _ChildDied("closed its input") from None

    def _receive(self, size: int, deadline: float) -> bytes:
        buffer = bytearray()
        while len(buffer) < size:
            if not select.select([self._out], [], [], self._remaining(deadline))[0]:
                raise _ChildTimedOut
            chunk = os.read(self._out, min(size - len(buffer), 1 << 20))
            if not chunk:
                raise _ChildDied("closed its output")
            buffer += chunk
        return bytes(buffer)

    @staticmethod
    def _remaining(deadline: float) -> float:
        # Strict: an answer that is only read after the deadline is late, even if it is waiting.
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise _ChildTimedOut
        return remaining

    def kill(self) -> str:
        """Stop the process; return how it ended and the tail of what it wrote to stderr."""
        if self._process.poll() is None:
            self._process.kill()
        code = self._process.wait()
        for stream in (self._process.stdin, self._process.stdout):
            if stream is not None:
                with suppress(OSError):
                    stream.close()
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - 2000))
        tail = self._stderr.read().decode(errors="replace")
        self._stderr.close()
        return f"exit status {code}; stderr: {tail.strip()[-2000:]!r}"


class _IsolatedDocument:
    """A document opened in a child process; a page that kills the child gets a fresh one."""

    def __init__(self, data: bytes, limits: DocumentLimits, requests: int) -> None:
        self._data = data
        self._limits = limits
        self._requests = requests
        self._child: _Child | None = None
        self.info = self._start("opening the document")

    def _start(self, doing: str) -> DocumentInfo:
        spare = _take_spare()
        if spare is not None:
            try:
                spare.wait_ready()
                self._child = spare
            except (_ChildDied, _ChildTimedOut):  # it died while it waited: start afresh
                spare.kill()
        if self._child is None:
            self._child = _Child()
            try:
                self._child.wait_ready()
            except (_ChildDied, _ChildTimedOut) as exc:
                raise self._failed("starting the renderer", exc) from None
        # A CPU-time cap as well: a child orphaned by a killed parent cannot spin for ever.
        cpu_seconds = math.ceil(_STARTUP_TIMEOUT_S + self._limits.render_timeout_s * (self._requests + 1))
        header = {"op": "open", "limits": asdict(self._limits), "cpu_seconds": cpu_seconds}
        reply, _ = self._call(header, self._data, doing)
        try:
            info = reply["info"]
            return DocumentInfo(
                DocumentFormat(info["format"]), int(info["page_count"]), int(info["byte_size"])
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise self._failed(doing, exc) from None

    def _call(self, header: dict[str, Any], payload: bytes, doing: str) -> tuple[dict[str, Any], bytes]:
        assert self._child is not None
        try:
            max_payload = self._limits.max_page_pixels * 3
            reply, data = self._child.request(header, payload, self._limits.render_timeout_s, max_payload)
            if "error" in reply:
                error = DocumentError(reply["error"]["code"], str(reply["error"]["message"]))
            else:
                return reply, data
        # ValueError and the others: a reply that is not what the protocol says.
        except (_ChildDied, _ChildTimedOut, KeyError, TypeError, ValueError) as exc:
            raise self._failed(doing, exc) from None
        raise error

    def _failed(self, doing: str, exc: Exception) -> DocumentError:
        assert self._child is not None
        ended = self._child.kill()
        self._child = None
        if isinstance(exc, _ChildTimedOut):
            return DocumentError(
                ErrorCode.RENDER_TIMEOUT,
                f"Gave up {doing} after {self._limits.render_timeout_s:g} s (the limit per page).",
            )
        log.warning("document renderer died while %s: %s (%s)", doing, exc, ended)
        if "MemoryError" in ended or "out of memory" in ended.lower() or "bad_alloc" in ended:
            return DocumentError(
                ErrorCode.RENDER_MEMORY_EXCEEDED,
                f"The renderer ran out of memory while {doing} "
                f"(limit {_mib(self._limits.memory_limit_bytes)}).",
            )
        return DocumentError(ErrorCode.RENDER_CRASHED, f"The renderer crashed while {doing}.")

    def render(self, page_number: int) -> PageImage:
        doing = f"rendering page {page_number}"
        if self._child is None:  # the previous page killed it
            self._start(doing)
        reply, pixels = self._call({"op": "render", "page": page_number}, b"", doing)
        try:
            width, height, dpi = int(reply["width"]), int(reply["height"]), reply["dpi"]
            if len(pixels) != width * height * 3 or not (dpi is None or isinstance(dpi, float)):
                raise ValueError("a page that does not match its description")
        except (KeyError, TypeError, ValueError) as exc:
            raise self._failed(doing, exc) from None
        return PageImage(page_number, np.frombuffer(pixels, np.uint8).reshape(height, width, 3), dpi=dpi)

    def close(self) -> None:
        if self._child is not None:
            self._child.kill()
            self._child = None


# One renderer started ahead, per process: Python start-up and imports (a few hundred ms, see
# docs/benchmarks.md) then overlap with the work before the next document instead of adding to it.
# Each child still serves a single document; a spare started for another module or module path
# (tests swap them) or inherited through fork() is not used.
_spare: _Child | None = None
_spare_lock = threading.Lock()


def _renderer_command() -> tuple[str, str]:
    return _WORKER_MODULE, os.environ.get("PYTHONPATH", "")


def _take_spare() -> _Child | None:
    """The waiting renderer, if any, and a new one started to wait for the next document."""
    global _spare
    with _spare_lock:
        taken, _spare = _spare, _Child()
    if taken is not None and (taken.command != _renderer_command() or taken.owner_pid != os.getpid()):
        if taken.owner_pid == os.getpid():
            taken.kill()
        return None
    return taken
