"""The benchmark fixtures: official-format files written by make_fixtures.py into a temporary folder."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from make_fixtures import ROOT, make_fixtures

FILES = {
    "drivelm-val": f"{ROOT}/val/drivelm_val.jsonl",
    "rsvqa-lr": f"{ROOT}/val/rsvqa_l_test_instruct.json",
    "rsvqa-hr-test1": f"{ROOT}/val/rsvqa_h_test_1_instruct.json",
    "rsvqa-hr-test2": f"{ROOT}/val/rsvqa_h_test_2_instruct.json",
    "dior-rsvg": f"{ROOT}/val/dior_rsvg_test.json",
    "gmai-mmbench": "GMAI-MMBench_VAL.tsv",
    "mme-realworld-ad": f"{ROOT}/val/MME_RealWorld.json",
}


@dataclass
class BenchFiles:
    """Where the fixture files are."""

    out: Path

    @property
    def root(self) -> Path:
        """The dataset root (the folder holding val/ and images/)."""
        return self.out / ROOT

    def data(self, name: str) -> Path:
        """The official file of a benchmark."""
        return self.out / FILES[name]

    def predictions(self, name: str) -> dict[str, str]:
        """The fixture answers of a benchmark."""
        return json.loads((self.out / "predictions" / f"{name}.json").read_text(encoding="utf-8"))

    @property
    def drivelm_tags(self) -> Path:
        """The DriveLM challenge-format file with the metric tags."""
        return self.out / "drivelm_challenge_tags.json"


@pytest.fixture
def bench_files(tmp_path: Path) -> BenchFiles:
    """A fresh copy of every fixture file (tests may delete images)."""
    return BenchFiles(make_fixtures(tmp_path / "bench"))
