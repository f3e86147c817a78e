"""Locate and read the golden parity data (official code outputs, see ../shared/golden/README.md)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """The golden folder: $KALEIDO_GOLDEN_DIR, else ../shared/golden next to the repository (the ground truth),
    else the snapshot of it committed in tests/data/golden (so a bare clone can run the suite).

    Missing data fails the test (never a silent skip): parity is the point of these tests.
    """
    candidates = [REPO.parent / "shared" / "golden", REPO / "tests" / "data" / "golden"]
    if "KALEIDO_GOLDEN_DIR" in os.environ:
        candidates = [Path(os.environ["KALEIDO_GOLDEN_DIR"])]
    for path in candidates:
        if (path / "manifest.json").is_file():
            return path
    pytest.fail(
        f"golden data not found in {[str(c) for c in candidates]} (set KALEIDO_GOLDEN_DIR to the folder holding manifest.json)"
    )


def manifest() -> dict:
    return json.loads((golden_dir() / "manifest.json").read_text())


def tensors(file_name: str) -> dict:
    return load_file(str(golden_dir() / file_name))


def golden_dit(dtype: str = "float32"):
    """The tiny official DiT of case `dit` with the golden weights (the parity checker's own builder)."""
    from scripts.check_parity import Golden, build_golden_dit

    return build_golden_dit(Golden(golden_dir()), dtype)
