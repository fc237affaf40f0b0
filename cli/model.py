"""Engine commands: `monkeyjobs infer` (one-off, no service needed) and `monkeyjobs model make-tiny`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_id",
    envvar="MONKEYJOBS_MODEL",
    required=True,
    help="Checkpoint directory or hub id (mx262/MiniMonkey). Env: MONKEYJOBS_MODEL.",
)
@click.option(
    "--question",
    default=None,
    help='Question about each page; default: OCR ("Read all the text in the image.").',
)
@click.option("--scm/--no-scm", default=False, show_default=True, help="Scale compression mechanism.")
@click.option(
    "--scm-keep-ratio", default=0.5, show_default=True, type=click.FloatRange(0.0, 1.0, min_open=True)
)
@click.option(
    "--msac/--no-msac",
    default=True,
    show_default=True,
    help="Multi-scale adaptive cropping (off: single scale).",
)
@click.option("--detail-max-tiles", default=12, show_default=True, type=click.IntRange(1))
@click.option("--adaptive-max-tiles", default=7, show_default=True, type=click.IntRange(1))
@click.option("--max-new-tokens", default=512, show_default=True, type=click.IntRange(1))
@click.option("--min-new-tokens", default=0, show_default=True, type=click.IntRange(0))
@click.option(
    "--do-sample/--greedy", default=False, show_default=True, help="Sample instead of greedy decoding."
)
@click.option("--temperature", default=1.0, show_default=True, type=float)
@click.option("--top-p", default=1.0, show_default=True, type=float)
@click.option("--top-k", default=0, show_default=True, type=int)
@click.option("--seed", default=None, type=int, help="Seed of the sampler (with --do-sample).")
@click.option("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available).")
@click.option(
    "--dtype",
    default=None,
    type=click.Choice(["float32", "bfloat16", "float16"]),
    help="Default: float32 on CPU, bfloat16 on CUDA.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per page per line.")
def infer(
    images: tuple[Path, ...],
    model_id: str,
    question: str | None,
    scm: bool,
    scm_keep_ratio: float,
    msac: bool,
    detail_max_tiles: int,
    adaptive_max_tiles: int,
    max_new_tokens: int,
    min_new_tokens: int,
    do_sample: bool,
    temperature: float,
    top_p: float,
    top_k: int,
    seed: int | None,
    device: str | None,
    dtype: str | None,
    as_json: bool,
) -> None:
    """Answer a question about (or read) each page of IMAGES (any supported format), batched together."""
    from jobs.formats import DocumentError
    from jobs.settings import get_settings
    from pipeline.documents import inspect_document, render_pages
    from pipeline.engine import Engine
    from pipeline.requests import OCR_QUESTION, InferenceOptions, PageRequest

    try:
        options = InferenceOptions(
            msac=msac,
            detail_max_tiles=detail_max_tiles,
            detail_min_tiles=min(4, detail_max_tiles),
            adaptive_max_tiles=adaptive_max_tiles,
            adaptive_min_tiles=min(3, adaptive_max_tiles),
            scm=scm,
            scm_keep_ratio=scm_keep_ratio,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            seed=seed,
        )
    except ValueError as exc:
        raise click.UsageError(str(exc)) from exc

    # The service's limits (MONKEYJOBS_* settings), so a file gets the verdict a job would give it.
    from workers.inputs import document_limits

    limits = document_limits(get_settings())
    pages: list[tuple[Path, int]] = []
    requests: list[PageRequest] = []
    failed = 0
    for path in images:
        try:
            data = _read(path)
            info = inspect_document(data, limits)
            rendered = render_pages(data, list(range(1, info.page_count + 1)), limits)
        except DocumentError as exc:
            failed += 1
            _report_error(path, None, exc, as_json)
            continue
        for number, page in enumerate(rendered, start=1):
            if isinstance(page, DocumentError):
                failed += 1
                _report_error(path, number, page, as_json)
                continue
            pages.append((path, page.page_number))
            requests.append(
                PageRequest(images=[page.pixels], question=question or OCR_QUESTION, options=options)
            )

    if requests:
        engine = Engine.load(model_id, device=device, dtype=dtype)
        for (path, page_number), answer in zip(pages, engine.run(requests), strict=True):
            if as_json:
                click.echo(
                    json.dumps(
                        {
                            "image": str(path),
                            "page": page_number,
                            "text": answer.text,
                            "token_ids": answer.token_ids,
                            "tiles": answer.tiles,
                            "image_tokens": answer.image_tokens,
                            "prompt_tokens": answer.prompt_tokens,
                            "finish_reason": answer.finish_reason,
                            "seconds": round(answer.seconds, 4),
                        },
                        ensure_ascii=False,
                    )
                )
            else:
                click.echo(
                    f"== {path} (page {page_number}, {answer.tiles} tiles, {answer.seconds:.2f}s)\n"
                    f"{answer.text}"
                )
    if failed:
        sys.exit(1)


def _read(path: Path) -> bytes:
    from jobs.formats import DocumentError, ErrorCode

    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DocumentError(ErrorCode.SOURCE_NOT_FOUND, f"{path}: no such file") from None
    except OSError as exc:
        raise DocumentError(ErrorCode.SOURCE_UNREADABLE, f"{path}: cannot be read ({exc.strerror})") from None


def _report_error(path: Path, page: int | None, error: Exception, as_json: bool) -> None:
    code = getattr(error, "code", "error")
    message = getattr(error, "message", str(error))
    if as_json:
        click.echo(
            json.dumps({"image": str(path), "page": page, "error": {"code": str(code), "message": message}})
        )
    click.echo(f"error: {path}: [{code}] {message}", err=True)


@click.group()
def model() -> None:
    """Model checkpoints."""


@model.command("make-tiny")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--seed", default=0, show_default=True, type=int)
def make_tiny(directory: Path, seed: int) -> None:
    """Write a tiny random checkpoint in the published layout (its answers are noise)."""
    from pipeline.tiny import make_tiny_checkpoint

    click.echo(make_tiny_checkpoint(directory, seed=seed))


COMMANDS = [infer, model]
