"""DL/T 645-2007 electricity-meter frames: parse, build, and turn replies into readings.

Frame: optional FE wake-up bytes, then ``68 A0..A5 68 C L DATA CS 16``. The address is 6 BCD bytes sent
low byte first; every DATA byte is sent plus 0x33; CS is the byte sum mod 256 from the first 68 to the
end of DATA (the FE bytes are outside it). A read request carries the 4-byte data identifier (DI, DI0
first); a normal reply (C = 0x91) carries the DI followed by the value, BCD low byte first.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from wulian.core.const import Kind, Stream
from wulian.core.model import Decoded, Reading
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError

KIND = Kind.DLT645

BROADCAST_ADDRESS = "999999999999"  # time sync / freeze, no reply
WILDCARD_ADDRESS = "AAAAAAAAAAAA"  # read/write-address commands

# Control codes (function part, direction and error bits masked off).
CONTROL_NAMES = {
    0x08: "broadcast_time",
    0x11: "read_data",
    0x12: "read_follow_up",
    0x13: "read_address",
    0x14: "write_data",
    0x15: "write_address",
    0x16: "freeze",
    0x17: "change_baud_rate",
    0x18: "change_password",
    0x19: "clear_demand",
    0x1A: "clear_meter",
    0x1B: "clear_events",
}


@dataclass(frozen=True, slots=True)
class Quantity:
    """How one data identifier's value is laid out: BCD bytes, decimals, signed top bit, metric."""

    name_zh: str
    metric: str | None  # None: identifier known but not stored as a reading
    nbytes: int
    decimals: int
    # DL/T 645-2007 Appendix A: the top bit of the highest byte is the sign (0 +, 1 -) for currents, powers,
    # power factor (Table A.3) and the combined active / reactive energies (Table A.1 note).
    signed: bool = False


# Energy types by DI2 (DL/T 645-2007 Table A.1): name, metric stem, unit, signed. 组合有功 = +/- import and
# export as the meter's combination word sets them; 组合无功1/2 = sums of signed quadrant registers: these
# three can run negative ("最高位是符号位，0正1负", range -799999.99..799999.99).
ENERGY_TYPES: dict[int, tuple[str, str, str, bool]] = {
    0x00: ("组合有功", "energy_active_combined", "kwh", True),
    0x01: ("正向有功", "energy_active_import", "kwh", False),
    0x02: ("反向有功", "energy_active_export", "kwh", False),
    0x03: ("组合无功1", "energy_reactive1", "kvarh", True),
    0x04: ("组合无功2", "energy_reactive2", "kvarh", True),
}
# Per-phase energies: DI2 of the phase's first register (正向有功); then 反向有功, 组合无功1, 组合无功2 follow.
# Table A.1 defines them for the total only (DI1 = 00), no tariffs.
PHASE_ENERGY_BASE = {"A": 0x15, "B": 0x29, "C": 0x3D}
MAX_TARIFF = 63  # DI1 01..3F: tariff 1..63 (00 total, FF block read)
MAX_SETTLEMENT = 12  # DI0 01..0C: the 1st..12th last settlement day (00 current, FF block read)


def _energy_quantities() -> dict[int, Quantity]:
    """Every current and settlement-day energy DI of the types above, totals and tariffs.

    Only current values become readings: a settlement-day register is frozen at a past date the frame
    does not carry, so stamping it with the receive time would be wrong (it stays an event)."""
    q: dict[int, Quantity] = {}

    def add(di2: int, di1: int, name: str, stem: str, unit: str, signed: bool) -> None:
        for di0 in range(MAX_SETTLEMENT + 1):
            prefix = f"（上{di0}结算日）" if di0 else ""
            q[(di2 << 16) | (di1 << 8) | di0] = Quantity(prefix + name, f"{stem}_{unit}" if di0 == 0 else None,
                                                          4, 2, signed)

    for di2, (name, stem, unit, signed) in ENERGY_TYPES.items():
        add(di2, 0, f"{name}总电能", stem, unit, signed)
        for t in range(1, MAX_TARIFF + 1):
            add(di2, t, f"{name}费率{t}电能", f"{stem}_t{t}", unit, signed)
    for phase, base in PHASE_ENERGY_BASE.items():
        for k, di2 in enumerate(range(1, 5)):
            name, stem, unit, signed = ENERGY_TYPES[di2]
            add(base + k, 0, f"{phase}相{name}电能", f"{stem}_{phase.lower()}", unit, signed)
    return q


