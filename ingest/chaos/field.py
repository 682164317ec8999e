"""Field devices through the TCP gateways, for the chaos run: gateways as processes, a fleet of HJ 212
stations and JT/T 808 terminals (``simulators.field_devices``), and what they were answered.

Ground truth here is the gateway's answer: a gateway answers (9014 / 0x8001) only after the broker's
PUBACK, and an unanswered upload is sent again by the device (HJ 212 retries on timeout; a JT/T 808
terminal resends its unanswered report, same time, after reconnecting). Both protocols stamp data to
the second, so each device reports once a second and a record is known by (device, second).
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import numpy as np

from wulian.ingest.chaos.stack import ChaosStack, free_port, port_open
from wulian.simulators.field_devices import Hj212Station, Jt808Terminal
from wulian.settings import ROOT, child_env

_NS = 1_000_000_000


class GatewayStartError(RuntimeError):
    """A gateway process exited (or never listened) after its start."""


@dataclass
class GatewayProcess:
    """``wulian gateway PROTOCOL`` as a child process, auto-provisioning devices into ``region``."""

    stack: ChaosStack
    protocol: str
    region: str
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        sec = self.stack.secrets()
        env = child_env(WULIAN_STACK__DIR=str(self.stack.dir), WULIAN_DB__DSN=self.stack.dsn,
                        WULIAN_MQTT__PORT=str(self.stack.mqtt_port), WULIAN_LOG_LEVEL="WARNING",
                        WULIAN_GATEWAY__REGION=self.region, WULIAN_GATEWAY__AUTO_PROVISION="true",
                        WULIAN_GATEWAY__ANSWER_TIMEOUT_S="2", WULIAN_GATEWAY__HJ212_METRICS_PORT="0",
                        WULIAN_GATEWAY__JT808_METRICS_PORT="0",
                        WULIAN_GATEWAY__MQTT_CLIENT_ID=f"chaos-gw-{os.getpid()}")
        for k in ("WULIAN_GATEWAY__MQTT_USERNAME", "WULIAN_GATEWAY__MQTT_PASSWORD"):
            if k in sec:
                env[k] = sec[k]
        return env

    def start(self) -> None:
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wulian", "gateway", self.protocol, "--port", str(self.port)],
                                     env=self.env(), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    async def wait_ready(self, timeout: float = 60.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not port_open(self.port):
            if self.proc.poll() is not None or loop.time() > deadline:
                raise GatewayStartError(f"{self.protocol} gateway did not start (exit code {self.proc.poll()});"
                                        f" {self.log_path} ends with:\n{self.log_tail()}")
            await asyncio.sleep(0.1)

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig: int = signal.SIGKILL) -> None:
        if self.alive():
            self.proc.send_signal(sig)
            self.proc.wait(15)


class _Station(Hj212Station):
    """A station that remembers which uploads the gateway answered."""

    def __init__(self, *args, **kw) -> None:
        super().__init__(*args, **kw)
        self.answered_s: list[int] = []

    async def upload(self, reader, writer, buf, ts_ns: int) -> bool:
        ok = await super().upload(reader, writer, buf, ts_ns)
        if ok:
            self.answered_s.append(ts_ns // _NS)
        return ok


class FieldFleet:
    """HJ 212 stations and JT/T 808 terminals reporting once a second through the gateways."""

    def __init__(self, tag: str, n_stations: int, n_terminals: int, hj212_port: int | None, jt808_port: int | None,
                 seed: int = 0) -> None:
        digits = "".join(c for c in tag if c.isdigit())[-6:].rjust(6, "0")
        self.hj212_port, self.jt808_port = hj212_port, jt808_port
        self.stations = [_Station(f"88{digits}{i:016d}", "123456", answer_timeout_s=2.0, retries=3, seed=seed + i)
                         for i in range(n_stations if hj212_port else 0)]
        self.terminals = [Jt808Terminal(f"1{digits}{i:04d}", answer_timeout_s=2.0, retries=3, seed=seed + i)
                          for i in range(n_terminals if jt808_port else 0)]
        self.terminal_answered: dict[str, list[int]] = {t.phone: [] for t in self.terminals}
        for t in self.terminals:
            t.on_answer = (lambda phone: lambda latency, ts: self.terminal_answered[phone].append(ts // _NS))(t.phone)
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    def start(self) -> None:
        for s in self.stations:
            self._tasks.append(asyncio.create_task(s.run("127.0.0.1", self.hj212_port, 1.0, self._stop)))
        for k, t in enumerate(self.terminals):
            self._tasks.append(asyncio.create_task(t.run("127.0.0.1", self.jt808_port, 1.0, self._stop,
                                                         first_delay_s=k * 0.01)))

    async def stop(self, grace_s: float = 15.0) -> None:
        """Stop new reports; what is in flight finishes (answered or given up) within ``grace_s``."""
        self._stop.set()
        done, pending = await asyncio.wait(self._tasks, timeout=grace_s) if self._tasks else (set(), set())
        for t in pending:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pending, return_exceptions=True)

    def answered(self) -> dict[str, dict[str, np.ndarray]]:
        """protocol -> device -> answered report times (epoch seconds, unique, sorted)."""
        return {
            "hj212": {s.mn: np.unique(np.asarray(s.answered_s, np.int64)) for s in self.stations},
            "jt808": {p: np.unique(np.asarray(v, np.int64)) for p, v in self.terminal_answered.items()},
        }

    def stats(self) -> dict[str, dict[str, int]]:
        out = {}
        for proto, devs in (("hj212", self.stations), ("jt808", self.terminals)):
            out[proto] = {k: sum(getattr(d.stats, k) for d in devs)
                          for k in ("connects", "sent", "answered", "resent", "failed", "refused")}
        return out


_STORED = {
    "hj212": "SELECT d.device_id, (extract(epoch FROM r.time))::bigint AS s, count(DISTINCT r.metric) AS m"
             " FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = ANY($1::text[])"
             " GROUP BY 1, 2",
    "jt808": "SELECT d.device_id, (extract(epoch FROM p.time))::bigint AS s, count(*) AS m"
             " FROM vehicle_positions p JOIN devices d ON d.id = p.device WHERE d.device_id = ANY($1::text[])"
             " GROUP BY 1, 2",
}


async def stored_seconds(con: asyncpg.Connection, protocol: str, devices: list[str]) -> dict[str, np.ndarray]:
    """Device -> the seconds for which the database holds its record."""
    out: dict[str, list[int]] = {d: [] for d in devices}
    for r in await con.fetch(_STORED[protocol], devices):
        out[r["device_id"]].append(r["s"])
    return {d: np.sort(np.asarray(v, np.int64)) for d, v in out.items()}
