"""The stop event of a long-running service command, set by SIGINT or SIGTERM.

Why not asyncio.run's own Ctrl-C handling: it cancels the main task, and a cancellation that lands while
an ``asyncio.wait_for`` is finishing is swallowed on Python 3.11 (fixed in 3.12), so the service ran on
after systemd's ``KillSignal`` until ``TimeoutStopSec`` killed it (CI saw it twice, ``wulian notify run``).
A loop that checks its stop event cannot miss it. A second signal takes the default action (exits now).
"""
from __future__ import annotations

import asyncio
import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def stop_event_on_signals() -> asyncio.Event:
    """An event the first SIGINT/SIGTERM sets; call from inside the running loop."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        stop.set()
        for sig in STOP_SIGNALS:  # the next one is the operator insisting: default action
            loop.remove_signal_handler(sig)

    for sig in STOP_SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    return stop
