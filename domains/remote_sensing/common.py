"""Pieces every remote-sensing source format shares: the rasterio import, task names, splits, parallel work."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from mini_internvl_adapt.errors import MissingDependencyError

DOMAIN = "remote-sensing"
GROUNDING, VQA, CLASSIFICATION, CAPTIONING = "rs-grounding", "rs-vqa", "rs-classification", "rs-captioning"
TASKS = (GROUNDING, VQA, CLASSIFICATION, CAPTIONING)
SHORT_ANSWER = "Answer the question using a single word or phrase."

T = TypeVar("T")
R = TypeVar("R")


def require_rasterio() -> Any:
    """Import rasterio on use, so the domain lists and imports without it.

    Raises:
        MissingDependencyError: rasterio is not installed; names the extra to install.
    """
    try:
        import rasterio
        import rasterio.warp  # noqa: F401  (label reprojection)
        import rasterio.windows  # noqa: F401
    except ImportError:
        raise MissingDependencyError(DOMAIN, "rasterio", "remote-sensing") from None
    return rasterio


def grouped_test_set(groups: Iterable[str], fraction: float, seed: int) -> set[str]:
    """Pick the groups (scenes, images, chip rows) that go to the test split.

    Whole groups move together so nothing leaks across splits. With two groups or more, both splits
    get at least one; with a single group everything trains.

    Args:
        groups: Group keys (duplicates are fine).
        fraction: Wanted share of groups in test (0 gives none, 1 gives all).
        seed: Seed of the shuffle, so a conversion is reproducible.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the test fraction must be between 0 and 1, got {fraction}")
    unique = sorted(set(groups))
    random.Random(seed).shuffle(unique)
    n_test = round(len(unique) * fraction)
    if len(unique) >= 2 and 0.0 < fraction < 1.0:
        n_test = min(max(n_test, 1), len(unique) - 1)
    return set(unique[:n_test])


def parallel_map(
    fn: Callable[[T], R], items: Sequence[T], workers: int, desc: str, unit: str = "img"
) -> list[R | BaseException]:
    """Run `fn` over `items` in threads with a tqdm bar; a failing item gives its exception, not a crash.

    Threads suit this work: rasterio, zlib and Pillow release the GIL while they read and encode.
    """
    from tqdm import tqdm

    def guarded(item: T) -> R | BaseException:
        try:
            return fn(item)
        except Exception as e:  # the caller records it as a skip with its reason
            return e

    with (
        ThreadPoolExecutor(max_workers=max(1, workers)) as pool,
        tqdm(total=len(items), desc=desc, unit=unit, leave=False) as bar,
    ):
        results = []
        for result in pool.map(guarded, items):
            results.append(result)
            bar.update(1)
    return results


def describe_error(e: BaseException) -> str:
    """`Type: message` on one line, for report.json."""
    text = " ".join(str(e).split()) or "no message"
    return f"{type(e).__name__}: {text}"
