"""CJ/T 188 (2004 frame layout, still the field norm) water, gas and heat meter frames.

Frame: optional FE wake-up bytes, then ``68 T A0..A6 C L DATA CS 16``; T is the meter type, the address
is 7 bytes sent low byte first, DATA starts with the 2-byte data identifier and the 1-byte sequence
number SER, and CS is the byte sum mod 256 from 68 to the end of DATA. Unlike DL/T 645 there is no 0x33
offset. Field devices send DI 901F both as ``1F 90`` and ``90 1F``; both are accepted and normalised.

Control code C: D7 direction (1 = from the meter), D6 communication status (1 = abnormal), D5..D0 the
function. An abnormal reply (e.g. C1 to a read) carries no data, only SER and the 2-byte status ST
(``C1 03 SER ST ST``); some meters put the DI first (``C1 05 DI DI SER ST ST``). Both are decoded as the
meter's error reply, never as a short data reply.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from wulian.core.const import Kind, Stream
from wulian.core.model import Decoded, Reading
from wulian.core.timebase import CHINA_TZ  # meter clocks run on China time
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError

KIND = Kind.CJT188

METER_TYPES = {
    0x10: "cold_water",
    0x11: "hot_water",
    0x12: "drinking_water",
    0x13: "reclaimed_water",
    0x20: "heat",
    0x21: "cooling",
    0x30: "gas",
    0x40: "electricity",
    0xAA: "any",  # wildcard type in read-address broadcasts
}
WATER_TYPES = frozenset({0x10, 0x11, 0x12, 0x13})

DI_READ_DATA = 0x901F
DI_READ_ADDRESS = 0x810A
DI_WRITE_ADDRESS = 0xA018
KNOWN_DIS = frozenset({DI_READ_DATA, DI_READ_ADDRESS, DI_WRITE_ADDRESS})

# Unit codes: only 2C (m3) is confirmed from worked frames; others are kept as their hex code.
UNITS = {0x2C: "m3"}

REPLY_BIT = 0x80  # D7: frame from the meter
ABNORMAL_BIT = 0x40  # D6: 通讯异常, the meter could not carry out the request
FUNCTION_MASK = 0x3F  # D5..D0



@dataclass(frozen=True, slots=True)
class VolumeReply:
    """Payload of a water/gas DI 901F read reply."""

    current: float
    current_unit: int
    settlement: float
    settlement_unit: int
    meter_time: datetime | None  # None when the meter sends an all-zero or invalid clock
    status: bytes


@dataclass(frozen=True, slots=True)
class Cjt188Frame:
    meter_type: int
    address: str  # 14 digits as printed (bytes reversed)
    control: int
    data: bytes  # whole DATA field, DI bytes as sent
    di: int | None  # normalised identifier (e.g. 0x901F), None if DATA is shorter than 2 bytes
    di_swapped: bool  # True when the DI arrived as ``1F 90`` (low byte first)
    ser: int | None
    preamble: int
    checksum: int
    status: bytes | None = None  # ST of an abnormal reply (2 bytes, as sent); None for other frames

    @property
    def is_reply(self) -> bool:
        return bool(self.control & REPLY_BIT)

    @property
    def is_abnormal(self) -> bool:
        """An abnormal reply from the meter (D7 and D6 set): an error, not a measurement."""
        return _is_abnormal(self.control)

    @property
    def function(self) -> int:
        return self.control & FUNCTION_MASK

    @property
    def payload(self) -> bytes:
        return self.data[3:]


def _is_abnormal(control: int) -> bool:
    return control & (REPLY_BIT | ABNORMAL_BIT) == REPLY_BIT | ABNORMAL_BIT


def _bcd(raw: bytes) -> int:
    value = 0
    for b in reversed(raw):
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise CodecError("bad_bcd", raw.hex())
        value = value * 100 + hi * 10 + lo
    return value


def _to_bcd(value: int, nbytes: int) -> bytes:
    if value < 0 or value >= 10 ** (2 * nbytes):
        raise CodecError("value_out_of_range", f"{value} in {nbytes} bytes")
    out = bytearray()
    for _ in range(nbytes):
        value, two = divmod(value, 100)
        out.append(((two // 10) << 4) | (two % 10))
    return bytes(out)


def _normalise_di(b0: int, b1: int) -> tuple[int, bool]:
    as_sent = (b0 << 8) | b1
    swapped = (b1 << 8) | b0
    if as_sent in KNOWN_DIS:
        return as_sent, False
    if swapped in KNOWN_DIS:
        return swapped, True
    return as_sent, False


def decode(frame: bytes) -> Cjt188Frame:
    """Parse one frame; raise CodecError on any framing, length or checksum fault."""
    i = 0
    while i < len(frame) and frame[i] == 0xFE:
        i += 1
    body = frame[i:]
    if len(body) < 13:
        raise CodecError("too_short", f"{len(frame)} bytes")
    if body[0] != 0x68:
        raise CodecError("bad_start", f"{body[0]:02x}")
    length = body[10]
    if len(body) != 13 + length:
        raise CodecError("length_mismatch", f"L={length}, frame has {len(body) - 13} data bytes")
    if body[-1] != 0x16:
        raise CodecError("bad_end", f"{body[-1]:02x}")
    cs = sum(body[: 11 + length]) & 0xFF
    if cs != body[11 + length]:
        raise CodecError("bad_checksum", f"computed {cs:02x}, frame {body[11 + length]:02x}")
    data = bytes(body[11 : 11 + length])
    control = body[9]
    status = None
    if _is_abnormal(control):
        di, swapped, ser, status = _abnormal_fields(data)
    else:
        di, swapped = (None, False) if len(data) < 2 else _normalise_di(data[0], data[1])
        ser = data[2] if len(data) >= 3 else None
    return Cjt188Frame(
        meter_type=body[1],
        address=body[2:9][::-1].hex().upper(),
        control=control,
        data=data,
        di=di,
        di_swapped=swapped,
        ser=ser,
        preamble=i,
        checksum=cs,
        status=status,
    )


def _abnormal_fields(data: bytes) -> tuple[int | None, bool, int, bytes]:
    """DI, DI swapped, SER and ST of an abnormal reply: ``SER ST ST`` (the standard's L = 03), or
    ``DI DI SER ST ST`` from meters that echo a known DI. Anything else is refused."""
    if len(data) == 3:
        return None, False, data[0], bytes(data[1:3])
    if len(data) == 5:
        di, swapped = _normalise_di(data[0], data[1])
        if di in KNOWN_DIS:
            return di, swapped, data[2], bytes(data[3:5])
    raise CodecError("bad_abnormal_reply", f"abnormal reply needs SER ST ST (3 bytes) or DI SER ST ST "
                                           f"(5 bytes), got {data.hex(' ').upper() or 'no data'}")


def _meter_time(raw: bytes) -> datetime | None:
    """7 BCD bytes ss mm hh DD MM YY YY (year low byte first), China time; None if not a real time."""
    try:
        ss, mm, hh, dd, mo = (_bcd(raw[k : k + 1]) for k in range(5))
        year = _bcd(raw[5:7])
        return datetime(year, mo, dd, hh, mm, ss, tzinfo=CHINA_TZ)
    except (CodecError, ValueError):
        return None


def volume_reply(msg: Cjt188Frame) -> VolumeReply | None:
    """The payload of a water/gas DI 901F read reply, or None for any other frame.

    Layout after DI and SER: current cumulative volume (4 bytes BCD, 2 decimals) + unit, settlement-day
    cumulative volume + unit, real time (7 bytes), status ST (2 bytes). Heat meters use a different 901F
    payload and are not decoded here.
    """
    if not (msg.is_reply and not msg.is_abnormal and msg.function == 0x01 and msg.di == DI_READ_DATA):
        return None
    if msg.meter_type not in WATER_TYPES and msg.meter_type != 0x30:
        return None
    p = msg.payload
    if len(p) < 19:
        raise CodecError("length_mismatch", f"901F reply payload {len(p)} bytes, need 19")
    return VolumeReply(
        current=_bcd(p[0:4]) / 100,
        current_unit=p[4],
        settlement=_bcd(p[5:9]) / 100,
        settlement_unit=p[9],
        meter_time=_meter_time(p[10:17]),
        status=bytes(p[17:19]),
    )


def _metric_prefix(meter_type: int) -> str:
    return "gas" if meter_type == 0x30 else "water"


def to_decoded(msg: Cjt188Frame, ts_ns: int | None = None) -> Decoded:
    """Readings from a 901F reply, stamped with the receive time ``ts_ns`` when given (meter clocks drift
    and are often unset), else with the meter's own clock; a reply with neither is refused (``no_time``).

    A 901F reply whose status ST is all clear gives readings only: an event per routine read would be one
    ``device_events`` row per meter every collection cycle (1.5 M households every 15 min in a city). A
    reply with any ST bit set (valve, battery, ...) carries an event with ST and the meter clock; other
    frames produce one event so collectors' traffic stays visible; an abnormal reply's event has
    ``error`` set and the meter's status ST.
    """
    out = Decoded()
    event: dict = {"kind": "cjt188", "ts_ns": ts_ns, "address": msg.address,
                   "meter_type": f"{msg.meter_type:02X}", "control": msg.control}
    if msg.di is not None:
        event["di"] = f"{msg.di:04X}"
    if msg.is_abnormal:
        event["error"] = True
        event["ser"] = msg.ser
        event["status"] = msg.status.hex().upper()
    rep = volume_reply(msg)
    if rep is not None:
        if ts_ns is None:
            if rep.meter_time is None:
                raise CodecError("no_time", "no receive time and the meter clock is unset")
            ts_ns = int(rep.meter_time.timestamp()) * 1_000_000_000
            event["ts_ns"] = ts_ns
        prefix = _metric_prefix(msg.meter_type)
        unit = UNITS.get(rep.current_unit, f"unit{rep.current_unit:02X}")
        out.readings.append(Reading(ts_ns=ts_ns, metric=f"{prefix}_volume_{unit}", value=rep.current))
        unit_s = UNITS.get(rep.settlement_unit, f"unit{rep.settlement_unit:02X}")
        out.readings.append(
            Reading(ts_ns=ts_ns, metric=f"{prefix}_volume_settlement_{unit_s}", value=rep.settlement)
        )
        if not any(rep.status):
            return out
        event["meter_time"] = rep.meter_time.isoformat() if rep.meter_time else None
        event["status"] = rep.status.hex().upper()
    out.events.append(event)
    return out


def decode_payload(stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """The codec entry point (``contract.DecodeFn``): readings stamped ``now_ns`` (the receive time)."""
    return to_decoded(decode(payload), now_ns)


def encode(meter_type: int, address: str, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    """Build a frame; ``data`` is the whole DATA field (DI bytes, SER, payload) as it goes on the wire."""
    if len(address) != 14:
        raise CodecError("bad_address", address)
    try:
        addr = bytes.fromhex(address)[::-1]
    except ValueError as exc:
        raise CodecError("bad_address", address) from exc
    if len(data) > 255:
        raise CodecError("too_long", f"{len(data)} data bytes")
    body = bytes([0x68, meter_type]) + addr + bytes([control, len(data)]) + data
    return b"\xfe" * preamble + body + bytes([sum(body) & 0xFF, 0x16])


def encode_read(meter_type: int, address: str, ser: int = 0, preamble: int = 4) -> bytes:
    """Read-data request (C = 01, DI 901F sent as ``90 1F``)."""
    return encode(meter_type, address, 0x01, bytes([0x90, 0x1F, ser]), preamble)


def encode_abnormal_reply(meter_type: int, address: str, function: int = 0x01, status: bytes = b"\x00\x00",
                          ser: int = 0, preamble: int = 4) -> bytes:
    """The meter's abnormal reply to ``function`` (C = 0xC0 | function, DATA = SER ST ST); for simulators."""
    if len(status) != 2:
        raise CodecError("bad_status", f"ST is 2 bytes, got {len(status)}")
    control = REPLY_BIT | ABNORMAL_BIT | (function & FUNCTION_MASK)
    return encode(meter_type, address, control, bytes([ser]) + bytes(status), preamble)


def encode_volume_reply(meter_type: int, address: str, current: float, settlement: float,
                        meter_time: datetime | None = None, status: bytes = b"\x00\x00",
                        ser: int = 0, preamble: int = 4) -> bytes:
    """Water/gas meter 901F reply (C = 81) with volumes in m3 (unit 2C); for simulators."""
    if meter_time is None:
        clock = bytes(7)
    else:
        t = meter_time.astimezone(CHINA_TZ)
        clock = b"".join(_to_bcd(x, 1) for x in (t.second, t.minute, t.hour, t.day, t.month))
        clock += _to_bcd(t.year, 2)
    payload = (_to_bcd(round(current * 100), 4) + b"\x2c" + _to_bcd(round(settlement * 100), 4)
               + b"\x2c" + clock + bytes(status[:2]))
    return encode(meter_type, address, 0x81, bytes([0x90, 0x1F, ser]) + payload, preamble)
