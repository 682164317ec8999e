"""Does the MQTT front door keep what it acknowledged? kill -9 of the broker with a queue, per candidate.

A consumer with a persistent session subscribes (QoS 1) and goes away; a device publishes ``messages``
QoS 1 messages and counts the PUBACKs (what it was told was received); the broker is killed with SIGKILL
and started again on the same store; the consumer resumes its session and counts what it gets back.
``lost`` = PUBACKed but never delivered. Candidates:

- Mosquitto 2.0 with persistence: it writes its whole in-memory database to ``mosquitto.db`` every
  ``autosave_interval`` seconds (or, with ``autosave_on_changes true``, every ``autosave_interval``
  changes) and on a clean shutdown; nothing is written per message, so a kill -9 loses what arrived
  since the last save;
- nats-server's MQTT listener (MQTT 3.1.1 only): a QoS 1 PUBLISH is stored in the JetStream stream
  ``$MQTT_msgs`` before the PUBACK, and a session's subscription is a durable JetStream consumer.

Both run with the MQTT 3.1.1 clients here (the protocol both accept), on free loopback ports, in a
throwaway directory; a candidate's publish rate is measured in the same run (throughput cost).
"""
from __future__ import annotations

import getpass
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.enums import MQTTProtocolVersion

from wulian.ingest.chaos.stack import _wait, free_port, port_open

TOPIC_PREFIX = "fd/q"
CONSUMER_ID = "frontdoor-consumer"


class Door:
    """A broker candidate: ``start()`` on its store (again after a kill), ``kill9()``, ``port``."""

    name: str
    port: int
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> None:
        log = open(self.dir / f"{self.name}.log", "ab")
        self.proc = subprocess.Popen(self.argv(), stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                     start_new_session=True)
        log.close()
        _wait(lambda: port_open(self.port), timeout, f"{self.name} did not open port {self.port}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class MosquittoDoor(Door):
    """Mosquitto with persistence and the given autosave settings (lines appended to its config)."""

    dir: Path
    name: str = "mosquitto"
    autosave: str = "autosave_interval 30"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        conf = self.dir / f"{self.name}.conf"
        data = self.dir / f"{self.name}-data"
        data.mkdir(exist_ok=True)
        # a throwaway broker on loopback for a few seconds: anonymous, and it keeps this process's user
        conf.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\nuser {getpass.getuser()}\n"
                        f"persistence true\npersistence_location {data}/\n{self.autosave}\n"
                        "max_inflight_messages 0\nmax_queued_messages 5000000\nmax_queued_bytes 0\n"
                        "log_type error\nlog_type warning\n")
        return ["/usr/sbin/mosquitto", "-c", str(conf)]


@dataclass
class NatsMqttDoor(Door):
    """nats-server with JetStream and its MQTT listener (QoS 1 stored in JetStream before the PUBACK)."""

    dir: Path
    name: str = "nats-mqtt"
    port: int = field(default_factory=free_port)  # the MQTT listener
    client_port: int = field(default_factory=free_port)
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        from wulian.ingest.nats_cluster import nats_server

        conf = self.dir / f"{self.name}.conf"
        conf.write_text(f'server_name: "frontdoor"\nlisten: "127.0.0.1:{self.client_port}"\n'
                        f'jetstream {{ store_dir: "{self.dir / (self.name + "-store")}" }}\n'
                        f'mqtt {{ listen: "127.0.0.1:{self.port}" }}\n')
        return [nats_server(), "-c", str(conf)]


def _client(client_id: str, port: int, clean: bool) -> Client:
    c = Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv311,
               clean_session=clean)
    c.max_inflight_messages_set(0 if clean else 20)  # publisher: no paho cap (window below)
    c.max_queued_messages_set(0)
    connected = threading.Event()
    c.on_connect = lambda cl, u, f, rc, p: connected.set() if not rc.is_failure else None
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    if not connected.wait(15):
        c.loop_stop()
        raise ConnectionError(f"cannot connect to 127.0.0.1:{port}")
    return c


def _subscribe_and_leave(port: int) -> None:
    """Create the consumer's persistent session with its QoS 1 subscription, then disconnect."""
    c = _client(CONSUMER_ID, port, clean=False)
    done = threading.Event()
    c.on_subscribe = lambda *a: done.set()
    c.subscribe(f"{TOPIC_PREFIX}/#", qos=1)
    if not done.wait(15):
        raise TimeoutError("no SUBACK")
    c.disconnect()
    c.loop_stop()


