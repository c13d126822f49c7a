"""The official domain benchmarks of the Mini-InternVL paper: read each official file as its official reader
does, and score answers as its official scoring code does.

Readers hand out plain `BenchRecord` s (id, image paths, the exact prompt, tiling and decoding settings,
ground truth) that any generator can answer; `score_benchmark` / `score_records` turn answers into the
paper's metrics. No model and no torch here.
"""

from __future__ import annotations

from .api import paper_values, read_benchmark, score_benchmark, score_records
from .records import (
    BenchmarkDataError,
    BenchRead,
    BenchRecord,
    EntryProblem,
    GenerationSettings,
    SkippedEntry,
)
from .table import BENCHMARKS, Benchmark, PaperMetric, UnknownBenchmarkError, get_benchmark

__all__ = [
    "BENCHMARKS",
    "BenchRead",
    "BenchRecord",
    "Benchmark",
    "BenchmarkDataError",
    "EntryProblem",
    "GenerationSettings",
    "PaperMetric",
    "SkippedEntry",
    "UnknownBenchmarkError",
    "get_benchmark",
    "paper_values",
    "read_benchmark",
    "score_benchmark",
    "score_records",
]
