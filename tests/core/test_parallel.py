"""run_batches: every batch once, results in order, this process working beside its children."""

from __future__ import annotations

import os

import pytest

from mini_internvl_adapt.parallel import run_batches


def _square_with_pid(batch: list[int]) -> tuple[list[int], int]:
    return [x * x for x in batch], os.getpid()


def _fail_on_seven(batch: list[int]) -> list[int]:
    if 7 in batch:
        raise ValueError("seven")
    return batch


@pytest.mark.parametrize("processes", [0, 1, 2, 3])
def test_every_batch_once_in_order_with_this_process_working(processes: int) -> None:
    batches = [[i, i + 1] for i in range(0, 40, 2)]
    seen: list[int] = []
    results = run_batches(
        _square_with_pid, batches, processes, on_result=lambda result: seen.append(result[0][0])
    )
    assert [squares for squares, _ in results] == [[x * x for x in batch] for batch in batches]
    assert sorted(seen) == sorted(batch[0] ** 2 for batch in batches)  # each batch reported once
    pids = {pid for _, pid in results}
    if processes <= 1:
        assert pids == {os.getpid()}
    else:
        # This process took batches from the back; its children (processes - 1) from the front.
        assert os.getpid() in pids and results[-1][1] == os.getpid()
        assert results[0][1] != os.getpid() and len(pids) <= processes


def test_local_run_is_used_here_and_errors_reach_the_caller() -> None:
    results = run_batches(_square_with_pid, [[1], [2], [3]], 2, local_run=lambda batch: ([-batch[0]], 0))
    assert results[-1] == ([-3], 0) and results[0][0] == [1]
    with pytest.raises(ValueError, match="seven"):
        run_batches(_fail_on_seven, [[1], [7], [2], [3]], 2)