def _quantities() -> dict[int, Quantity]:
    q = _energy_quantities()  # DI3 = 00: DI2 energy type, DI1 rate (00 total), DI0 settlement period
    q.update({
        # Variables (DI3 = 02).
        0x02030000: Quantity("总有功功率", "power_active_kw", 3, 4, True),
        0x02040000: Quantity("总无功功率", "power_reactive_kvar", 3, 4, True),
        0x02050000: Quantity("总视在功率", "power_apparent_kva", 3, 4, True),
        0x02060000: Quantity("总功率因数", "power_factor", 2, 3, True),
        0x02800002: Quantity("电网频率", "frequency_hz", 2, 2),
    })
    for k, phase in enumerate("ABC", start=1):
        p = phase.lower()
        q[0x02010000 | (k << 8)] = Quantity(f"{phase}相电压", f"voltage_{p}_v", 2, 1)
        q[0x02020000 | (k << 8)] = Quantity(f"{phase}相电流", f"current_{p}_a", 3, 3, True)
        q[0x02030000 | (k << 8)] = Quantity(f"{phase}相有功功率", f"power_active_{p}_kw", 3, 4, True)
        q[0x02060000 | (k << 8)] = Quantity(f"{phase}相功率因数", f"power_factor_{p}", 2, 3, True)
    return q


QUANTITIES: dict[int, Quantity] = _quantities()


@dataclass(frozen=True, slots=True)
class Dlt645Frame:
    """One parsed frame. ``data`` is the DATA field with the 0x33 offset already removed."""

    address: str  # 12 digits as printed on the meter (bytes reversed)
    control: int
    data: bytes
    preamble: int  # number of FE wake-up bytes
    checksum: int

    @property
    def function(self) -> int:
        return self.control & 0x1F

    @property
    def is_reply(self) -> bool:
        return bool(self.control & 0x80)

    @property
    def is_error(self) -> bool:
        return bool(self.control & 0x40)

    @property
    def di(self) -> int | None:
        """Data identifier for read/write data frames (sent DI0 first), else None."""
        if self.function in (0x11, 0x12, 0x14) and len(self.data) >= 4 and not self.is_error:
            return int.from_bytes(self.data[:4], "little")
        return None

    @property
    def payload(self) -> bytes:
        """DATA after the DI (the value of a read reply)."""
        return self.data[4:] if self.di is not None else self.data


def _checksum(body: bytes) -> int:
    return sum(body) & 0xFF


def _bcd_digits(raw: bytes, signed: bool) -> tuple[int, bool]:
    """Little-endian BCD to an integer; with ``signed`` the top bit of the last byte is the sign."""
    negative = False
    if signed and raw and raw[-1] & 0x80:
        negative = True
        raw = raw[:-1] + bytes([raw[-1] & 0x7F])
    value = 0
    for b in reversed(raw):
        hi, lo = b >> 4, b & 0x0F
        if hi > 9 or lo > 9:
            raise CodecError("bad_bcd", raw.hex())
        value = value * 100 + hi * 10 + lo
    return value, negative


def bcd_value(raw: bytes, decimals: int, signed: bool = False) -> float:
    """Value of a DL/T 645 BCD field (low byte first)."""
    digits, negative = _bcd_digits(raw, signed)
    v = digits / 10**decimals
    return -v if negative else v


