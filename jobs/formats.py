"""What a document is, what can be wrong with it, and which of its pages were asked for.

Pure standard library: the API imports this module to sniff uploads, validate page selections
and escape file names without pulling in Pillow or pdfium; `pipeline.documents` raises the same
`DocumentError` codes from the workers. Every `ErrorCode` is a stable, public string (it is
shown in `GET /v1/jobs/{id}` and in the manifest) and is documented in `docs/errors.md`.
"""

from __future__ import annotations

import re
import unicodedata
from enum import StrEnum

# Bytes a caller should read from the start of a file before sniffing it: PDF readers accept
# the `%PDF-` header anywhere in the first kilobyte, so that is what `sniff_format` searches.
SNIFF_BYTES = 1024


class DocumentFormat(StrEnum):
    PDF = "pdf"
    TIFF = "tiff"
    PNG = "png"
    JPEG = "jpeg"
    WEBP = "webp"
    BMP = "bmp"
    GIF = "gif"


SUPPORTED_FORMATS_TEXT = "PDF, TIFF, PNG, JPEG, WebP, BMP, GIF"


class ErrorCode(StrEnum):
    """Why a document or one of its pages failed. Values never change; see docs/errors.md."""

    EMPTY_FILE = "empty_file"
    UNSUPPORTED_TYPE = "unsupported_type"
    FILE_TOO_LARGE = "file_too_large"
    CORRUPT_PDF = "corrupt_pdf"
    ENCRYPTED_PDF = "encrypted_pdf"
    PDF_WITHOUT_PAGES = "pdf_without_pages"
    CORRUPT_IMAGE = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    PAGE_OVER_PIXEL_CAP = "page_over_pixel_cap"
    TOO_MANY_PAGES = "too_many_pages"
    JOB_PAGE_LIMIT = "job_page_limit"
    UNREADABLE_FRAME = "unreadable_frame"
    RENDER_TIMEOUT = "render_timeout"
    RENDER_MEMORY_EXCEEDED = "render_memory_exceeded"
    RENDER_CRASHED = "render_crashed"
    INVALID_PAGE_SELECTION = "invalid_page_selection"
    PAGE_OUT_OF_RANGE = "page_out_of_range"
    SOURCE_NOT_FOUND = "source_not_found"
    SOURCE_UNREADABLE = "source_unreadable"
    INFERENCE_FAILED = "inference_failed"
    INTERNAL_ERROR = "internal_error"


class DocumentError(Exception):
    """A document (or one page of it) cannot be read: a stable `code` and a human `message`."""

    def __init__(self, code: ErrorCode | str, message: str) -> None:
        super().__init__(ErrorCode(code), message)
        self.code = ErrorCode(code)
        self.message = message

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def to_dict(self) -> dict[str, str]:
        """The JSON shape used in job status, manifests and page results."""
        return {"code": self.code.value, "message": self.message}


# --- format sniffing ---------------------------------------------------------------------------

_BMP_DIB_HEADER_SIZES = frozenset({12, 40, 52, 56, 64, 108, 124})

