"""Shared test fixtures. `shared` is the project's ../shared folder (or $SGZ_SHARED): reference
checkpoints and data from elsewhere that are never copied into the project."""
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SHARED = Path(os.environ.get("SGZ_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def shared():
    if not (SHARED / "reference" / "parity.npz").is_file():
        pytest.skip(f"reference data not found at {SHARED} (set SGZ_SHARED to the shared/ folder)")
    return SHARED


@pytest.fixture(scope="session")
def official_weights(shared):
    return shared / "reference" / "sgz_official_Epoch99.pth"
