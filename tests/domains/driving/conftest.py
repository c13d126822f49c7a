"""Fixtures of the BDD-X tests: the bundled demo (made by scripts/make_bddx_demo.py), copied so a test can break it."""

from __future__ import annotations

import csv
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from mini_internvl_adapt.domains.driving import DrivingDomain


@pytest.fixture
def bddx_demo(tmp_path: Path) -> Path:
    """A copy of the BDD-X demo folder (CSV, videos/, info/, train.txt, test.txt)."""
    src = DrivingDomain().demo_source(fmt="bddx").parent
    return Path(shutil.copytree(src, tmp_path / "bddx"))


@pytest.fixture
def bddx_options(bddx_demo: Path) -> dict:
    """The demo's convert options pointing into the copy."""
    return {"format": "bddx", "videos": bddx_demo / "videos", "info": bddx_demo / "info",
            "split_lists": bddx_demo, "workers": 1}  # fmt: skip


@pytest.fixture
def edit_csv(bddx_demo: Path) -> Callable[[int, int, dict[str, str]], None]:
    """Change one segment of the copied CSV: edit(row, k, {"start": "4", "action": ""})."""

    def edit(row: int, k: int, fields: dict[str, str]) -> None:
        path = bddx_demo / "BDD-X-Annotations_v1.csv"
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
        header = rows[0]
        for name, value in fields.items():
            rows[row][header.index(f"Answer.{k}{name}")] = value
        with open(path, "w", newline="", encoding="utf-8") as f:
            csv.writer(f, lineterminator="\n").writerows(rows)

    return edit


@pytest.fixture
def bddx_videos(bddx_demo: Path) -> list[str]:
    """The demo's video ids in CSV row order (rows 1 and 2 train, row 3 test)."""
    with open(bddx_demo / "BDD-X-Annotations_v1.csv", newline="", encoding="utf-8") as f:
        return [row["Input.Video"].rsplit("/", 1)[-1].removesuffix(".mov") for row in csv.DictReader(f)]
