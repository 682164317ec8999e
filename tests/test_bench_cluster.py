"""The CPU accounting of ``wulian bench cluster`` (``/proc/<pid>/stat``): a process's own time, and a forking
server's time including children that have already exited (PostgreSQL backends come and go)."""
from __future__ import annotations

import os
import subprocess
import sys

from wulian.cli.benches.cluster import cpu_seconds, server_cpu_seconds

BURN = "x = 0\nfor i in range(3_000_000): x += i"


def test_cpu_seconds_counts_this_process():
    before = cpu_seconds(os.getpid())
    exec(BURN, {})
    assert cpu_seconds(os.getpid()) > before


def test_server_cpu_counts_live_and_exited_children():
    """A parent that forks a burning child and reaps it: the child's time stays counted after it exits
    (cutime), and while it runs it is counted as a live child; the parent alone would show nearly none."""
    code = ("import subprocess, sys, time\n"
            f"subprocess.run([sys.executable, '-c', {BURN!r}])\n"
            "print('reaped', flush=True)\n"
            "time.sleep(60)\n")
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert parent.stdout.readline().strip() == "reaped"
        own = cpu_seconds(parent.pid)
        total = server_cpu_seconds(parent.pid)
        assert total > own
        assert server_cpu_seconds(None) == 0.0
        assert cpu_seconds(None) == 0.0
    finally:
        parent.kill()
        parent.wait()
