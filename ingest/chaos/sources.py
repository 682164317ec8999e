"""Sequence-numbered publishers: every message names its device and sequence number, so what was stored
can be compared, message by message, with what the broker acknowledged (the ground truth).

A message of device ``d`` with sequence ``s`` is stamped ``base_ms + s * step_ms`` and carries
``seq = s``, a sawtooth ``saw`` (so a threshold rule has a known series of raises and clears) and
``extra`` filler values. Publishers keep a persistent session and paho resends what the broker never
acknowledged, across broker restarts.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import numpy as np
import orjson

from wulian.ingest.mqtt_client import MqttParams, MqttPublisher

SAW_PERIOD = 20  # messages per sawtooth tooth
SAW_THRESHOLD = 100.0  # the chaos rule raises above this ...
SAW_CLEAR = 80.0  # ... and clears below this; no sample equals either


def saw_value(seq: int | np.ndarray) -> float | np.ndarray:
    """5, 14, ..., 176: crosses 100 once per tooth (k = 11) and falls below 80 at the next tooth's start."""
    return 5.0 + (seq % SAW_PERIOD) * 9.0


def expected_transitions(seqs: np.ndarray, pending_steps: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Sequence numbers at which an upper rule (SAW_THRESHOLD, clear SAW_CLEAR) raises and clears,
    for a series made of ``seqs`` (sorted) - the reference the stored alerts must match.

    ``pending_steps``: the rule's ``pending_s`` in sequence steps (event time): the condition must hold
    from its first reading above the threshold until one that many steps later (a reading not above
    it restarts the wait), as ``core.alarms.reference`` does."""
    raises, clears = [], []
    active = False
    since = None
    for s, v in zip(seqs.tolist(), saw_value(seqs).tolist()):
        if active:
            if v < SAW_CLEAR:
                active = False
                clears.append(s)
        elif v > SAW_THRESHOLD:
            since = s if since is None else since
            if s - since >= pending_steps:
                active, since = True, None
                raises.append(s)
        else:
            since = None
    return np.asarray(raises, np.int64), np.asarray(clears, np.int64)


def _published(info) -> bool:
    # is_published() raises for a message queued while disconnected (rc NO_CONN) even once paho has sent
    # it after the reconnect and the broker acknowledged it; the flag itself is what we need.
    return bool(info._published)


@dataclass(frozen=True, slots=True)
class SourceSpec:
    region: str
    stream: str
    devices: tuple[str, ...]
    rate_msgs: float  # messages per second over all devices
    extra_values: int = 3
    base_ms: int = 0  # time of seq 0
    step_ms: int = 10  # event-time spacing of one device's messages


class SeqSource:
    """One publisher thread for a set of devices, publishing round-robin at a fixed message rate."""

    def __init__(self, params: MqttParams, spec: SourceSpec, max_inflight: int = 2000) -> None:
        self.spec = spec
        self.pub = MqttPublisher(params, max_inflight=max_inflight, persistent=True)
        n = len(spec.devices)
        self._next = [0] * n
        self._pending: list[list[tuple[int, object]]] = [[] for _ in range(n)]
        self._acked: list[bytearray] = [bytearray() for _ in range(n)]
        self._lock = threading.Lock()  # the publishing thread appends to _pending while compact() sweeps it
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.published = 0
        self.publish_latency_s: list[float] = []

    def topic(self, i: int) -> str:
        s = self.spec
        return f"wl/{s.region}/{s.stream}/{s.devices[i]}/telemetry"

    def payload(self, seq: int) -> bytes:
        s = self.spec
        values = {"seq": seq, "saw": saw_value(seq)}
        for j in range(s.extra_values):
            values[f"x{j}"] = float((seq + j) % 97)
        return orjson.dumps({"ts": s.base_ms + seq * s.step_ms, "values": values})

    def start(self) -> "SeqSource":
        self.pub.connect()
        self._thread = threading.Thread(target=self._run, name=f"chaos-source-{self.spec.devices[0]}", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        spec = self.spec
        n = len(spec.devices)
        topics = [self.topic(i) for i in range(n)]
        t0 = time.monotonic()
        k = 0
        while not self._stop.is_set():
            due = int((time.monotonic() - t0) * spec.rate_msgs)
            while k < due and not self._stop.is_set():
                i = k % n
                seq = self._next[i]
                self._next[i] = seq + 1
                info = self.pub.publish(topics[i], self.payload(seq))
                with self._lock:
                    self._pending[i].append((seq, info))
                k += 1
                self.published = k
            time.sleep(0.005)

    def stop(self) -> None:
        """Stop publishing (what is in flight is still resent until acknowledged)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def compact(self) -> int:
        """Move acknowledged messages out of the pending lists; returns how many are still pending."""
        left = 0
        for i in range(len(self._pending)):
            with self._lock:
                pend, self._pending[i] = self._pending[i], []
            keep = []
            bits = self._acked[i]
            for seq, info in pend:
                if _published(info):
                    if seq >= len(bits):
                        bits.extend(bytes(seq - len(bits) + 1024))
                    bits[seq] = 1
                else:
                    keep.append((seq, info))
            with self._lock:
                self._pending[i] = keep + self._pending[i]
                left += len(self._pending[i])
        return left

    def drain(self, timeout: float = 60.0) -> int:
        """Wait for the broker to acknowledge everything published; returns how many never were."""
        deadline = time.monotonic() + timeout
        while (left := self.compact()) and time.monotonic() < deadline:
            time.sleep(0.1)
        return left

    def acked_seqs(self, i: int) -> np.ndarray:
        self.compact()
        return np.flatnonzero(np.frombuffer(bytes(self._acked[i]), np.uint8)).astype(np.int64)

    def acked_count(self) -> int:
        self.compact()
        return sum(int(np.count_nonzero(np.frombuffer(bytes(b), np.uint8))) for b in self._acked)

    def close(self) -> None:
        self.stop()
        self.pub.close()
