"""Golden fixtures computed by the published Mini-Monkey implementation (`../shared/golden`)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

GOLDEN = Path(
    os.environ.get("MONKEYJOBS_GOLDEN_DIR", Path(__file__).resolve().parents[3] / "shared" / "golden")
)


def golden_cases() -> list[dict[str, Any]]:
    return json.loads((GOLDEN / "cases.json").read_text())["cases"]


@pytest.fixture(scope="session")
def golden_engine():
    from pipeline.engine import Engine

    return Engine.load(str(GOLDEN / "checkpoint"), device="cpu", dtype="float32")
