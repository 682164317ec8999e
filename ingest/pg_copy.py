"""PostgreSQL's binary COPY format for a batch of readings, built from typed columns with numpy.

A readings row has fixed-width fields only (int8 time, int4 device, int2 metric, float8 value and a
one-letter text flag), so the whole batch is one numpy structured array in the wire layout, big-endian
(PostgreSQL docs, "COPY", section "Binary Format": a signature and two int32s, then per tuple an int16
field count and per field an int32 length and the value in network byte order, then an int16 -1).
Encoding 50,000 rows takes a few milliseconds, against ~1 µs per value for asyncpg's per-record
encoder; a binary ``timestamptz`` is int64 microseconds since 2000-01-01 (``PG_EPOCH_UNIX_US``), so
PostgreSQL parses nothing.
"""
from __future__ import annotations

import numpy as np

from wulian.core.timebase import NS_PER_US, PG_EPOCH_UNIX_US

HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"  # signature, flags, no extension
TRAILER = b"\xff\xff"

# (time or ts_ns, device, metric, value, flag): the column order of ``readings`` and ``stage_readings``
_ROW = np.dtype([("n", ">i2"), ("l_t", ">i4"), ("t", ">i8"), ("l_d", ">i4"), ("d", ">i4"), ("l_m", ">i4"),
                 ("m", ">i2"), ("l_v", ">i4"), ("v", ">f8"), ("l_f", ">i4"), ("f", "u1")])


def micros_since_pg_epoch(ts_ns: np.ndarray) -> np.ndarray:
    """Unix ns -> PostgreSQL binary timestamp, truncating toward zero as ``ts_ns / 1000`` does in SQL
    (what the text path stored)."""
    us = ts_ns // NS_PER_US
    us += (ts_ns < 0) & (ts_ns % NS_PER_US != 0)  # floor -> trunc for times before 1970
    return us - PG_EPOCH_UNIX_US


def readings_copy(ts: np.ndarray, device: np.ndarray, metric: np.ndarray, value: np.ndarray,
                  flag: np.ndarray) -> bytearray:
    """One binary COPY stream of readings rows, in the order given; ``ts`` as the first column's int8
    (``micros_since_pg_epoch`` for a timestamptz column, ns for staging's bigint), ``flag`` uint8 letters."""
    rows = np.empty(len(ts), _ROW)
    rows["n"] = 5
    rows["l_t"] = 8
    rows["t"] = ts
    rows["l_d"] = 4
    rows["d"] = device
    rows["l_m"] = 2
    rows["m"] = metric
    rows["l_v"] = 8
    rows["v"] = value
    rows["l_f"] = 1
    rows["f"] = flag
    out = bytearray(HEADER)
    out += rows.tobytes()
    out += TRAILER
    return out  # a bytearray: asyncpg takes it as data (bytes would be taken for a file path)
