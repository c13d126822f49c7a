"""The official domain benchmarks of the Mini-InternVL paper: read each official file as its official reader
does, and score answers as its official scoring code does.

Readers hand out plain `BenchRecord` s (id, image paths, the exact prompt, tiling and decoding settings,
ground truth) that any generator can answer; `score_benchmark` / `score_records` turn answers into the
paper's metrics; `paper_comparison` puts the registry's paper numbers beside them. No model and no torch
here: generating with a model under the official settings (``adapt bench``) is `bench.run`, imported on
demand.
"""

from __future__ import annotations

from .api import check_score_options, paper_values, read_benchmark, score_benchmark, score_records
from .paper import format_bench_table, format_benchmark_list, paper_comparison, published_behind
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
    "check_score_options",
    "format_bench_table",
    "format_benchmark_list",
    "get_benchmark",
    "paper_comparison",
    "paper_values",
    "published_behind",
    "read_benchmark",
    "score_benchmark",
    "score_records",
]
