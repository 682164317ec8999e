"""Field devices that talk to the gateways over TCP, as the real ones do.

- :class:`Hj212Station`: a data logger uploading CN 2011 real-time data (10 pollutants) with Flag=5
  (2017, answer wanted); an upload without its 9014 in ``answer_timeout_s`` is sent again, up to
  ``retries`` times (HJ 212-2017 Table 1: 10 s and 3 retries over mobile networks).
- :class:`Jt808Terminal`: registers (0x0100 -> 0x8100 auth code) unless it already has a code,
  authenticates (0x0102), then reports 0x0200 with three additional items (mileage, fuel, speed);
  a report not answered by 0x8001 is kept and sent again (same serial and time) before the next one.

Both reconnect after a dropped connection and count what happened in :class:`FieldStats`.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import random
import struct
import time
from dataclasses import dataclass, field

from wulian.ingest.codecs import hj212, jt808
from wulian.ingest.codecs.errors import CodecError

# CN 2011 of a flue-gas outlet: HJ 212-2017 codes -> (typical value, spread)
HJ212_POLLUTANTS = {
    "a21026": (35.0, 8.0),  # SO2 mg/m3
    "a21002": (80.0, 15.0),  # NOx
    "a34013": (8.0, 2.0),  # particulate matter
    "a21005": (1.2, 0.3),  # CO
    "a19001": (9.5, 0.8),  # O2 %
    "a01011": (12.0, 1.5),  # flue-gas velocity m/s
    "a01012": (95.0, 5.0),  # flue-gas temperature degC
    "a01013": (-120.0, 20.0),  # flue-gas pressure kPa (gauge, Pa-scale values as loggers send)
    "a01014": (8.0, 1.0),  # humidity %
    "a00000": (150000.0, 8000.0),  # flue-gas flow m3/h
}
ZS_CODES = ("a21026", "a21002", "a34013")  # converted (折算) values sent alongside


@dataclass(slots=True)
class FieldStats:
    connects: int = 0
    sent: int = 0
    answered: int = 0
    resent: int = 0
    failed: int = 0  # given up after the retries
    refused: int = 0  # answered with a refusal (auth, QnRtn, 0x8001 result != 0)
    latencies_s: list = field(default_factory=list)


async def _read_until(reader: asyncio.StreamReader, buf: bytearray, sep: bytes, timeout: float) -> bytes:
    """One separator-terminated item from the stream (``buf`` keeps what came after it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        i = buf.find(sep, 1 if sep == b"\x7e" else 0)
        if i >= 0:
            item = bytes(buf[:i + len(sep)])
            del buf[:i + len(sep)]
            return item
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError
        data = await asyncio.wait_for(reader.read(4096), left)
        if not data:
            raise ConnectionResetError("gateway closed the connection")
        buf += data


class Hj212Station:
    def __init__(self, mn: str, pw: str, *, st: str = "31", crc_mode: str = "hj212", seed: int = 0,
                 answer_timeout_s: float = 10.0, retries: int = 3) -> None:
        self.mn, self.pw, self.st, self.crc_mode = mn, pw, st, crc_mode
        self.rng = random.Random(seed)
        self.answer_timeout_s = answer_timeout_s
        self.retries = retries
        self.stats = FieldStats()

    def packet(self, ts_ns: int) -> tuple[bytes, str]:
        """A CN 2011 upload stamped ``ts_ns`` (UTC); returns (packet, QN)."""
        qn = hj212.format_china_time(ts_ns, millis=True)
        values = {}
        for code, (mean, spread) in HJ212_POLLUTANTS.items():
            v = round(mean + self.rng.gauss(0.0, spread), 3)
            fields = {"Rtd": v}
            if code in ZS_CODES:
                fields["ZsRtd"] = round(v * 1.1, 3)
            fields["Flag"] = "N"
            values[code] = fields
        pkt = hj212.encode_data(mn=self.mn, data_time_ns=ts_ns, values=values, cn="2011", st=self.st,
                                pw=self.pw, qn=qn, flag=5, crc_mode=self.crc_mode)
        return pkt, qn

    async def upload(self, reader, writer, buf: bytearray, ts_ns: int) -> bool:
        """Send one upload and wait for its 9014, resending on timeout; True when answered."""
        pkt, qn = self.packet(ts_ns)
        for attempt in range(self.retries + 1):
            if attempt:
                self.stats.resent += 1
            t0 = time.perf_counter()
            writer.write(pkt)
            await writer.drain()
            self.stats.sent += 1
            try:
                while True:
                    line = await _read_until(reader, buf, b"\r\n", self.answer_timeout_s)
                    try:
                        ans = hj212.decode(line, crc_modes=hj212.CRC_MODES)
                    except CodecError:
                        continue
                    if ans.qn != qn:
                        continue
                    if ans.cn == "9014":
                        self.stats.answered += 1
                        self.stats.latencies_s.append(time.perf_counter() - t0)
                        return True
                    self.stats.refused += 1  # 9011 QnRtn: PW/MN/CRC error
                    return False
            except TimeoutError:
                continue
        self.stats.failed += 1
        return False

    async def run(self, host: str, port: int, interval_s: float, stop: asyncio.Event) -> FieldStats:
        next_ts = time.time_ns() // 1_000_000_000 * 1_000_000_000
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await _sleep_or_stop(stop, 1.0)
                continue
            self.stats.connects += 1
            buf = bytearray()
            try:
                while not stop.is_set():
                    await self.upload(reader, writer, buf, next_ts)
                    next_ts += int(interval_s * 1e9)
                    await _sleep_or_stop(stop, max(0.0, next_ts / 1e9 - time.time()))
            except (ConnectionError, OSError):
                await _sleep_or_stop(stop, 1.0)
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return self.stats


class Jt808Terminal:
    def __init__(self, phone: str, *, auth_code: str | None = None, edition: str = "2013", seed: int = 0,
                 answer_timeout_s: float = 10.0, retries: int = 3, lat: float = 23.35, lon: float = 116.68) -> None:
        self.phone = phone
        self.auth_code = auth_code
        self.edition = edition
        self.rng = random.Random(seed)
        self.answer_timeout_s = answer_timeout_s
        self.retries = retries
        self.lat, self.lon = lat, lon
        self.heading = self.rng.uniform(0, 360)
        self.mileage = self.rng.uniform(1000, 90000)
        self.serial = 0
        self.stats = FieldStats()
        self.on_answer = None  # benchmarks: called with (latency_s, report ts_ns)

    def _frame(self, msg_id: int, body: bytes) -> tuple[bytes, int]:
        self.serial = (self.serial + 1) & 0xFFFF
        return jt808.encode(msg_id, self.phone, self.serial, body, edition=self.edition), self.serial

    def location(self, ts_ns: int) -> bytes:
        speed = max(0.0, 45 + self.rng.gauss(0, 12))
        self.heading = (self.heading + self.rng.gauss(0, 10)) % 360
        step = speed / 3600 * 10 / 111.0  # degrees moved in ~10 s
        self.lat += step * math.cos(math.radians(self.heading))
        self.lon += step * math.sin(math.radians(self.heading))
        self.mileage += speed / 360
        items = [(0x01, struct.pack(">I", int(self.mileage * 10))),  # mileage, 1/10 km
                 (0x02, struct.pack(">H", int(self.rng.uniform(200, 900)))),  # fuel, 1/10 L
                 (0x03, struct.pack(">H", int(speed * 10)))]  # tachograph speed, 1/10 km/h
        return jt808.location_body(ts_ns=ts_ns, lat=self.lat, lon=self.lon, speed_kmh=speed,
                                   heading=self.heading, altitude_m=12, items=items)

    async def _request(self, reader, writer, buf: bytearray, frame: bytes, serial: int, want_id: int):
        """Send, then read frames until the answer to ``serial`` comes (or the timeout)."""
        writer.write(frame)
        await writer.drain()
        while True:
            raw = await _read_until(reader, buf, b"\x7e", self.answer_timeout_s)
            if raw == b"\x7e":  # a closing flag followed by the next opening one
                buf[:0] = b"\x7e"
                continue
            if not raw.startswith(b"\x7e"):
                raw = b"\x7e" + raw
            try:
                msg = jt808.decode(raw)
            except CodecError:
                continue
            payload = msg.payload
            if msg.msg_id == want_id and getattr(payload, "serial", None) == serial:
                return payload

    async def login(self, reader, writer, buf: bytearray) -> bool:
        if self.auth_code is None:
            body = jt808.register_body(province=44, city=500, maker="WLSIM", model="SIM-808",
                                       terminal_id=self.phone[-7:], plate_color=2, plate="粤D" + self.phone[-5:],
                                       layout="2019" if self.edition == "2019" else "2013")
            frame, serial = self._frame(0x0100, body)
            ans = await self._request(reader, writer, buf, frame, serial, 0x8100)
            if ans.result != 0:
                self.stats.refused += 1
                return False
            self.auth_code = ans.auth_code
        frame, serial = self._frame(0x0102, jt808.auth_body(self.auth_code, edition=self.edition,
                                                            imei="86" + self.phone[-13:].rjust(13, "0")))
        ans = await self._request(reader, writer, buf, frame, serial, 0x8001)
        if ans.result != 0:
            self.stats.refused += 1
            self.auth_code = None  # register again next time
            return False
        return True

    async def run(self, host: str, port: int, interval_s: float, stop: asyncio.Event,
                  first_delay_s: float = 0.0) -> FieldStats:
        unanswered: list[tuple[bytes, int, int, int]] = []  # (frame, serial, ts_ns, tries)
        await _sleep_or_stop(stop, first_delay_s)
        next_t = time.time()
        while not stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(host, port)
            except OSError:
                await _sleep_or_stop(stop, 1.0 + self.rng.random())
                continue
            self.stats.connects += 1
            buf = bytearray()
            try:
                if not await self.login(reader, writer, buf):
                    await _sleep_or_stop(stop, 5.0)
                    continue
                while not stop.is_set():
                    if not unanswered:
                        ts = int(next_t) * 1_000_000_000
                        frame, serial = self._frame(0x0200, self.location(ts))
                        unanswered.append((frame, serial, ts, 0))
                    frame, serial, ts, tries = unanswered[0]
                    if tries:
                        self.stats.resent += 1
                    self.stats.sent += 1
                    t0 = time.perf_counter()
                    try:
                        ans = await self._request(reader, writer, buf, frame, serial, 0x8001)
                    except TimeoutError:
                        if tries + 1 > self.retries:
                            unanswered.pop(0)
                            self.stats.failed += 1
                            next_t += interval_s  # the next report gets a time of its own
                        else:
                            unanswered[0] = (frame, serial, ts, tries + 1)
                        continue
                    unanswered.pop(0)
                    if ans.result == 0:
                        self.stats.answered += 1
                        latency = time.perf_counter() - t0
                        self.stats.latencies_s.append(latency)
                        if self.on_answer is not None:
                            self.on_answer(latency, ts)
                    else:
                        self.stats.refused += 1
                    next_t += interval_s
                    await _sleep_or_stop(stop, max(0.0, next_t - time.time()))
            except (ConnectionError, OSError, TimeoutError):
                await _sleep_or_stop(stop, 1.0 + self.rng.random())
            finally:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()
        return self.stats


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    if seconds <= 0 or stop.is_set():
        return
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


def station_ids(n: int, seed: int = 0) -> list[str]:
    """MNs of simulated stations: 24 digits (the HJ 212-2017 width)."""
    return [f"8800{seed:04d}{i:016d}" for i in range(n)]


def terminal_phones(n: int, seed: int = 0) -> list[str]:
    """Phone numbers of simulated terminals: 11 digits starting with 1, as a mobile number."""
    return [f"1{(seed * 1_000_000 + i) % 10**10:010d}" for i in range(n)]
