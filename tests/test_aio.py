"""Stopping tasks on Python 3.11, where a library's ``asyncio.wait_for`` may swallow a cancel (gh-86296)."""
from __future__ import annotations

import asyncio

import pytest

from wulian.ingest.aio import raise_if_cancelled, stop_task


async def _swallows_cancels(n: int, ran: list[int]) -> None:
    """A loop whose awaits lose the first ``n`` cancels, as wait_for does when its inner await has just
    completed."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(0.05)
        except asyncio.CancelledError:
            if lost == n:
                raise
            lost += 1
        ran.append(lost)


async def test_stop_task_cancels_until_a_task_that_lost_cancels_ends():
    ran: list[int] = []
    task = asyncio.create_task(_swallows_cancels(2, ran))
    await asyncio.sleep(0.1)
    await asyncio.wait_for(stop_task(task), 10)
    assert task.cancelled() and ran[-1] == 2  # it ran on after each of the two lost cancels


async def test_stop_task_returns_the_failure_and_lets_the_callers_own_cancel_through():
    async def fails():
        raise ValueError("bad")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0.01)  # it has failed by now
    assert isinstance(await stop_task(task), ValueError)

    blocker = asyncio.create_task(_swallows_cancels(3, []))
    stopper = asyncio.create_task(stop_task(blocker))
    await asyncio.sleep(0.1)  # one cancel sent (lost); the next would come CANCEL_RETRY_S later
    stopper.cancel()
    with pytest.raises(asyncio.CancelledError):  # suppress(CancelledError) around `await task` ate this
        await stopper
    assert not blocker.done()
    await asyncio.wait_for(stop_task(blocker), 10)


async def test_a_loop_that_checks_ends_on_one_cancel_a_library_swallowed():
    quit_ = asyncio.Event()

    async def loop(check: bool) -> None:
        while not quit_.is_set():
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                pass  # what wait_for does on Python 3.11 when the cancel lands as its await completes
            if check:
                raise_if_cancelled()

    checked = asyncio.create_task(loop(True))
    unchecked = asyncio.create_task(loop(False))
    await asyncio.sleep(0.1)
    checked.cancel()
    unchecked.cancel()
    done, _ = await asyncio.wait({checked, unchecked}, timeout=1.0)
    quit_.set()
    await asyncio.wait({unchecked}, timeout=1.0)
    assert done == {checked} and checked.cancelled()