def _to_bcd(value: float, nbytes: int, decimals: int, signed: bool) -> bytes:
    """Little-endian BCD; with ``signed`` the top bit of the last byte carries the sign, so the magnitude
    must leave it free (e.g. 799999.99 for a 4-byte energy). Unsigned fields refuse negative values."""
    negative = math.copysign(1.0, value) < 0  # -0.0 keeps its sign bit: bytes round-trip exactly
    if negative and not signed and value != 0:
        raise CodecError("value_out_of_range", f"{value} in an unsigned field")
    scaled = round(abs(value) * 10**decimals)
    if scaled >= 10 ** (2 * nbytes):
        raise CodecError("value_out_of_range", f"{value} in {nbytes} bytes")
    out = bytearray()
    for _ in range(nbytes):
        scaled, two = divmod(scaled, 100)
        out.append(((two // 10) << 4) | (two % 10))
    if signed:
        if out[-1] & 0x80:
            raise CodecError("value_out_of_range", f"{value} leaves no sign bit")
        if negative:
            out[-1] |= 0x80
    return bytes(out)


def _address_bytes(address: str) -> bytes:
    if len(address) != 12:
        raise CodecError("bad_address", address)
    try:
        return bytes.fromhex(address)[::-1]
    except ValueError as exc:
        raise CodecError("bad_address", address) from exc


def decode(frame: bytes) -> Dlt645Frame:
    """Parse one frame; raise CodecError on any framing, length or checksum fault."""
    i = 0
    while i < len(frame) and frame[i] == 0xFE:
        i += 1
    body = frame[i:]
    if len(body) < 12:
        raise CodecError("too_short", f"{len(frame)} bytes")
    if body[0] != 0x68 or body[7] != 0x68:
        raise CodecError("bad_start", body[:8].hex())
    length = body[9]
    if len(body) != 12 + length:
        raise CodecError("length_mismatch", f"L={length}, frame has {len(body) - 12} data bytes")
    if body[-1] != 0x16:
        raise CodecError("bad_end", f"{body[-1]:02x}")
    cs = _checksum(body[: 10 + length])
    if cs != body[10 + length]:
        raise CodecError("bad_checksum", f"computed {cs:02x}, frame {body[10 + length]:02x}")
    address = body[1:7][::-1].hex().upper()
    data = bytes((b - 0x33) & 0xFF for b in body[10 : 10 + length])
    return Dlt645Frame(address=address, control=body[8], data=data, preamble=i, checksum=cs)


def encode(address: str, control: int, data: bytes = b"", preamble: int = 4) -> bytes:
    """Build a frame; ``data`` is the plain DATA field (the 0x33 offset is added here)."""
    if len(data) > 255:
        raise CodecError("too_long", f"{len(data)} data bytes")
    body = bytes([0x68]) + _address_bytes(address) + bytes([0x68, control, len(data)])
    body += bytes((b + 0x33) & 0xFF for b in data)
    return b"\xfe" * preamble + body + bytes([_checksum(body), 0x16])


def encode_read(address: str, di: int, preamble: int = 4) -> bytes:
    """Master read request (C = 0x11) for one data identifier."""
    return encode(address, 0x11, di.to_bytes(4, "little"), preamble)


def encode_reply(address: str, di: int, value: float, preamble: int = 4) -> bytes:
    """Meter normal reply (C = 0x91) carrying ``value`` for a known data identifier."""
    q = QUANTITIES.get(di)
    if q is None:
        raise CodecError("unknown_di", f"{di:08X}")
    data = di.to_bytes(4, "little") + _to_bcd(value, q.nbytes, q.decimals, q.signed)
    return encode(address, 0x91, data, preamble)


def value_of(msg: Dlt645Frame) -> tuple[Quantity, float] | None:
    """The quantity and value a normal read reply carries, or None for other frames/unknown DIs."""
    di = msg.di
    if di is None or not msg.is_reply or msg.function != 0x11:
        return None
    q = QUANTITIES.get(di)
    if q is None:
        return None
    raw = msg.payload
    if len(raw) < q.nbytes:
        raise CodecError("length_mismatch", f"DI {di:08X} needs {q.nbytes} bytes, got {len(raw)}")
    return q, bcd_value(raw[: q.nbytes], q.decimals, q.signed)


def to_decoded(msg: Dlt645Frame, ts_ns: int | None = None) -> Decoded:
    """Readings from a read reply, stamped with ``ts_ns``: the frame carries no time of its own, so the
    caller passes the receive (or collector) time; without one a reply is refused (``no_time``).

    Requests, address replies and error replies carry no measurement and give an event instead, so a
    collector's traffic is still visible.
    """
    out = Decoded()
    got = value_of(msg)
    if got is not None and got[0].metric is not None:
        if ts_ns is None:
            raise CodecError("no_time", "DL/T 645 frames carry no time; pass the receive time")
        out.readings.append(Reading(ts_ns=ts_ns, metric=got[0].metric, value=got[1]))
        return out
    event: dict = {"kind": "dlt645", "ts_ns": ts_ns, "address": msg.address, "control": msg.control}
    if msg.function == 0x13 and msg.is_reply and len(msg.data) == 6:
        event["reported_address"] = msg.data[::-1].hex().upper()
    if msg.is_error:
        event["error"] = True
        if msg.data:
            event["error_code"] = msg.data[0]
    if msg.di is not None:
        event["di"] = f"{msg.di:08X}"
    if got is not None:  # a known value not stored as a reading (e.g. a settlement-day register)
        event["di_name"] = got[0].name_zh
        event["value"] = got[1]
    out.events.append(event)
    return out


def decode_payload(stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """The codec entry point (``contract.DecodeFn``): readings stamped ``now_ns`` (no time in the frame)."""
    return to_decoded(decode(payload), now_ns)
