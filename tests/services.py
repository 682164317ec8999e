"""Real services for the test suite: the project's PostgreSQL (a fresh database per session) and a
Mosquitto subprocess per session on a free port with its own config and persistence dir."""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from wulian.ingest.chaos.stack import free_port, port_open  # one definition, shared with the fault runs

__all__ = ["Broker", "free_port", "port_open"]


@dataclass
class Broker:
    """A Mosquitto process owned by the tests (fault tests stop and restart it)."""

    dir: Path
    port: int
    extra_conf: str = ""
    proc: subprocess.Popen | None = None

    def write_conf(self) -> Path:
        data = self.dir / "data"
        data.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "mosquitto.conf"
        lines = [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data}/",
            "max_inflight_messages 0",
            "max_queued_messages 5000000",
            "max_packet_size 1048576",
            f"log_dest file {self.dir / 'mosquitto.log'}",
        ]
        if os.geteuid() == 0:
            lines.append("user root")
        conf.write_text("\n".join(lines) + "\n" + self.extra_conf)
        return conf

    def start(self) -> None:
        conf = self.write_conf()
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.proc = subprocess.Popen([exe, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not port_open(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                log = (self.dir / "mosquitto.log").read_text() if (self.dir / "mosquitto.log").exists() else ""
                raise RuntimeError(f"mosquitto did not start on {self.port}: {log[-2000:]}")
            time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=10)
        self.proc = None


@contextlib.contextmanager
def serving(app, start_timeout_s: float = 30.0):
    """A real uvicorn server of ``app`` (lifespan run) on a free loopback port, in a thread; yields its
    base URL and stops it on exit."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "API server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)
