"""Ingest's fast paths (issue 14) store exactly what the reference paths stored: the JSON scalar fast
decoder against ``decode_message``, and the binary COPY of readings straight into the hypertable
against the text staging path, including a batch that meets readings already stored (redelivery)."""
from __future__ import annotations

import time

import numpy as np
import orjson
import pytest

from wulian.core.const import Kind, Stream
from wulian.core.model import ScalarRecord
from wulian.ingest.batch_writer import BatchWriter
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.codecs.registry import decode_message
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pg_copy import micros_since_pg_epoch
from wulian.ingest.pipeline import IngestConfig, Ingestor
from wulian.ingest.rows import BatchRows, ReadingColumns

NOW_NS = time.time_ns()
NOW_MS = NOW_NS // 1_000_000
LIMITS = PayloadLimits()


def _payloads() -> list[bytes]:
    """Valid and invalid scalar messages: each must come out of the batch decoder as decode_message
    says (the same readings, or a dead letter with the same reason)."""
    docs = [
        {"ts": NOW_MS, "values": {"SO2": 1.5, "NOx": 2}},
        {"ts": NOW_MS, "values": {"SO2": 1.5}, "flag": "M"},
        {"ts": NOW_MS, "values": {"SO2": {"value": 3.0, "flag": "C"}}},
        {"ts": NOW_MS, "values": {"SO2": True}},  # bool is not a number
        {"ts": NOW_MS, "values": {"SO2": "1"}},
        {"ts": NOW_MS, "values": {"bad name!": 1.0}},
        {"ts": NOW_MS, "values": {}},
        {"ts": NOW_MS, "values": {"SO2": 1.0}, "flag": "Q"},
        {"ts": NOW_MS + 3_600_000, "values": {"SO2": 1.0}},  # an hour ahead
        {"ts": NOW_MS - 4000 * 86_400_000, "values": {"SO2": 1.0}},  # too old
        {"ts": float(NOW_MS), "values": {"SO2": 1.0}},
        {"batch": [{"ts": NOW_MS, "values": {"SO2": 1.0}}, {"ts": NOW_MS + 1, "values": {"SO2": 2.0}}]},
    ]
    return [orjson.dumps(d) for d in docs] + [b"{not json", b"[]"]


class _Writer:
    pool = None


def test_batch_decoder_agrees_with_decode_message():
    ing = Ingestor(None, _Writer(), IngestConfig(topic_prefix="wl"), clock_ns=lambda: NOW_NS)
    payloads = _payloads()
    topic = "wl/testcity/pollution/PS1/telemetry"
    # twice: the first pass teaches the fast path the metric names, the second takes it
    for _ in range(2):
        batch = ing.decode_batch([InMessage(1, k, 1, topic, p) for k, p in enumerate(payloads)])
        got = {it.msg.mid: list(it.decoded.readings) for it in batch.items}
        dead = {d.payload: d.reason for d in batch.dead}
        for k, p in enumerate(payloads):
            try:
                want = decode_message(Stream.POLLUTION, Kind.TELEMETRY, p, NOW_NS, LIMITS).readings
            except CodecError as exc:
                assert dead[p] == exc.reason, p
            else:
                assert got[k] == list(want), p
    fast = [it for it in batch.items if type(it.decoded.readings) is ScalarRecord]
    assert len(fast) == 2  # the plain record and the one with a message-wide flag


def _cols(ts_ns, device, metric, value, flag) -> ReadingColumns:
    return ReadingColumns(np.asarray(ts_ns, np.int64), np.asarray(device, np.int32), np.asarray(metric, np.int32),
                          np.asarray(value, np.float64),
                          np.frombuffer("".join(flag).encode(), np.uint8) if all(len(f) == 1 for f in flag)
                          else np.array(flag, object))


def test_binary_time_truncates_toward_zero_like_sql():
    ns = np.array([1_500, -1_500, -1_000, 0, 999], np.int64)
    pg_epoch_us = 946_684_800_000_000
    assert (micros_since_pg_epoch(ns) + pg_epoch_us).tolist() == [1, -1, -1, 0, 0]


async def _stored(pool, device: int):
    async with pool.acquire() as con:
        rows = await con.fetch(
            "SELECT (extract(epoch FROM time) * 1000000)::bigint AS us, metric, value, flag FROM readings"
            " WHERE device = $1 ORDER BY time, metric", device)
    return [tuple(r) for r in rows]


@pytest.mark.parametrize("flags", [["N", "M", "N"], ["N", "", "NC"]])
async def test_binary_copy_stores_what_the_text_path_stored_and_skips_stored_rows(pool, flags):
    writer = BatchWriter(pool)
    dev_bin, dev_text = 900_000 + len(flags[1]) * 2, 900_001 + len(flags[1]) * 2  # registry ids of no device
    base = NOW_NS - 10_000_000_123  # sub-microsecond digits: truncated
    ts = [base, base - 3_000_000_000, -86_400_000_000_500]  # one before 1970
    cols = _cols(ts, [dev_bin] * 3, [1, 2, 1], [1.25, -2.5, 1e300], flags)
    res = await writer.write(BatchRows(readings=cols))
    assert res.inserted == 3 and res.duplicates == 0
    # the reference: the same rows through staging and SQL's ns -> timestamptz
    async with pool.acquire() as con:
        async with con.transaction():
            await con.copy_records_to_table("stage_readings", columns=["ts_ns", "device", "metric", "value", "flag"],
                                            records=[(t, dev_text, m, v, f) for t, m, v, f in
                                                     zip(ts, [1, 2, 1], [1.25, -2.5, 1e300], flags)])
            await con.execute("INSERT INTO readings (time, device, metric, value, flag) SELECT timestamptz 'epoch'"
                              " + (ts_ns / 1000) * interval '1 microsecond', device, metric, value, flag"
                              " FROM stage_readings")
    assert await _stored(pool, dev_bin) == await _stored(pool, dev_text)
    # redelivery: the same batch plus one new reading; the stored ones are skipped, the new one written
    again = _cols(ts + [base + 1_000_000_000], [dev_bin] * 4, [1, 2, 1, 1], [1.25, -2.5, 1e300, 7.0],
                  flags + ["N"])
    res = await writer.write(BatchRows(readings=again))
    assert (res.inserted, res.duplicates) == (1, 3)
    assert len(await _stored(pool, dev_bin)) == 4
