"""Bad input through the real pipeline: packets of every topic kind, mutated and hostile, decoded and
committed by the ingest code itself (``Ingestor.decode_batch`` + ``commit_batch``) against a database.

What may happen to a packet: it is stored, or it becomes exactly one dead letter with a reason. What
must not: an exception out of the pipeline, a codec crash (a non-``CodecError`` exception, which the
pipeline contains as ``decoder_error``), a packet neither stored nor dead-lettered, or the good packets
of the same batch going missing. Each batch carries a few known-good control packets to check the last.

Generators take a ``random.Random`` so ``wulian fuzz`` and the hypothesis tests (which draw the seed)
share them.
"""
from __future__ import annotations

import json
import random
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

import asyncpg
import orjson

from wulian.ingest.batch_writer import BatchWriter
from wulian.ingest.codecs import cjt188, dlt645, hj212, jt808
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.mqtt_client import InMessage
from wulian.ingest.pipeline import IngestConfig, Ingestor

# codec name -> (stream, kind) of its topic
CODECS = {
    "json_pollution": ("pollution", "telemetry"),
    "json_air": ("air", "telemetry"),
    "json_water": ("water", "telemetry"),
    "json_grid": ("grid", "telemetry"),
    "json_meter": ("meter", "telemetry"),
    "json_vehicle": ("vehicle", "telemetry"),
    "json_traffic": ("traffic", "telemetry"),
    "hj212": ("pollution", "hj212"),
    "jt808": ("vehicle", "jt808"),
    "dlt645": ("grid", "dlt645"),
    "cjt188": ("meter", "cjt188"),
}
SQL_META = ["'", "''", '"', ";", "--", "/*", "*/", "\\", "%", "_", "$1", "'; DROP TABLE readings; --",
            "' OR '1'='1", "\x00", "$$", "E'\\x00'", "); COMMIT; --"]
LIMITS = PayloadLimits(max_bytes=64 * 1024)  # a smaller limit than the default makes "too large" cheap
_NS = 1_000_000_000
_DAY_MS = 86_400_000


def _device(rng: random.Random, codec: str) -> str:
    if codec == "jt808":
        return "0" + "".join(rng.choice("0123456789") for _ in range(11))
    if codec in ("dlt645", "cjt188"):
        return "".join(rng.choice("0123456789") for _ in range(12 if codec == "dlt645" else 14))
    return f"FZ{rng.randrange(10**6):06d}"


def _json_record(rng: random.Random, stream: str, now_ms: int) -> dict:
    ts = now_ms - rng.randrange(3_600_000)
    if stream == "vehicle":
        return {"ts": ts, "lat": rng.uniform(18, 53), "lon": rng.uniform(73, 135), "speed": rng.uniform(0, 120),
                "heading": rng.randrange(360), "alarm": rng.randrange(2**32), "status": 3}
    if stream == "traffic":
        return {"ts": ts, "speed": rng.uniform(0, 120), "flow": rng.uniform(0, 3000), "occupancy": rng.random()}
    return {"ts": ts, "flag": rng.choice("NMD"), "values": {f"m{j}": rng.uniform(-1e3, 1e3) for j in range(rng.randrange(1, 6))}}


def seed_payload(rng: random.Random, codec: str, device: str, now_ms: int) -> bytes:
    """A valid packet of ``codec`` for ``device`` (the start of every mutation)."""
    stream, kind = CODECS[codec]
    if kind == "telemetry":
        n = rng.choice((1, 1, 1, 3))
        recs = [_json_record(rng, stream, now_ms) for _ in range(n)]
        return orjson.dumps(recs[0] if n == 1 else {"batch": recs})
    ts_ns = (now_ms - rng.randrange(3_600_000)) * 1_000_000
    if codec == "hj212":
        values = {c: {"Rtd": round(rng.uniform(0, 200), 2), "Flag": rng.choice("NDM")}
                  for c in ("a21026", "a21002", "a34013")[: rng.randrange(1, 4)]}
        return hj212.encode_data(mn=device, data_time_ns=ts_ns, values=values, qn=None, flag=4)
    if codec == "jt808":
        body = jt808.location_body(ts_ns=ts_ns, lat=rng.uniform(18, 53), lon=rng.uniform(73, 135),
                                   speed_kmh=rng.uniform(0, 120), heading=rng.randrange(360))
        return jt808.encode(0x0200, device, rng.randrange(65536), body)
    if codec == "dlt645":
        return dlt645.encode_reply(device, 0x00010000, round(rng.uniform(0, 99999), 2))
    return cjt188.encode_volume_reply(0x10, device, round(rng.uniform(0, 9999), 2), round(rng.uniform(0, 9999), 2))


