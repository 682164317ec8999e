"""Stopping asyncio tasks reliably on Python 3.11.

Python 3.11's ``asyncio.wait_for`` swallows a cancel that lands as its inner await completes (CPython
gh-86296, fixed in 3.12); nats-py and asyncpg call it on every request. One ``task.cancel()`` can so be
lost and the task runs on: a router cancelled by a test kept renewing its leases for 15 minutes (CI),
a worker's partition runner kept fetching. The task's cancel request still counts
(``Task.cancelling()``), which the long-running loops check, and a stopper cancels until the task ends.
"""
from __future__ import annotations

import asyncio

CANCEL_RETRY_S = 1.0  # a stopper cancels again after this long without the task ending


async def stop_task(task: asyncio.Task | None) -> BaseException | None:
    """Cancel ``task`` until it is done and return the exception it ended with, if any (retrieved, so
    never logged as unhandled). A cancel of the caller itself propagates: ``asyncio.wait`` does not
    swallow it, as ``contextlib.suppress(CancelledError)`` around ``await task`` did."""
    if task is None:
        return None
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=CANCEL_RETRY_S)
    return None if task.cancelled() else task.exception()


def raise_if_cancelled() -> None:
    """In a loop that must stop when its task is cancelled: raise the ``CancelledError`` that a library's
    ``wait_for`` may have swallowed (the request is still counted on the task)."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
