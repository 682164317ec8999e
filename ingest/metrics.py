"""Prometheus metrics of the ingest stages (exposed on ``ingest.metrics_port`` at /metrics)."""
from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter("wulian_ingest_messages_received_total", "MQTT messages taken from the broker")
MESSAGES_ACKED = Counter("wulian_ingest_messages_acked_total", "MQTT messages acknowledged after commit")
RECORDS_WRITTEN = Counter("wulian_ingest_records_written_total", "rows inserted", ["table"])
DUPLICATES = Counter("wulian_ingest_duplicates_total", "redelivered records skipped by the unique index")
DEAD_LETTERS = Counter("wulian_ingest_dead_letters_total", "messages refused", ["reason"])
REPAIRED = Counter(
    "wulian_ingest_repaired_messages_total",
    "messages the codec read only after repairing a tolerated deviation (core.model.Decoded.repairs)",
    ["kind", "reason"])
BATCH_SIZE = Histogram(
    "wulian_ingest_batch_messages", "messages per batch", buckets=(1, 10, 100, 500, 1000, 2000, 5000, 10000, 20000)
)
DECODE_SECONDS = Histogram("wulian_ingest_decode_seconds", "decode time per batch")
COMMIT_SECONDS = Histogram("wulian_ingest_commit_seconds", "write+commit time per batch")
WRITE_FAILURES = Counter("wulian_ingest_write_failures_total", "batches whose transaction failed (retried)")
BACKLOG = Gauge("wulian_ingest_backlog_messages", "messages received from the broker, not yet written")
ALERTS = Counter("wulian_alerts_total", "alert transitions written", ["event"])
ALARM_JOURNAL_ROWS = Counter("wulian_alarm_journal_rows_total",
                             "pending-state changes journalled between alarm engine snapshots (city mode)")
ALERT_EVENTS_PUBLISHED = Counter(
    "wulian_alert_events_published_total", "alert events published to MQTT from the cluster outbox (PUBACKed)")
READINGS_RESTAGED = Counter(
    "wulian_ingest_batches_restaged_total",
    "batches whose direct binary COPY met an already stored reading and were written again via staging")
