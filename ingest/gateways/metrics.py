"""Prometheus metrics of the gateways, labelled by protocol (``hj212`` / ``jt808``)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

CONNECTIONS = Gauge("wulian_gateway_open_connections", "open device connections", ["protocol"])
CONNECTIONS_TOTAL = Counter("wulian_gateway_connections_total", "accepted device connections", ["protocol"])
CONNECTIONS_REFUSED = Counter(
    "wulian_gateway_connections_refused_total", "connections refused or closed early", ["protocol", "reason"])
FRAMES = Counter("wulian_gateway_frames_total", "frames received, by outcome", ["protocol", "outcome"])
FRAMES_REPAIRED = Counter(
    "wulian_gateway_frames_repaired_total", "frames read only after the codec repaired a tolerated deviation",
    ["protocol", "reason"])
AUTH_FAILURES = Counter("wulian_gateway_auth_failures_total", "identity checks failed", ["protocol", "reason"])
ANSWER_SECONDS = Histogram(
    "wulian_gateway_answer_seconds", "frame received -> answer written (includes the broker's PUBACK)",
    ["protocol"], buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0))
PUBLISH_FAILURES = Counter(
    "wulian_gateway_publish_failures_total", "packets not acknowledged by the broker (device not answered)",
    ["protocol", "reason"])
