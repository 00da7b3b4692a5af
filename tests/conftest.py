"""Shared test fixtures: where the repository and the shared IXI data are."""

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("PIPELINE_SHARED_DATA", REPO.parent / "shared" / "data"))
IXI_MANIFEST = REPO / "data_manifests" / "ixi_t1.json"


@pytest.fixture(scope="session")
def ixi_dir() -> Path:
    """The shared IXI T1 folder; tests that need real scans skip, saying where they looked, only if it is absent."""
    path = SHARED_DATA / "ixi_t1"
    if not path.is_dir():
        pytest.skip(f"shared IXI data not found at {path} (set PIPELINE_SHARED_DATA)")
    return path
