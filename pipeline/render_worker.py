"""The isolated document renderer: `python -m pipeline.render_worker`.

Started by `pipeline.documents` (one process per `inspect_document`/`render_pages` call, started
ahead of need), never by hand. It imports what it needs, compiles the PNG decoder's loop (or
loads it from numba's cache), says it is ready, then answers requests on stdin/stdout until stdin
closes: `open` (the document bytes as payload, the limits and a CPU budget in the header; it caps
its address space at its footprint plus `memory_limit_bytes` and its CPU time, then replies with
the document's `info`) and `render` (one page; replies with width, height, dpi and the raw RGB
pixels). A failure is an `error` reply with a code.
"""

from __future__ import annotations

import os
import resource
import sys

from PIL import Image

from jobs.formats import DocumentError, ErrorCode
from pipeline.documents import DocumentLimits, open_in_process, read_message, write_message
from pipeline.png import compile_decoder


def _limit_resources(memory_bytes: int, cpu_seconds: int) -> None:
    with open("/proc/self/statm") as statm:
        footprint = int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    resource.setrlimit(resource.RLIMIT_AS, (footprint + memory_bytes, footprint + memory_bytes))
    # The soft limit sends SIGXCPU, the hard one SIGKILL a little later.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a crash on a hostile file leaves no core dump


def main() -> None:
    # The protocol gets a private copy of stdout; anything a library prints goes to stderr.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    requests = sys.stdin.buffer
    compile_decoder()  # under the start-up bound, not a page's render timeout
    write_message(replies, {"ready": True})
    document = None
    while (message := read_message(requests)) is not None:
        header, payload = message
        try:
            if header["op"] == "open":
                limits = DocumentLimits(**header["limits"])
                _limit_resources(limits.memory_limit_bytes, int(header["cpu_seconds"]))
                # This process decodes one document: Pillow's guard can stay at its cap.
                Image.MAX_IMAGE_PIXELS = limits.max_page_pixels
                document = open_in_process(payload, limits)
                info = document.info
                reply = {
                    "format": info.format.value,
                    "page_count": info.page_count,
                    "byte_size": info.byte_size,
                }
                write_message(replies, {"info": reply})
            elif document is not None and header["op"] == "render":
                page = document.render(int(header["page"]))
                height, width = page.pixels.shape[:2]
                pixels = page.pixels.tobytes()
                write_message(replies, {"width": width, "height": height, "dpi": page.dpi}, pixels)
            else:
                raise DocumentError(ErrorCode.INTERNAL_ERROR, f"Unexpected request {header.get('op')!r}.")
        except DocumentError as exc:
            write_message(replies, {"error": exc.to_dict()})
        except MemoryError:
            error = DocumentError(
                ErrorCode.RENDER_MEMORY_EXCEEDED, "The page needs more memory than the renderer may use."
            )
            write_message(replies, {"error": error.to_dict()})


if __name__ == "__main__":
    main()