def mutate(rng: random.Random, data: bytes) -> bytes:
    """One to four byte-level mutations: flips, inserts, deletes, truncation, duplication, splicing."""
    b = bytearray(data)
    for _ in range(rng.randrange(1, 5)):
        op = rng.randrange(7)
        if not b:
            b += bytes([rng.randrange(256)])
            continue
        i = rng.randrange(len(b))
        if op == 0:
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1:
            b[i] = rng.choice((0x00, 0xFF, 0x7E, 0x7D, 0x23, 0x26, 0x3B, 0x3D, 0x22, 0x7B, 0x7D, 0x5B, 0x2C))
        elif op == 2:
            b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 8)))
        elif op == 3:
            del b[i:i + rng.randrange(1, 16)]
        elif op == 4:
            del b[i:]  # truncated frame
        elif op == 5:
            j = rng.randrange(i, len(b))
            b[j:j] = b[i:j + 1]
        else:
            b = b[i:] + b[:i]
    return bytes(b)


def hostile_json(rng: random.Random, stream: str, now_ms: int) -> bytes:
    """Valid-looking JSON that probes the payload rules (README: what happens to a message)."""
    rec = _json_record(rng, stream, now_ms)
    case = rng.randrange(14)
    if case == 0:  # deep nesting
        depth = rng.choice((64, 512, 5000))
        return b'{"ts": %d, "values": ' % rec["ts"] + b'{"a": ' * depth + b"1" + b"}" * depth + b"}"
    if case == 1:  # NaN / Infinity are not JSON, but devices send them
        lit = rng.choice((b"NaN", b"Infinity", b"-Infinity", b"nan", b"1e400", b"-1e400"))
        return b'{"ts": %d, "values": {"x": %s}, "lat": %s, "lon": 1, "speed": %s}' % (rec["ts"], lit, lit, lit)
    if case == 2:  # timestamps far in the past or the future, or nonsense
        rec["ts"] = rng.choice((0, -1, 1, now_ms + 11 * 60_000, now_ms + 400 * _DAY_MS, now_ms - 3651 * _DAY_MS,
                                2**63, -(2**63), 10**30, 1e300, "9999-12-31T23:59:59", "0001-01-01", "",
                                "2026-13-45T99:00:00", True, None, [], {}))
    elif case == 3:  # unknown metrics (accepted and catalogued) and SQL metacharacters in names (refused)
        name = rng.choice(("brand_new_metric", f"x{rng.randrange(10**9)}", "Ünïcode", "a" * 65, "1abc",
                           "", " ", *(f"m{s}x" for s in SQL_META)))
        rec["values"] = {name: 1.0}
    elif case == 4:  # wrong types everywhere
        key = rng.choice(list(rec))
        rec[key] = rng.choice((None, "", "12", [], {}, True, [1, 2], {"value": "x"}, 1e308, -0.0))
    elif case == 5:  # oversized payload
        n = rng.choice((70_000, 300_000))
        return orjson.dumps({"ts": rec["ts"], "values": {"x": 1}, "pad": "p" * n})
    elif case == 6:  # too many records / empty batch
        return orjson.dumps({"batch": [rec] * rng.choice((0, 10_001))})
    elif case == 7:
        return rng.choice((b"", b"null", b"[]", b"{}", b"[[]]", b"1", b'"x"', b"\xff\xfe", b"{\"batch\": 1}",
                           b"\x00" * 10, b"[" * 10_000))
    elif case == 8 and "values" in rec:  # flags: unknown, lower case, non-string
        rec["values"] = {"m": {"value": 1.0, "flag": rng.choice(("X", "n", "", 5, None, "NN", "'"))}}
    elif case == 9 and "lat" in rec:
        rec["lat"], rec["lon"] = rng.choice(((91, 0), (0, 181), (-90.0001, 0), ("23", "116"), (None, None)))
    elif case == 10:  # duplicated keys and huge numbers
        return b'{"ts": %d, "ts": %d, "values": {"a": 1e308, "a": 2}, "speed": 1e308, "lat": 1, "lon": 1}' % (
            rec["ts"], rec["ts"] + 1)
    elif case == 11:  # a batch with one bad record: the whole message is refused
        bad = dict(rec)
        bad["ts"] = "not a time"
        return orjson.dumps({"batch": [rec, bad, rec]})
    elif case == 12:  # values at the edges that the database must take or refuse
        v = rng.choice((1.7976931348623157e308, 5e-324, -1.7976931348623157e308, 2**53 + 1, 10**20))
        if "values" in rec:
            rec["values"] = {"edge": v}
        else:
            rec["speed"] = v
    # case 13: the record unchanged (accepted)
    return json.dumps(rec).encode()  # stdlib json: integers beyond 64 bits are part of the attack