def _publish(port: int, messages: int, time_budget_s: float, window: int = 500) -> tuple[set[int], float]:
    """Publish seq 0..messages-1 with QoS 1 (``window`` awaiting PUBACK at a time); stop at the budget.
    Returns the PUBACKed sequence numbers and the seconds taken."""
    c = _client(f"frontdoor-device-{os.getpid()}", port, clean=True)
    acked: set[int] = set()
    by_mid: dict[int, int] = {}
    cond = threading.Condition()
    outstanding = [0]

    def on_publish(client, userdata, mid, rc, props) -> None:
        with cond:
            seq = by_mid.pop(mid, None)
            if seq is not None:
                acked.add(seq)
            else:  # PUBACK before publish() returned the mid
                by_mid[mid] = -1
            outstanding[0] -= 1
            cond.notify_all()

    c.on_publish = on_publish
    t0 = time.monotonic()
    for seq in range(messages):
        if time.monotonic() - t0 > time_budget_s:
            break
        with cond:
            while outstanding[0] >= window:
                cond.wait(1.0)
            outstanding[0] += 1
        info = c.publish(f"{TOPIC_PREFIX}/{seq % 100}", str(seq).encode(), qos=1)
        with cond:
            if by_mid.pop(info.mid, None) == -1:
                acked.add(seq)
            else:
                by_mid[info.mid] = seq
    deadline = time.monotonic() + 30
    with cond:
        while outstanding[0] > 0 and time.monotonic() < deadline:
            cond.wait(0.5)
    took = time.monotonic() - t0
    c.disconnect()
    c.loop_stop()
    return acked, took


def _collect(port: int, want: int, quiet_s: float = 20.0, timeout_s: float = 300.0) -> list[int]:
    """Resume the consumer's session; every message it gets (PUBACKed by paho) until ``want`` distinct
    arrived or nothing came for ``quiet_s``."""
    got: list[int] = []
    last = [time.monotonic()]

    def on_message(client, userdata, msg) -> None:
        got.append(int(msg.payload))
        last[0] = time.monotonic()

    c = Client(CallbackAPIVersion.VERSION2, client_id=CONSUMER_ID, protocol=MQTTProtocolVersion.MQTTv311,
               clean_session=False)
    c.max_inflight_messages_set(1000)
    c.on_message = on_message
    c.connect("127.0.0.1", port, 30)
    c.loop_start()
    t0 = time.monotonic()
    last[0] = t0
    try:
        while time.monotonic() - t0 < timeout_s:
            time.sleep(0.2)
            if len(set(got)) >= want or time.monotonic() - last[0] > quiet_s:
                break
    finally:
        c.disconnect()
        c.loop_stop()
    return got


def measure(door: Door, messages: int = 20_000, time_budget_s: float = 120.0) -> dict:
    """One candidate: queue ``messages`` for the absent consumer, kill -9, restart, count what is kept."""
    door.start()
    try:
        _subscribe_and_leave(door.port)
        acked, took = _publish(door.port, messages, time_budget_s)
        door.kill9()
        t_kill = time.monotonic()
        door.start()
        restart_s = time.monotonic() - t_kill
        got = _collect(door.port, len(acked))
    finally:
        door.stop()
    kept = set(got) & acked
    return {"candidate": door.name, "published": len(acked), "kept": len(kept), "lost": len(acked - kept),
            "delivered_twice": len(got) - len(set(got)), "publish_per_s": round(len(acked) / took, 1),
            "restart_s": round(restart_s, 2)}


MOSQUITTO_VARIANTS = {
    "mosquitto autosave_interval 30": "autosave_interval 30",
    "mosquitto autosave_interval 1": "autosave_interval 1",
    "mosquitto autosave_on_changes 1": "autosave_on_changes true\nautosave_interval 1",
}


def measure_all(messages: int = 20_000, time_budget_s: float = 120.0, progress=lambda m: None) -> list[dict]:
    """Every candidate in turn in a throwaway directory; one result dict each."""
    out = []
    base = Path(tempfile.mkdtemp(prefix="wulian-frontdoor-"))
    try:
        doors: list[Door] = [MosquittoDoor(base / f"m{i}", name=name, autosave=conf)
                             for i, (name, conf) in enumerate(MOSQUITTO_VARIANTS.items())]
        doors.append(NatsMqttDoor(base / "nats"))
        for d in doors:
            d.dir.mkdir(parents=True, exist_ok=True)
            progress(f"front door {d.name}: {messages} QoS 1 messages queued, then kill -9")
            res = measure(d, messages, time_budget_s)
            progress(f"{d.name}: published {res['published']} kept {res['kept']} lost {res['lost']}"
                     f" ({res['publish_per_s']:.0f} msg/s)")
            out.append(res)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return out
