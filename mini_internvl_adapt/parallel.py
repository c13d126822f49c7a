"""Run batches of CPU-bound work in N processes, this one included.

A process pool of N workers leaves the parent idle while N children start (a fork of a process that has
imported torch or GDAL costs tens of milliseconds), open their inputs again and send results back. Here
the parent is one of the N: it starts N - 1 children, which take batches from the front of the list,
and works through batches from the back itself, with its warm caches and already open files. With two
cores this is one child instead of two, and no core sits idle.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, TypeVar

Batch = TypeVar("Batch")
Result = TypeVar("Result")


def run_batches(
    child_run: Callable[[Batch], Result],
    batches: Sequence[Batch],
    processes: int,
    *,
    local_run: Callable[[Batch], Result] | None = None,
    initializer: Callable[..., None] | None = None,
    initargs: tuple[Any, ...] = (),
    on_result: Callable[[Result], object] | None = None,
) -> list[Result]:
    """Every batch's result, in order, computed by `processes` processes counting this one.

    Args:
        child_run: What a child runs on a batch (a module-level function: it is pickled by name).
        batches: The work, cut so that one batch is worth a process round trip.
        processes: Processes in all; 1 or fewer runs everything here.
        local_run: What this process runs on a batch (default `child_run`), e.g. with its own open files.
        initializer: Run once in each child before its first batch (as ProcessPoolExecutor's).
        initargs: Arguments of `initializer`.
        on_result: Called in this process with each batch's result as it arrives (a progress bar).

    Returns:
        One result per batch, in the order of `batches`.
    """
    local = local_run or child_run
    results: dict[int, Result] = {}

    def keep(index: int, result: Result) -> None:
        results[index] = result
        if on_result is not None:
            on_result(result)

    if processes <= 1 or len(batches) < 2:
        for index, batch in enumerate(batches):
            keep(index, local(batch))
        return [results[i] for i in range(len(batches))]
    children = processes - 1
    front, back = 0, len(batches) - 1  # children take from the front, this process from the back
    with ProcessPoolExecutor(children, initializer=initializer, initargs=initargs) as pool:
        running: dict[Future[Result], int] = {}
        while front <= back or running:
            # Two batches queued per child, so a child never waits while this process works on one.
            while front <= back and len(running) < 2 * children:
                running[pool.submit(child_run, batches[front])] = front
                front += 1
            for future in [f for f in running if f.done()]:
                keep(running.pop(future), future.result())
            if front <= back:
                keep(back, local(batches[back]))
                back -= 1
            elif running:
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    keep(running.pop(future), future.result())
    return [results[i] for i in range(len(batches))]