def hostile_topic(rng: random.Random, codec: str, device: str) -> str:
    """A topic with SQL metacharacters or bad shape in one segment (refused as ``bad_topic``)."""
    stream, kind = CODECS[codec]
    parts = ["wl", "fuzz", stream, device, kind]
    i = rng.randrange(6)
    if i < 5:
        parts[i] = rng.choice((*SQL_META, "", " ", "a" * 300, "日本", "+", "#", "..", "a/b"))
        if parts[i] == "" and i == 3:
            parts[i] = "'"
    else:
        parts = parts[: rng.randrange(5)] or ["wl"]
    return "/".join(parts)


@dataclass(frozen=True, slots=True)
class Packet:
    codec: str
    topic: str
    payload: bytes
    control: bool = False  # a known-good packet that must be stored


def fuzz_packet(rng: random.Random, codec: str, now_ms: int) -> Packet:
    stream, kind = CODECS[codec]
    device = _device(rng, codec)
    topic = f"wl/fuzz/{stream}/{device}/{kind}"
    payload = seed_payload(rng, codec, device, now_ms)
    r = rng.random()
    if r < 0.12:
        topic = hostile_topic(rng, codec, device)
    elif r < 0.45 and kind == "telemetry":
        payload = hostile_json(rng, stream, now_ms)
    elif r < 0.9:
        payload = mutate(rng, payload)
    elif r < 0.95:  # oversized binary
        payload = payload * (LIMITS.max_bytes // max(1, len(payload)) + 1)
    return Packet(codec, topic, payload)


def control_packets(rng: random.Random, now_ms: int, n: int = 2) -> list[Packet]:
    """Good JSON readings from fresh devices; the batch they ride in must store them."""
    out = []
    for _ in range(n):
        dev = f"CTL{uuid.uuid4().hex[:10]}"
        doc = {"ts": now_ms - rng.randrange(60_000), "values": {"ctl_a": 1.0, "ctl_b": 2.0}}
        out.append(Packet("control", f"wl/fuzz/water/{dev}/telemetry", orjson.dumps(doc), control=True))
    return out


def _stored_text(s: str) -> str:
    """How a dead letter's topic reads back: NUL and lone surrogates replaced (ingest.pipeline)."""
    return s.replace("\x00", "\ufffd").encode("utf-8", "replace").decode("utf-8")


class _NoBroker:
    """Stands in for the MQTT consumer: the fuzz run acknowledges nothing."""

    def ack_many(self, messages) -> int:
        return 0


class FuzzFailure(AssertionError):
    pass


@dataclass
class FuzzReport:
    tried: Counter = field(default_factory=Counter)  # codec -> packets
    stored: Counter = field(default_factory=Counter)  # codec -> packets stored
    rejected: Counter = field(default_factory=Counter)  # reason -> packets
    rejected_by_codec: Counter = field(default_factory=Counter)  # "codec:reason" -> packets
    codec_crashes: list[str] = field(default_factory=list)  # "codec: detail" of decoder_error dead letters
    batches: int = 0

    def as_dict(self) -> dict:
        return {"packets": sum(self.tried.values()), "batches": self.batches, "tried": dict(self.tried),
                "stored": dict(self.stored), "rejected_by_reason": dict(self.rejected.most_common()),
                "codec_crashes": len(self.codec_crashes), "crash_examples": self.codec_crashes[:5]}


class FuzzRunner:
    """Feeds packets through ``Ingestor.decode_batch`` + ``commit_batch`` and checks what came out."""

    def __init__(self, pool: asyncpg.Pool, limits: PayloadLimits = LIMITS) -> None:
        self.pool = pool
        self.ingestor = Ingestor(_NoBroker(), BatchWriter(pool), IngestConfig(limits=limits))  # type: ignore[arg-type]
        self.report = FuzzReport()
        self._mid = 0

    async def run_batch(self, packets: list[Packet]) -> None:
        msgs = []
        for p in packets:
            self._mid = self._mid % 65535 + 1
            msgs.append(InMessage(1, self._mid, 1, p.topic, p.payload))
        async with self.pool.acquire() as con:
            t0 = await con.fetchval("SELECT coalesce(max(time), '-infinity') FROM dead_letters")
        batch = self.ingestor.decode_batch(msgs)  # must not raise
        if len(batch.items) + len(batch.dead) != len(msgs):
            raise FuzzFailure(f"decode lost messages: {len(batch.items)} + {len(batch.dead)} != {len(msgs)}")
        res = await self.ingestor.commit_batch(batch)  # must not raise
        async with self.pool.acquire() as con:
            dead = await con.fetch("SELECT topic, reason, detail, payload FROM dead_letters WHERE time > $1", t0)
            ctl = [p for p in packets if p.control]
            n_ctl = await con.fetchval(
                "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id = ANY($1::text[])",
                [p.topic.split("/")[3] for p in ctl])
        if len(dead) != res.dead_letters:
            raise FuzzFailure(f"{res.dead_letters} refused but {len(dead)} dead-letter rows")
        if n_ctl != 2 * len(ctl):
            raise FuzzFailure(f"good packets of the batch not stored: {n_ctl} of {2 * len(ctl)} readings")
        sent = Counter((_stored_text(p.topic), p.payload) for p in packets)
        refused = Counter((r["topic"], bytes(r["payload"]) if r["payload"] is not None else None) for r in dead)
        if refused - sent:
            raise FuzzFailure(f"dead letters for packets never sent: {list((refused - sent).items())[:2]}")
        codec_of = {(_stored_text(p.topic), p.payload): p.codec for p in packets}
        rep = self.report
        rep.batches += 1
        for r in dead:
            if not r["reason"]:
                raise FuzzFailure(f"dead letter without a reason: {r['topic']!r}")
            codec = codec_of.get((r["topic"], bytes(r["payload"])), "?")
            rep.rejected[r["reason"]] += 1
            rep.rejected_by_codec[f"{codec}:{r['reason']}"] += 1
            if r["reason"] == "decoder_error":
                rep.codec_crashes.append(f"{codec}: {r['detail'][:200]}")
        for key, n in (sent - refused).items():
            if codec_of[key] != "control":
                rep.stored[codec_of[key]] += n
        for p in packets:
            if not p.control:
                rep.tried[p.codec] += 1
        if any(p.control for p in packets):
            for p in ctl:
                if (sent - refused)[(_stored_text(p.topic), p.payload)] == 0:
                    raise FuzzFailure(f"control packet refused: {p.topic}")


def fuzz_batch(rng: random.Random, size: int, now_ms: int | None = None, codecs: list[str] | None = None) -> list[Packet]:
    now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
    names = codecs or list(CODECS)
    packets = [fuzz_packet(rng, rng.choice(names), now_ms) for _ in range(size)]
    ctl = control_packets(rng, now_ms)
    for p in ctl:
        packets.insert(rng.randrange(len(packets) + 1), p)
    return packets
