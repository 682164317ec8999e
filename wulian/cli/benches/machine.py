"""What every bench reports about where it ran: the CPU model and count (figures do not travel between
machines), and CPU seconds of named processes and of the whole machine over a measured window, read
from ``/proc`` (Linux). A shared machine's other work shows up as utilisation not ours."""
from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_model() -> str:
    """``model name`` of the first CPU in /proc/cpuinfo (``platform.processor()`` elsewhere)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    """The machine a figure came from: CPU model, logical CPUs (and those this process may use), load."""
    cpus = os.cpu_count() or 1
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cpus
    try:
        load1 = round(os.getloadavg()[0], 2)
    except OSError:
        load1 = None
    return {"cpu_model": cpu_model(), "cpus": cpus, "cpus_usable": usable, "loadavg_1m_at_start": load1}


def proc_cpu_s(pid: int, *, children: bool = False) -> float | None:
    """CPU seconds (user + system) of a process from /proc/<pid>/stat; with ``children``, plus the reaped
    children's (a PostgreSQL backend that exited is counted in the postmaster's cutime/cstime)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw.rsplit(")", 1)[1].split()  # after the command name, which may contain spaces
    ticks = int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    if children:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / _HZ


def child_pids(ppid: int) -> list[int]:
    """Live children of ``ppid`` (PostgreSQL backends and workers of a postmaster)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                raw = (d / "stat").read_text()
            except OSError:
                continue
            if int(raw.rsplit(")", 1)[1].split()[1]) == ppid:
                out.append(int(d.name))
    return out


def tree_cpu_s(pid: int) -> float | None:
    """CPU seconds of a process, its live children and its reaped children (a whole PostgreSQL server)."""
    total = proc_cpu_s(pid, children=True)
    if total is None:
        return None
    return total + sum(c for c in map(proc_cpu_s, child_pids(pid)) if c is not None)


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat (idle and iowait count as not busy)."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = parts[3] + (parts[4] if len(parts) > 4 else 0)
    return sum(parts) - idle, sum(parts)


def pid_file(path: Path) -> int | None:
    """The pid on the first line of a pid file (mosquitto.pid, postmaster.pid), if that process lives."""
    try:
        pid = int(path.read_text().split("\n", 1)[0].strip())
    except (OSError, ValueError):
        return None
    return pid if Path(f"/proc/{pid}").exists() else None


@dataclass
class CpuWindow:
    """CPU seconds per named process tree and the machine's utilisation between :meth:`start` and
    :meth:`stop`. ``pids`` maps a stage name to a pid (``None``: not measurable, e.g. a remote server)."""

    pids: dict[str, int | None]
    _t0: float = 0.0
    _c0: dict | None = None
    _m0: tuple[int, int] = (0, 0)
    result: dict | None = None

    def _sample(self) -> dict:
        return {k: (tree_cpu_s(p) if p is not None else None) for k, p in self.pids.items()}

    def start(self) -> "CpuWindow":
        self._t0, self._c0, self._m0 = time.perf_counter(), self._sample(), machine_jiffies()
        return self

    def stop(self) -> dict:
        wall = time.perf_counter() - self._t0
        c1, m1 = self._sample(), machine_jiffies()
        cpu = {k: (round(c1[k] - v, 2) if v is not None and c1[k] is not None else None)
               for k, v in self._c0.items()}
        busy, total = m1[0] - self._m0[0], m1[1] - self._m0[1]
        ours = sum(v for v in cpu.values() if v is not None)
        self.result = {
            "wall_s": round(wall, 3),
            "cpu_s": cpu,
            "cpu_s_total": round(ours, 2),
            "cores_busy_ours": round(ours / wall, 2) if wall > 0 else None,
            "machine_utilisation": round(busy / total, 3) if total else None,  # all CPUs, everyone's work
            "machine_cores_busy": round(busy / _HZ / wall, 2) if wall > 0 else None,
        }
        return self.result


def stack_pids(settings) -> dict[str, int | None]:
    """PostgreSQL's postmaster and Mosquitto's pid of the local stack (``wulian stack``), if running here."""
    d = Path(settings.stack.dir)
    return {"postgresql": pid_file(d / "pg" / "postmaster.pid"), "broker": pid_file(d / "mosquitto" / "mosquitto.pid")}
