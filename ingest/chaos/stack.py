"""A throwaway PostgreSQL+TimescaleDB and Mosquitto for fault runs, and ingest as a child process.

The servers come from the project's own ``deploy/local/stack.sh`` (the deployed configuration, broker
persistence on) in a private directory on free ports, so a fault never touches the developer's stack.
PostgreSQL is stopped and started with ``pg_ctl`` directly (the script has no per-server actions);
Mosquitto is stopped gracefully (SIGTERM: it writes its persistence file) and started again by the
script, which leaves a running PostgreSQL alone.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from wulian.ingest.mqtt_client import MqttParams
from wulian.local_stack import run_stack
from wulian.settings import ROOT, Settings, StackSettings, child_env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.05)


@dataclass
class ChaosStack:
    """PostgreSQL + Mosquitto under ``dir`` on free ports; ``up()`` / ``down()`` and the fault primitives."""

    dir: Path
    pg_port: int = field(default_factory=free_port)
    mqtt_port: int = field(default_factory=free_port)
    os_user: str = "wulian"

    @classmethod
    def fresh(cls, name: str = "chaos") -> "ChaosStack":
        return cls(ROOT / ".stack" / f"{name}-{os.getpid()}-{int(time.time())}")

    @property
    def settings(self) -> Settings:
        return Settings(stack=StackSettings(dir=self.dir, pg_port=self.pg_port, mqtt_port=self.mqtt_port,
                                            os_user=self.os_user))

    @property
    def dsn(self) -> str:
        return f"postgresql://wulian@127.0.0.1:{self.pg_port}/wulian"

    def secrets(self) -> dict[str, str]:
        """The broker service accounts ``stack.sh`` generated (empty when authentication is off)."""
        out = {}
        path = self.dir / "secrets.env"
        if path.exists():
            for line in path.read_text().splitlines():
                if "=" in line and not line.lstrip().startswith("#"):
                    k, v = line.split("=", 1)
                    out[k.strip()] = v.strip()
        return out

    def mqtt_account(self, role: str = "simulator") -> tuple[str | None, str | None]:
        """(username, password) of a service account: ``ingest`` (the consumer) or ``simulator``."""
        sec = self.secrets()
        if role == "ingest":
            return sec.get("WULIAN_MQTT__USERNAME"), sec.get("WULIAN_MQTT__PASSWORD")
        pw = sec.get(f"WULIAN_SERVICE_ACCOUNTS__{role.upper()}_PASSWORD")
        return (role, pw) if pw else (None, None)

    def mqtt_params(self, client_id: str, role: str = "simulator") -> MqttParams:
        user, pw = self.mqtt_account(role)
        return MqttParams("127.0.0.1", self.mqtt_port, client_id, username=user, password=pw)

    def _as_user(self, argv: list[str]) -> list[str]:
        return ["runuser", "-u", self.os_user, "--", *argv] if os.geteuid() == 0 else argv

    def _pg_ctl(self, *args: str) -> None:
        exe = f"/usr/lib/postgresql/{self.settings.stack.pg_major}/bin/pg_ctl"
        subprocess.run(self._as_user([exe, "-D", str(self.dir / "pg"), *args]), check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def up(self) -> None:
        run_stack("up", self.settings)

    def down(self, remove: bool = True) -> None:
        run_stack("down", self.settings, check=False)
        if remove:
            shutil.rmtree(self.dir, ignore_errors=True)

    def stop_pg(self) -> None:
        """Fast shutdown: open transactions are rolled back and clients are disconnected."""
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start_pg(self) -> None:
        self._pg_ctl("-l", str(self.dir / "postgresql.log"), "-w", "-t", "60",
                     "-o", f"-p {self.pg_port} -k {self.dir / 'run'} -c listen_addresses=127.0.0.1", "start")

    def broker_pid(self) -> int | None:
        try:
            return int((self.dir / "mosquitto" / "mosquitto.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def stop_broker(self) -> None:
        """Graceful stop (SIGTERM): Mosquitto saves sessions and queued messages to its persistence file."""
        pid = self.broker_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        _wait(lambda: not _alive(pid), 30, "mosquitto did not stop")

    def kill_broker(self) -> None:
        """kill -9: no shutdown save; what the broker kept is what its persistence had written."""
        pid = self.broker_pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait(lambda: not _alive(pid), 30, "mosquitto did not die")

    def start_broker(self) -> None:
        run_stack("up", self.settings)  # PostgreSQL is left alone when it is running
        _wait(lambda: port_open(self.mqtt_port), 10, "mosquitto did not start")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    """Resident set size of a process (Linux /proc), 0 when it is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


@dataclass
class IngestProcess:
    """``wulian ingest`` as a child process with its settings as environment variables."""

    stack: ChaosStack
    client_id: str
    log_path: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        user, pw = self.stack.mqtt_account("ingest")
        creds = {"WULIAN_MQTT__USERNAME": user, "WULIAN_MQTT__PASSWORD": pw} if user else {}
        return child_env(WULIAN_STACK__DIR=str(self.stack.dir), WULIAN_DB__DSN=self.stack.dsn,
                         WULIAN_MQTT__PORT=str(self.stack.mqtt_port), WULIAN_MQTT__CLIENT_ID=self.client_id,
                         WULIAN_INGEST__METRICS_PORT="0", WULIAN_LOG_LEVEL="WARNING", **creds, **self.extra_env)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "wulian", "ingest"], env=self.env(),
                                     stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
        log.close()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_info(self) -> str:
        return f"code {self.proc.returncode if self.proc else None}"

    def stop_intake(self) -> None:
        """Stop taking messages from the broker (the fault that queues them there)."""
        self.stop()

    def kill9(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def rss(self) -> int:
        return rss_bytes(self.proc.pid) if self.alive() else 0
