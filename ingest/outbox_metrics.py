"""Prometheus metrics of the notification sender and the HJ 212 forwarder (issue 17)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

NOTIFY_ATTEMPTS = Counter("wulian_notify_attempts_total", "notification delivery attempts",
                          ["kind", "outcome"])  # outcome: delivered, retry, failed
NOTIFY_DEFERRED = Counter("wulian_notify_deferred_total", "due notifications held back", ["reason"])  # quiet, rate
NOTIFY_ESCALATIONS = Counter("wulian_notify_escalations_total", "unacknowledged alerts escalated")
NOTIFY_PENDING = Gauge("wulian_notify_pending", "notifications not yet delivered nor failed")
NOTIFY_SECONDS = Histogram("wulian_notify_request_seconds", "HTTP request time of one delivery attempt")
FORWARD_QUEUED = Counter("wulian_forward_queued_total", "packets written to the forward outbox", ["upstream"])
FORWARD_SENT = Counter("wulian_forward_sent_total", "packets the upstream has (answered or written)", ["upstream"])
FORWARD_REFUSED = Counter("wulian_forward_refused_total", "packets the upstream refused (9011 QnRtn != 1)",
                          ["upstream"])
FORWARD_FAILURES = Counter("wulian_forward_failures_total", "connection failures and answer timeouts",
                           ["upstream"])
FORWARD_BACKLOG = Gauge("wulian_forward_backlog", "packets waiting in the forward outbox", ["upstream"])