# Recognised but unsupported kinds, named in the error message so the user knows what we saw.
_KNOWN_UNSUPPORTED: tuple[tuple[bytes, int, str], ...] = (
    (b"PK\x03\x04", 0, "a ZIP archive (DOCX, XLSX, ODT and similar office files are ZIP archives)"),
    (b"PK\x05\x06", 0, "an empty ZIP archive"),
    (b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 0, "a legacy Microsoft Office file (DOC, XLS, PPT)"),
    (b"\x1f\x8b", 0, "a gzip archive"),
    (b"Rar!\x1a\x07", 0, "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", 0, "a 7-Zip archive"),
    (b"{\\rtf", 0, "an RTF document"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", 0, "a JPEG 2000 image"),
    (b"\xff\x4f\xff\x51", 0, "a JPEG 2000 codestream"),
    (b"8BPS", 0, "a Photoshop document"),
    (b"%!PS", 0, "a PostScript file"),
)
_FTYP_BRANDS: dict[bytes, str] = {
    b"heic": "a HEIC image",
    b"heix": "a HEIC image",
    b"mif1": "a HEIF image",
    b"msf1": "a HEIF image sequence",
    b"avif": "an AVIF image",
}


def sniff_format(head: bytes) -> DocumentFormat | None:
    """The supported format of a file from its first bytes (`SNIFF_BYTES` suffice), or None.

    Content only, never the file name: a `report.pdf` that holds a PNG is a PNG.
    """
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return DocumentFormat.PNG
    if head.startswith(b"\xff\xd8\xff"):
        return DocumentFormat.JPEG
    if head.startswith((b"GIF87a", b"GIF89a")):
        return DocumentFormat.GIF
    # Classic TIFF (`*`) and BigTIFF (`+`), both byte orders.
    if head.startswith((b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")):
        return DocumentFormat.TIFF
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return DocumentFormat.WEBP
    # "BM" alone is too weak (a text file may start with it): also require a known DIB header size.
    if head[:2] == b"BM" and int.from_bytes(head[14:18], "little") in _BMP_DIB_HEADER_SIZES:
        return DocumentFormat.BMP
    if b"%PDF-" in head[:SNIFF_BYTES]:
        return DocumentFormat.PDF
    return None


def describe_unsupported(head: bytes) -> str:
    """A short guess of what an unsupported file is, for the error message."""
    for magic, offset, what in _KNOWN_UNSUPPORTED:
        if head[offset:].startswith(magic):
            return what
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    sample = head[:SNIFF_BYTES]
    if b"\x00" not in sample:
        try:
            text = sample.decode("utf-8")
        except UnicodeDecodeError as exc:
            # A multi-byte character cut by the end of the sample is still text.
            if exc.start < len(sample) - 3:
                return "binary data of an unknown kind"
            text = sample[: exc.start].decode("utf-8")
        stripped = text.lstrip().lower()
        if stripped.startswith(("<!doctype html", "<html")):
            return "an HTML page"
        if stripped.startswith("<?xml"):
            return "an XML document"
        return "plain text"
    return "binary data of an unknown kind"


def check_format(head: bytes) -> DocumentFormat:
    """`sniff_format`, raising `DocumentError` (`empty_file`, `unsupported_type`) instead of None."""
    if not head:
        raise DocumentError(ErrorCode.EMPTY_FILE, "The file is empty (0 bytes).")
    found = sniff_format(head)
    if found is None:
        raise DocumentError(
            ErrorCode.UNSUPPORTED_TYPE,
            f"The file looks like {describe_unsupported(head)}, not a supported document; "
            f"supported formats are {SUPPORTED_FORMATS_TEXT} (recognised by content, not by name).",
        )
    return found


# --- page selection ----------------------------------------------------------------------------

MAX_PAGE_SELECTION_CHARS = 1000
# No document has more pages than this; it bounds the work a selection like "1-999999999" implies.
MAX_PAGE_NUMBER = 100_000

_TERM = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?", re.ASCII)


def _selection_ranges(spec: str) -> list[tuple[int, int]]:
    """Parse "1-3, 7" into [(1, 3), (7, 7)], raising `invalid_page_selection` with the reason."""

    def invalid(reason: str) -> DocumentError:
        return DocumentError(ErrorCode.INVALID_PAGE_SELECTION, f"Page selection {spec[:80]!r}: {reason}.")

    if len(spec) > MAX_PAGE_SELECTION_CHARS:
        raise invalid(f"longer than {MAX_PAGE_SELECTION_CHARS} characters")
    if not spec.strip():
        raise invalid('empty; give page numbers and ranges such as "1-3,7", or leave it out for every page')
    ranges = []
    for term in spec.split(","):
        match = _TERM.fullmatch(term)
        if match is None:
            raise invalid(f'{term.strip()!r} is not a page number or a range such as "1-3" (1-based)')
        first = int(match.group(1))
        last = int(match.group(2)) if match.group(2) is not None else first
        if first < 1:
            raise invalid("page numbers start at 1")
        if last < first:
            raise invalid(f"range {first}-{last} runs backwards")
        if last > MAX_PAGE_NUMBER:
            raise invalid(f"page {last} is beyond the largest page number allowed ({MAX_PAGE_NUMBER})")
        ranges.append((first, last))
    return ranges


def validate_page_selection(spec: str) -> None:
    """Check the syntax of a selection without knowing the page count (the API's 422)."""
    _selection_ranges(spec)


def parse_page_selection(spec: str, page_count: int | None) -> list[int]:
    """The 1-based pages a selection like "1-3,7" names: sorted, without duplicates.

    With `page_count`, a page beyond the document's end raises `page_out_of_range`.
    """
    ranges = _selection_ranges(spec)
    highest = max(last for _, last in ranges)
    if page_count is not None and highest > page_count:
        raise DocumentError(
            ErrorCode.PAGE_OUT_OF_RANGE,
            f"Page selection {spec[:80]!r} asks for page {highest}, "
            f"but the document has {page_count} page{'s' if page_count != 1 else ''}.",
        )
    pages: set[int] = set()
    for first, last in ranges:
        pages.update(range(first, last + 1))
    return sorted(pages)


# --- file names --------------------------------------------------------------------------------

MAX_FILENAME_CHARS = 255


def _is_unsafe_char(char: str) -> bool:
    # Cc: C0/C1 controls and DEL; Cf: invisible format characters such as the right-to-left
    # override that can disguise "gpj.exe" as "exe.jpg"; Zl/Zp: line and paragraph separators.
    return unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp") or char == "\\"


def _escape_char(char: str) -> str:
    if char == "\\":
        return "\\\\"
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def safe_filename(name: str) -> str:
    """The form in which a submitted file name is stored and shown.

    Control and invisible format characters (and the backslash, so the escaping is unambiguous)
    are written as `\\xNN` / `\\uNNNN`; the text is NFC-normalised and bounded in length. Path
    parts like `../` stay visible as given: the name is never used as a path or an object key
    (use `path_safe_filename` for that).
    """
    normalised = unicodedata.normalize("NFC", name)
    escaped = "".join(_escape_char(c) if _is_unsafe_char(c) else c for c in normalised)
    if len(escaped) > MAX_FILENAME_CHARS:
        escaped = escaped[: MAX_FILENAME_CHARS - 1] + "…"
    return escaped or "(unnamed)"


def path_safe_filename(name: str, default: str = "document") -> str:
    """One harmless path component derived from a submitted name, for files written to disk.

    Keeps only the last part after `/` or `\\`, drops unsafe characters and leading dots (no
    `..`, no hidden files), and bounds the length while keeping the extension.
    """
    base = re.split(r"[/\\]", unicodedata.normalize("NFC", name))[-1]
    base = "".join(c for c in base if not _is_unsafe_char(c)).strip().lstrip(".").strip()
    if not base:
        return default
    if len(base) > MAX_FILENAME_CHARS:
        _, dot, ext = base.rpartition(".")
        suffix = "." + ext if dot and len(ext) <= 16 else ""
        base = base[: MAX_FILENAME_CHARS - len(suffix)] + suffix
    return base
