"""Shared fixtures. Real competition puzzles live in ../shared/data beside the repo (absent in a user's
fresh clone): tests that need them skip cleanly."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
TRAIN_DEV = SHARED_DATA / "train_dev.csv"


@pytest.fixture(scope="session")
def train_dev_path() -> Path:
    if not TRAIN_DEV.exists():
        pytest.skip(f"{TRAIN_DEV} is absent (real puzzles are only in the developers' shared folder)")
    return TRAIN_DEV


@pytest.fixture(scope="session")
def train_dev_rows(train_dev_path) -> list[dict]:
    with open(train_dev_path, newline="") as f:
        return list(csv.DictReader(f))
