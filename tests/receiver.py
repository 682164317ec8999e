"""A local HTTP receiver for notification tests that fails on purpose: it can be down (its port
refuses connections), answer 500 at random (seeded), answer slowly, or answer a robot's error body.
It records every request and counts deliveries per idempotency key, as a receiver that drops repeats would."""
from __future__ import annotations

import random
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from tests.services import free_port


@dataclass
class Received:
    path: str
    headers: dict
    body: bytes
    ok: bool
    at: float


@dataclass
class Receiver:
    fail_rate: float = 0.0  # share of requests answered 500
    seed: int = 17
    delay_s: float = 0.0
    ok_body: bytes = b'{"errcode":0,"errmsg":"ok"}'
    port: int = field(default_factory=free_port)
    requests: list[Received] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self.arrived = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                with receiver._lock:
                    ok = receiver._rng.random() >= receiver.fail_rate
                    receiver.requests.append(Received(self.path, dict(self.headers), body, ok, time.time()))
                self.send_response(200 if ok else 500)
                out = receiver.ok_body if ok else b"receiver failing on purpose"
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)
                receiver.arrived.set()

            def log_message(self, *args):
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        """Down: the port refuses connections until :meth:`start`."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def delivered(self) -> list[Received]:
        with self._lock:
            return [r for r in self.requests if r.ok]

    def delivered_keys(self) -> Counter:
        """Deliveries (answered 200) per idempotency key: >1 is a repeat the receiver drops."""
        return Counter(r.headers.get("Idempotency-Key") for r in self.delivered())

    def figures(self, expected_keys: set[str]) -> dict:
        keys = self.delivered_keys()
        return {"expected": len(expected_keys), "delivered": len(set(keys) & expected_keys),
                "duplicates_dropped": sum(n - 1 for k, n in keys.items() if k in expected_keys),
                "lost": len(expected_keys - set(keys)), "failed_requests": sum(not r.ok for r in self.requests)}
