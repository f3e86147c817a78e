"""Locate and read the golden parity data (official code outputs, see ../shared/golden/README.md)."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """The golden folder: $KALEIDO_GOLDEN_DIR, else ../shared/golden next to the repository.

    Missing data fails the test (never a silent skip): parity is the point of these tests.
    """
    path = Path(os.environ.get("KALEIDO_GOLDEN_DIR", REPO.parent / "shared" / "golden"))
    if not (path / "manifest.json").is_file():
        pytest.fail(f"golden data not found at {path} (set KALEIDO_GOLDEN_DIR to the folder holding manifest.json)")
    return path


def manifest() -> dict:
    return json.loads((golden_dir() / "manifest.json").read_text())


def tensors(file_name: str) -> dict:
    return load_file(str(golden_dir() / file_name))
