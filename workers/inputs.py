"""Reading a submitted document's bytes, the same way for the ingest and the gpu workers."""

from __future__ import annotations

from botocore.exceptions import ClientError

from jobs.formats import DocumentError, ErrorCode
from jobs.settings import Settings
from jobs.storage import get_storage, is_not_found
from pipeline.documents import DocumentLimits

DENIED_CODES = frozenset({"AccessDenied", "403", "AllAccessDisabled", "InvalidObjectState"})


def document_limits(settings: Settings) -> DocumentLimits:
    return DocumentLimits(
        max_file_bytes=settings.max_file_bytes,
        max_pages=settings.max_pages_per_document,
        max_page_pixels=settings.max_page_pixels,
        pdf_dpi=settings.pdf_dpi,
        render_timeout_s=settings.render_timeout_s,
        memory_limit_bytes=settings.render_memory_bytes,
    )


def read_document(input_key: str | None, source_uri: str, settings: Settings) -> bytes:
    """The document's bytes: our uploaded copy under `inputs/` when there is one, else the
    user's `s3://` object. A missing or forbidden object is the document's `DocumentError`;
    transient errors (5xx, timeouts) propagate for the task to retry."""
    storage = get_storage()
    try:
        if input_key:
            data = storage.get(input_key, max_bytes=settings.max_file_bytes)
        else:
            data = storage.get_uri(source_uri, max_bytes=settings.max_file_bytes)
    except ValueError as exc:  # not an s3:// URI
        raise DocumentError(ErrorCode.SOURCE_UNREADABLE, str(exc)) from exc
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code == "InvalidRange":  # a ranged GET of an empty object
            return b""
        if is_not_found(exc):
            raise DocumentError(ErrorCode.SOURCE_NOT_FOUND, f"{source_uri} does not exist.") from exc
        if code in DENIED_CODES:
            raise DocumentError(
                ErrorCode.SOURCE_UNREADABLE, f"{source_uri} cannot be read ({code})."
            ) from exc
        raise
    if len(data) > settings.max_file_bytes:
        raise DocumentError(
            ErrorCode.FILE_TOO_LARGE,
            f"The document is larger than the limit of {settings.max_file_bytes} bytes.",
        )
    return data
