"""Broken bytes in, only DocumentError out: no crash, no hang, no other exception.

Valid small files of every format are mutated (bit flips, cuts, insertions, overwrites) and
random bytes are put behind each format's magic number; the results go through
`inspect_document` and `render_pages`. The in-process path takes many examples (it checks
that every decoder failure is mapped to a code); the isolated path, the one the workers use,
takes fewer (each costs a process). Deterministic (`derandomize`) and bounded in time.
"""

from __future__ import annotations

import time

import pytest
from document_samples import seeds
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from jobs.formats import DocumentError
from pipeline.documents import DocumentLimits, PageImage, inspect_document, render_pages

SEEDS = seeds()
# Small caps keep a mutated header that claims a large image cheap to refuse or to decode.
LIMITS = DocumentLimits(max_page_pixels=1_000_000, max_pages=20, render_timeout_s=10.0)
MAGICS = [b"%PDF-1.7\n", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"II*\x00", b"MM\x00*",
          b"RIFF\x00\x00\x00\x00WEBPVP8 ", b"BM" + b"\x00" * 12 + b"\x28\x00\x00\x00"]  # fmt: skip
FUZZ = settings(deadline=None, database=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "overwrite", "delete"]))
        if kind == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "cut":
            del data[at:]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "overwrite":
            chunk = draw(st.binary(min_size=1, max_size=16))
            data[at : at + len(chunk)] = chunk
        elif kind == "delete":
            del data[at : at + draw(st.integers(1, 64))]
    return bytes(data)


behind_magic = st.builds(lambda magic, rest: magic + rest, st.sampled_from(MAGICS), st.binary(max_size=512))
broken = st.one_of(mutated(), behind_magic)


def exercise(data: bytes, isolated: bool) -> None:
    started = time.monotonic()
    try:
        info = inspect_document(data, LIMITS, isolated=isolated)
        results = render_pages(data, list(range(1, min(info.page_count, 3) + 1)), LIMITS, isolated=isolated)
    except DocumentError as exc:
        assert exc.code and exc.message
        return
    finally:
        assert time.monotonic() - started < 2 * LIMITS.render_timeout_s + 30
    for result in results:
        if isinstance(result, PageImage):
            assert result.image.mode == "RGB"
            assert result.image.width * result.image.height <= LIMITS.max_page_pixels
        else:
            assert isinstance(result, DocumentError) and result.message


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=2000)
@given(broken)
def test_broken_bytes_in_process(data: bytes) -> None:
    exercise(data, isolated=False)


@pytest.mark.timeout(120)
@settings(FUZZ, max_examples=40)
@given(broken)
def test_broken_bytes_isolated(data: bytes) -> None:
    exercise(data, isolated=True)


def test_seeds_are_valid() -> None:
    # Otherwise the mutations would start from files that fail anyway and test little.
    for data in SEEDS.values():
        (page,) = render_pages(data, [1], LIMITS, isolated=False)
        assert isinstance(page, PageImage)
