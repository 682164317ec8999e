"""JT/T 808 (2011, 2013, 2019) frames: escaping, check code, headers, the bodies the backend needs.

Frame: ``7E | header | body | check | 7E``, big-endian; between the flags 0x7E is sent as ``7D 02`` and
0x7D as ``7D 01``; the check is the XOR of the unescaped header and body. The 2019 header (props
bit 14 set) adds a protocol-version byte and widens the BCD phone number from 6 to 10 bytes. Some
2013 terminals set bit 14 anyway: when the 2019 layout does not fit the body length and the 2013
layout does, the frame is read as 2013 (``Jt808Message.edition`` says which was used).

Bodies decoded: 0x0001/0x8001 general answers, 0x0002 heartbeat, 0x0100 register (2011/2013/2019
layouts), 0x8100 register answer, 0x0102 authentication (2013/2019), 0x0200 location with its
additional items, 0x0704 location batch. Others are kept as raw bytes. Sub-packaged and encrypted
bodies are not parsed (``payload`` is None); ``join_packages`` reassembles and decodes the former.

Repairs: a frame whose check code is a bare 0x7D (not escaped as ``7D 01``; some terminals send it, see
``jt-bad-gj-unescaped-7d``) is accepted by default, because nothing is guessed: that 0x7D is the last
byte before the closing flag, so it cannot start an escape pair, and the frame must still pass the XOR
check. It is never silent: ``Jt808Message.repairs`` (and ``Decoded.repairs``) name the repair
(``REPAIR_BARE_7D_CHECK``), ingest and the gateway count it by reason, and ``wulian decode`` prints it,
as the HJ 212 codec names the CRC variant that matched. ``strict_escape=True`` refuses such frames.

``to_decoded``: 0x0200/0x0704 become ``Position`` records (time BCD in China time, UTC+8, to UTC ns;
latitude/longitude signed by status bits 2/3; ``extra`` holds the decoded additional items by name
and unknown ones as hex under ``raw``); 0x0100 and 0x0102 become events (without the auth code).
"""
from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache

from wulian.core.const import Kind, Stream
from wulian.core.kernels.checksums import xor_bytes
from wulian.core.model import Decoded, Position
from wulian.core.timebase import NS_PER_S, china_fields, china_midnight_ns, is_date
from wulian.core.vehicles.jt808_bits import ALARM_BITS
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.errors import CodecError

KIND = Kind.JT808

MAX_FRAME = 2 + 2 * (17 + 4 + 1023 + 1)  # longest legal frame with every byte escaped
REPAIR_BARE_7D_CHECK = "bare_7d_check"  # the check code 0x7D sent as is, not escaped as 7D 01

_HEAD = struct.Struct(">HH")
_HEAD_2013 = struct.Struct(">HH6sH")
_HEAD_2019 = struct.Struct(">HHB10sH")
_PACKAGE = struct.Struct(">HH")
_LOCATION = struct.Struct(">IIIIHHH6s")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")

# Alarm flag word (0x0200 DWORD 0), bit -> name, per edition; the names and clear rules are defined
# once in core.vehicles.jt808_bits (2019 redefines bits 15-17 and frees bit 31).
ALARM_NAMES_2013 = {b.bit: b.name for b in ALARM_BITS if 2013 in b.editions}
ALARM_NAMES_2019 = {b.bit: b.name for b in ALARM_BITS if 2019 in b.editions}

# Status word (0x0200 DWORD 1), bit -> name of the state when the bit is 1. Bits 8-9 are the load.
_STATUS = {
    0: "acc_on", 1: "positioned", 2: "south", 3: "west", 4: "out_of_service", 5: "position_encrypted",
    10: "oil_cut", 11: "circuit_cut", 12: "doors_locked", 13: "door1_open", 14: "door2_open",
    15: "door3_open", 16: "door4_open", 17: "door5_open", 18: "gps", 19: "beidou", 20: "glonass",
    21: "galileo",
}
STATUS_NAMES_2013 = dict(_STATUS)
STATUS_NAMES_2019 = {**_STATUS, 22: "driving"}
_LOAD = {1: "half_load", 2: "load_reserved", 3: "full_load"}
STATUS_SOUTH = 1 << 2
STATUS_WEST = 1 << 3
STATUS_POSITIONED = 1 << 1


def alarm_flags(bits: int, edition: str = "2013") -> list[str]:
    """Names of the alarm bits set; unknown (reserved) bits as ``bitN``."""
    names = ALARM_NAMES_2019 if edition == "2019" else ALARM_NAMES_2013
    return [names.get(i, f"bit{i}") for i in range(32) if bits >> i & 1]


def status_flags(bits: int, edition: str = "2013") -> list[str]:
    """Names of the status bits set (the 1-state of each bit), the load state, reserved bits as ``bitN``."""
    names = STATUS_NAMES_2019 if edition == "2019" else STATUS_NAMES_2013
    out = [names.get(i, f"bit{i}") for i in range(32) if bits >> i & 1 and i not in (8, 9)]
    load = bits >> 8 & 3
    if load:
        out.append(_LOAD[load])
    return out


# --- body records --------------------------------------------------------------------------------

# Location and Jt808Message are built once per frame on the hot path, so like core.model's per-record
# types they are slotted but not frozen (a frozen __init__ costs about 4x); treat them as immutable.


@dataclass(slots=True)
class Location:
    """0x0200 body. Raw units as sent; ``lat``/``lon``/``speed_kmh`` give degrees and km/h.
    ``items``: every additional item (id, value bytes) in order; ``extra`` the decoded ones by name,
    unknown or malformed ones under ``raw`` as hex, and ``tail_error`` when the item list was cut
    short (the basic part is still good)."""

    alarm_bits: int
    status_bits: int
    lat_raw: int
    lon_raw: int
    altitude_m: int
    speed_raw: int  # 1/10 km/h
    heading: int
    ts_ns: int
    items: tuple = ()
    extra: dict = field(default_factory=dict)

    @property
    def time_bcd(self) -> str:
        """The time as sent, BCD YYMMDDhhmmss China time."""
        return _bcd_time(self.ts_ns).hex()

    @property
    def tail_error(self) -> str | None:
        return self.extra.get("tail_error")

    @property
    def lat(self) -> float:
        return -self.lat_raw / 1e6 if self.status_bits & STATUS_SOUTH else self.lat_raw / 1e6

    @property
    def lon(self) -> float:
        return -self.lon_raw / 1e6 if self.status_bits & STATUS_WEST else self.lon_raw / 1e6

    @property
    def speed_kmh(self) -> float:
        return self.speed_raw / 10


@dataclass(frozen=True, slots=True)
class LocationBatch:
    """0x0704 body: ``kind`` 0 normal batch, 1 blind-area back-fill."""

    kind: int
    locations: tuple[Location, ...]


@dataclass(frozen=True, slots=True)
class Register:
    """0x0100 body; ``layout`` 2011/2013/2019 tells the field widths used. Plate colour 0 means the
    plate field holds the VIN (JT/T 415-2006 5.4.12)."""

    province: int
    city: int
    maker: str
    model: str
    terminal_id: str
    plate_color: int
    plate: str
    layout: str


@dataclass(frozen=True, slots=True)
class Auth:
    """0x0102 body; IMEI and software version only in the 2019 layout."""

    code: str
    imei: str = ""
    software_version: str = ""


@dataclass(frozen=True, slots=True)
class GeneralAnswer:
    """0x0001 (terminal) / 0x8001 (platform) general answer. Result: 0 ok, 1 failed, 2 message error,
    3 not supported, 4 alarm confirmed (0x8001 only)."""

    serial: int
    msg_id: int
    result: int


@dataclass(frozen=True, slots=True)
class RegisterAnswer:
    """0x8100: result 0 ok (with auth code), 1 vehicle registered, 2 no such vehicle, 3 terminal
    registered, 4 no such terminal."""

    serial: int
    result: int
    auth_code: str = ""


@dataclass(slots=True)
class Jt808Message:
    """One validated frame. ``edition`` is the header layout used: ``2019`` or ``2013`` (2011 and 2013
    headers are the same); ``version_flag`` is what props bit 14 said. ``body`` is the unescaped body;
    ``payload`` its decoded record, or None for messages not decoded here."""

    msg_id: int
    props: int
    phone: str  # BCD digits as sent, leading zeros kept (12 digits, 20 for 2019)
    serial: int
    edition: str
    body: bytes
    payload: object = None
    protocol_version: int | None = None  # 2019 header only
    total: int | None = None  # sub-package header, when props bit 13 is set
    seq: int | None = None
    repairs: tuple[str, ...] = ()  # what had to be repaired to read the frame (REPAIR_BARE_7D_CHECK)

    @property
    def terminal_phone(self) -> str:
        """The phone number without its zero padding: the same terminal id under 2013 and 2019 headers
        (what the device registry should key on)."""
        return self.phone.lstrip("0") or "0"

    @property
    def body_len(self) -> int:
        """Equal to props bits 0-9 for a frame; a message joined from packages may be longer."""
        return len(self.body)

    @property
    def encryption(self) -> int:
        return self.props >> 10 & 7

    @property
    def subpackage(self) -> bool:
        return bool(self.props >> 13 & 1)

    @property
    def version_flag(self) -> bool:
        return bool(self.props >> 14 & 1)


# --- escaping and check --------------------------------------------------------------------------

def escape(payload: bytes) -> bytes:
    """Frame ``payload`` (header + body + check): escape 0x7D then 0x7E, add the 0x7E flags."""
    return b"\x7e" + payload.replace(b"\x7d", b"\x7d\x01").replace(b"\x7e", b"\x7d\x02") + b"\x7e"


def unescape(inner: bytes, *, strict: bool = True) -> bytes:
    """Reverse ``escape`` on the bytes between the flags. Every 0x7D must start ``7D 01`` or ``7D 02``
    (CodecError ``bad_escape``); with ``strict=False`` a bare 0x7D as the very last byte (the check
    code, as some terminals send it) is taken as 0x7D. ``unescape_repairing`` also says whether it was."""
    return unescape_repairing(inner, strict=strict)[0]


def unescape_repairing(inner: bytes, *, strict: bool = True) -> tuple[bytes, str | None]:
    """``unescape`` and the repair it made: None, or REPAIR_BARE_7D_CHECK (only with ``strict=False``)."""
    if b"\x7e" in inner:
        raise CodecError("bad_escape", "0x7E inside the frame")
    n = inner.count(b"\x7d")
    if not n:
        return inner, None
    # Every 0x7D in a well-escaped frame starts a pair, so pairs never overlap and replace is exact.
    if inner.count(b"\x7d\x01") + inner.count(b"\x7d\x02") != n:
        if not strict and inner[-1] == 0x7D and inner[-2:-1] != b"\x7d":
            head = inner[:-1]
            if head.count(b"\x7d\x01") + head.count(b"\x7d\x02") == n - 1:
                unescaped = head.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d") + b"\x7d"
                return unescaped, REPAIR_BARE_7D_CHECK
        raise CodecError("bad_escape", "0x7D not followed by 01 or 02")
    return inner.replace(b"\x7d\x02", b"\x7e").replace(b"\x7d\x01", b"\x7d"), None


def xor_check(data: bytes) -> int:
    """The JT/T 808 check code of unescaped header + body."""
    return xor_bytes(bytes(data))


# --- decoding ------------------------------------------------------------------------------------

# BCD byte -> its value 0..99, or -1 when a nibble is not a decimal digit.
_BCD = tuple((b >> 4) * 10 + (b & 15) if b >> 4 < 10 and b & 15 < 10 else -1 for b in range(256))


@lru_cache(maxsize=1024)
def _bcd_day_ns(yymmdd: bytes) -> int:
    """UTC ns of 00:00 China time on BCD 20YY-MM-DD; -1 if not a date, -2 if not BCD."""
    yy, m, d = _BCD[yymmdd[0]], _BCD[yymmdd[1]], _BCD[yymmdd[2]]
    if yy < 0 or m < 0 or d < 0:
        return -2
    y = 2000 + yy
    return china_midnight_ns(y, m, d) if is_date(y, m, d) else -1


def bcd_time_ns(bcd: bytes) -> int:
    """UTC ns of a BCD[6] YYMMDDhhmmss China time (CodecError ``bad_bcd``/``bad_time``)."""
    day = _bcd_day_ns(bcd[:3])
    hh, mm, ss = _BCD[bcd[3]], _BCD[bcd[4]], _BCD[bcd[5]]
    if day >= 0 and 0 <= hh <= 23 and 0 <= mm <= 59 and 0 <= ss <= 59:
        return day + ((hh * 60 + mm) * 60 + ss) * NS_PER_S
    if day == -2 or min(hh, mm, ss) < 0:
        raise CodecError("bad_bcd", f"time {bcd.hex()}")
    raise CodecError("bad_time", f"time {bcd.hex()}")


def _signed_magnitude16(value: int) -> int:
    return -(value & 0x7FFF) if value & 0x8000 else value


# Additional items that are one unsigned integer: id -> (name, length, divisor or 0).
_SCALAR_ITEMS = {
    0x01: ("mileage_km", 4, 10),  # 1/10 km
    0x02: ("fuel_l", 2, 10),  # 1/10 L
    0x03: ("tacho_speed_kmh", 2, 10),  # 1/10 km/h
    0x04: ("alarm_event_id", 2, 0),
    0x25: ("signal_bits", 4, 0),  # extended vehicle signals
    0x2A: ("io_bits", 2, 0),
    0x30: ("signal_strength", 1, 0),
    0x31: ("satellites", 1, 0),
}


def _decode_item(item_id: int, value: bytes, extra: dict) -> None:
    """Decode one additional item into ``extra``; anything unknown or of an unexpected length goes to
    ``extra["raw"]`` as hex, keyed ``0xNN``."""
    n = len(value)
    scalar = _SCALAR_ITEMS.get(item_id)
    if scalar is not None and scalar[1] == n:
        number = int.from_bytes(value, "big")
        extra[scalar[0]] = number / scalar[2] if scalar[2] else number
    elif item_id == 0x05 and n == 30:
        extra["tyre_pressure_pa"] = [None if b == 0xFF else b for b in value]
    elif item_id == 0x06 and n == 2:
        extra["carriage_temp_c"] = _signed_magnitude16(_U16.unpack(value)[0])
    elif item_id == 0x11 and n in (1, 5):
        area_id = _U32.unpack_from(value, 1)[0] if n == 5 else None
        extra["overspeed"] = {"area_type": value[0], "area_id": area_id}
    elif item_id == 0x12 and n == 6:
        extra["area_in_out"] = {
            "area_type": value[0], "area_id": _U32.unpack_from(value, 1)[0], "out": value[5]}
    elif item_id == 0x13 and n == 7:
        extra["route_time"] = {
            "segment_id": _U32.unpack_from(value, 0)[0],
            "seconds": _U16.unpack_from(value, 4)[0],
            "too_long": value[6],
        }
    elif item_id == 0x2B and n == 4:
        word = _U32.unpack(value)[0]
        extra["analog"] = {"ad0": word & 0xFFFF, "ad1": word >> 16}
    else:
        raw = extra.get("raw")
        if raw is None:
            raw = extra["raw"] = {}
        raw[f"0x{item_id:02X}"] = value.hex()


def _location(body: bytes) -> Location:
    if len(body) < 28:
        raise CodecError("truncated", f"0x0200 body of {len(body)} bytes, basic part is 28")
    alarm, status, lat, lon, alt, speed, heading, bcd = _LOCATION.unpack_from(body)
    ts = bcd_time_ns(bcd)
    items = []
    extra: dict = {}
    tail_error = None
    i, n = 28, len(body)
    while i < n:
        if i + 2 > n:
            tail_error = f"1 stray byte after the additional items at offset {i}"
            break
        item_id, size = body[i], body[i + 1]
        end = i + 2 + size
        if end > n:
            tail_error = f"item 0x{item_id:02X} declares {size} bytes, {n - i - 2} left"
            break
        value = body[i + 2:end]
        items.append((item_id, value))
        scalar = _SCALAR_ITEMS.get(item_id)
        if scalar is not None and scalar[1] == size:  # inline fast path of _decode_item
            number = int.from_bytes(value, "big")
            extra[scalar[0]] = number / scalar[2] if scalar[2] else number
        else:
            _decode_item(item_id, value, extra)
        i = end
    if tail_error:
        extra["tail_error"] = tail_error
    return Location(alarm, status, lat, lon, alt, speed, heading, ts, tuple(items), extra)


def _batch(body: bytes) -> LocationBatch:
    if len(body) < 3:
        raise CodecError("truncated", "0x0704 body shorter than its 3-byte head")
    count, kind = _U16.unpack_from(body)[0], body[2]
    i, locations = 3, []
    for k in range(count):
        if i + 2 > len(body):
            raise CodecError("truncated", f"0x0704 item {k + 1} of {count} missing")
        size = _U16.unpack_from(body, i)[0]
        if i + 2 + size > len(body):
            raise CodecError("truncated", f"0x0704 item {k + 1} declares {size} bytes")
        locations.append(_location(body[i + 2:i + 2 + size]))
        i += 2 + size
    return LocationBatch(kind, tuple(locations))


def _text(raw: bytes) -> str:
    return raw.strip(b"\x00 ").decode("gbk", errors="replace")


def _register(body: bytes, edition: str) -> Register:
    # Widths (maker, model, terminal id): 2019 11/30/30; 2013 5/20/7; 2011 5/8/7. 2011 and 2013 share
    # the header, so the body length decides (2013 needs at least 37 bytes before the plate).
    if edition == "2019":
        widths, layout = (11, 30, 30), "2019"
    elif len(body) >= 37:
        widths, layout = (5, 20, 7), "2013"
    else:
        widths, layout = (5, 8, 7), "2011"
    fixed = 4 + sum(widths) + 1
    if len(body) < fixed:
        raise CodecError("truncated", f"0x0100 body of {len(body)} bytes, {layout} layout needs {fixed}")
    province, city = _HEAD.unpack_from(body)
    a = 4 + widths[0]
    b = a + widths[1]
    c = b + widths[2]
    return Register(province, city, _text(body[4:a]), _text(body[a:b]), _text(body[b:c]), body[c],
                    _text(body[c + 1:]), layout)


def _auth(body: bytes, edition: str) -> Auth:
    # 2019: length BYTE + code + IMEI[15] + software version[20]. Decided by the body itself, since
    # terminals with the version flag quirk send the 2013 form.
    if body and 1 + body[0] + 35 == len(body):
        n = body[0]
        return Auth(_text(body[1:1 + n]), _text(body[1 + n:16 + n]), _text(body[16 + n:]))
    return Auth(_text(body))


def _payload(msg_id: int, body: bytes, edition: str) -> object:
    if msg_id == 0x0200:
        return _location(body)
    if msg_id == 0x0704:
        return _batch(body)
    if msg_id in (0x0001, 0x8001):
        if len(body) < 5:
            raise CodecError("truncated", f"general answer body of {len(body)} bytes")
        serial, answered = _HEAD.unpack_from(body)
        return GeneralAnswer(serial, answered, body[4])
    if msg_id == 0x0100:
        return _register(body, edition)
    if msg_id == 0x0102:
        return _auth(body, edition)
    if msg_id == 0x8100:
        if len(body) < 3:
            raise CodecError("truncated", f"0x8100 body of {len(body)} bytes")
        return RegisterAnswer(_U16.unpack_from(body)[0], body[2], _text(body[3:]))
    return None


@lru_cache(maxsize=65536)
def _phone(raw: bytes) -> str:
    text = raw.hex()
    if not text.isdigit():
        raise CodecError("bad_bcd", f"phone {text}")
    return text


def decode(frame: bytes, *, strict_escape: bool = False) -> Jt808Message:
    """Validate and parse one frame including its 0x7E flags. Raises CodecError: bad_frame,
    bad_escape, truncated, bad_checksum, length_mismatch, bad_bcd, bad_time. A bare 0x7D check code
    is repaired and named in ``repairs`` (module docstring); ``strict_escape=True`` refuses it."""
    if type(frame) is not bytes:
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            raise CodecError("bad_frame", f"expected bytes, got {type(frame).__name__}")
        frame = bytes(frame)
    if len(frame) < 2 or frame[0] != 0x7E or frame[-1] != 0x7E:
        raise CodecError("bad_frame", "frame must start and end with 0x7E")
    payload = frame[1:-1]
    repair = None
    if b"\x7d" in payload or b"\x7e" in payload:
        payload, repair = unescape_repairing(payload, strict=strict_escape)
    size = len(payload) - 1  # without the check code
    if size < 12:
        raise CodecError("truncated", f"{size} bytes of header and body, header alone is 12")
    if xor_bytes(payload):  # XOR over header, body and check is 0 exactly when the check is right
        raise CodecError("bad_checksum", f"check {payload[-1]:02X}, computed {xor_bytes(payload[:-1]):02X}")
    msg_id, props = _HEAD.unpack_from(payload)
    body_len = props & 0x3FF
    package = 4 if props & 0x2000 else 0
    protocol_version = None
    if props & 0x4000 and 17 + package + body_len == size:
        edition = "2019"
        _, _, protocol_version, phone, serial = _HEAD_2019.unpack_from(payload)
        start = 17
    elif 12 + package + body_len == size:
        # 2011/2013, or a 2013 terminal that sets the 2019 flag (JT808 "version flag" quirk)
        edition = "2013"
        _, _, phone, serial = _HEAD_2013.unpack_from(payload)
        start = 12
    else:
        want = (17 if props & 0x4000 else 12) + package + body_len
        reason = "truncated" if size < want else "length_mismatch"
        raise CodecError(reason, f"props say {want} bytes of header and body, frame has {size}")
    total = seq = None
    if package:
        total, seq = _PACKAGE.unpack_from(payload, start)
        start += 4
    body = payload[start:start + body_len]
    parsed = None
    if not package and not props & 0x1C00:
        parsed = _location(body) if msg_id == 0x0200 else _payload(msg_id, body, edition)
    return Jt808Message(msg_id, props, _phone(phone), serial, edition, body, parsed, protocol_version,
                        total, seq, () if repair is None else (repair,))


def join_packages(parts: Iterable[Jt808Message]) -> Jt808Message:
    """One message from all the packages of a sub-packaged message (props bit 13), in any order:
    bodies joined by sequence number (1..total) and then decoded. The result has the first package's
    serial and no package header. CodecError ``bad_package`` when the packages are not exactly one
    complete set of the same message id from the same terminal."""
    parts = sorted(parts, key=lambda m: m.seq or 0)
    if not parts:
        raise CodecError("bad_package", "no packages")
    first = parts[0]
    for part in parts:
        key = (part.msg_id, part.phone, part.total)
        if part.total is None or key != (first.msg_id, first.phone, first.total):
            raise CodecError("bad_package", f"0x{part.msg_id:04X} package {part.seq}/{part.total} does not belong")
    seqs = [part.seq for part in parts]
    if seqs != list(range(1, (first.total or 0) + 1)):
        raise CodecError("bad_package", f"have packages {seqs} of {first.total}")
    body = b"".join(part.body for part in parts)
    props = (first.props & ~0x23FF) | (len(body) & 0x3FF)
    payload = None if props & 0x1C00 else _payload(first.msg_id, body, first.edition)
    repairs = tuple(dict.fromkeys(r for part in parts for r in part.repairs))
    return Jt808Message(first.msg_id, props, first.phone, first.serial, first.edition, body, payload,
                        first.protocol_version, repairs=repairs)


def split_frames(buffer: bytes, *, max_size: int = MAX_FRAME) -> tuple[list[bytes], bytes]:
    """Cut a TCP byte stream into frames (each with both 0x7E flags); return (frames, rest).

    Bytes outside a frame come out as their own item so that ``decode`` rejects them (bad_frame) and
    the gateway can dead-letter them; ``7E 7E`` between frames is a close and an open. Raises
    CodecError ``too_large`` when the frame at the head of the rest already exceeds ``max_size``.
    """
    out: list[bytes] = []
    pos, n = 0, len(buffer)
    while pos < n:
        start = buffer.find(b"\x7e", pos)
        if start < 0:
            out.append(buffer[pos:])
            return out, b""
        if start > pos:
            out.append(buffer[pos:start])
        end = buffer.find(b"\x7e", start + 1)
        while end == start + 1:  # an empty pair: the second flag opens the frame
            start = end
            end = buffer.find(b"\x7e", start + 1)
        if end < 0:
            if n - start > max_size:
                if out:
                    return out, buffer[start:]
                raise CodecError("too_large", f"{n - start} bytes without a closing 0x7E")
            return out, buffer[start:]
        out.append(buffer[start:end + 1])
        pos = end + 1
    return out, b""


# --- to records ----------------------------------------------------------------------------------

def _position(loc: Location, edition: int) -> Position:
    status = loc.status_bits
    return Position(
        loc.ts_ns,
        -loc.lat_raw / 1e6 if status & STATUS_SOUTH else loc.lat_raw / 1e6,
        -loc.lon_raw / 1e6 if status & STATUS_WEST else loc.lon_raw / 1e6,
        loc.speed_raw / 10,
        float(loc.heading),
        float(loc.altitude_m),
        loc.alarm_bits,
        status,
        loc.extra.get("mileage_km"),
        loc.extra,
        edition,
    )


def to_decoded(msg: Jt808Message) -> Decoded:
    """Positions of 0x0200/0x0704 (each with the frame's edition: its alarm word is read with that
    edition's table); a ``jt808_register`` event for 0x0100 and a ``jt808_auth`` event (IMEI and
    software version, never the code) for 0x0102; nothing for other messages. The frame's ``repairs``
    go along."""
    payload = msg.payload
    if type(payload) is Location:
        return Decoded(positions=[_position(payload, int(msg.edition))], repairs=msg.repairs)
    out = Decoded(repairs=msg.repairs)
    if isinstance(payload, LocationBatch):
        edition = int(msg.edition)
        out.positions.extend(_position(loc, edition) for loc in payload.locations)
        if payload.kind == 1:
            out.events.append(
                {"kind": "jt808_backfill", "serial": msg.serial, "count": len(payload.locations)})
    elif isinstance(payload, Register):
        out.events.append({
            "kind": "jt808_register", "phone": msg.phone, "province": payload.province, "city": payload.city,
            "maker": payload.maker, "model": payload.model, "terminal_id": payload.terminal_id,
            "plate_color": payload.plate_color, "plate": payload.plate, "layout": payload.layout,
        })
    elif isinstance(payload, Auth):
        out.events.append({"kind": "jt808_auth", "phone": msg.phone, "imei": payload.imei,
                           "software_version": payload.software_version})
    return out


def decode_payload(stream: Stream, payload: bytes, now_ns: int, limits: PayloadLimits) -> Decoded:
    """The codec entry point (``contract.DecodeFn``): times from the frame (BCD China time)."""
    return to_decoded(decode(payload))


# --- encoding ------------------------------------------------------------------------------------

def _bcd(digits: str, width: int) -> bytes:
    if not digits.isdigit() or not digits.isascii() or len(digits) > 2 * width:
        raise CodecError("bad_bcd", f"{digits!r} is not up to {2 * width} decimal digits")
    return bytes.fromhex(digits.rjust(2 * width, "0"))


def encode(
    msg_id: int,
    phone: str,
    serial: int,
    body: bytes = b"",
    *,
    edition: str = "2013",
    protocol_version: int = 1,
    package: tuple[int, int] | None = None,
    encryption: int = 0,
) -> bytes:
    """A complete escaped frame. ``edition`` ``2019`` sets the version flag and the 2019 header;
    ``package`` (total, seq) adds the sub-package header."""
    if len(body) > 0x3FF:
        raise CodecError("too_large", f"body of {len(body)} bytes, at most 1023")
    props = len(body) | (encryption & 7) << 10 | (0x2000 if package else 0)
    if edition == "2019":
        head = _HEAD_2019.pack(msg_id, props | 0x4000, protocol_version, _bcd(phone, 10), serial & 0xFFFF)
    else:
        head = _HEAD_2013.pack(msg_id, props, _bcd(phone, 6), serial & 0xFFFF)
    if package:
        head += _PACKAGE.pack(*package)
    payload = head + body
    return escape(payload + bytes((xor_bytes(payload),)))


def _bcd_time(ts_ns: int) -> bytes:
    y, m, d, hh, mm, ss, _ = china_fields(ts_ns)
    if not 2000 <= y <= 2099:
        raise CodecError("bad_time", f"year {y} outside BCD YY")
    return bytes.fromhex(f"{y % 100:02d}{m:02d}{d:02d}{hh:02d}{mm:02d}{ss:02d}")


def item(item_id: int, value: bytes) -> bytes:
    """One additional item: id BYTE, length BYTE, value."""
    if len(value) > 255:
        raise CodecError("too_large", f"additional item of {len(value)} bytes")
    return bytes((item_id, len(value))) + value


def location_body(
    *,
    ts_ns: int,
    lat: float,
    lon: float,
    speed_kmh: float = 0.0,
    heading: float = 0.0,
    altitude_m: float = 0.0,
    alarm_bits: int = 0,
    status_bits: int = STATUS_POSITIONED,
    items: Iterable[tuple[int, bytes]] = (),
) -> bytes:
    """A 0x0200 body (also the element of a 0x0704 batch). South/west set status bits 2/3."""
    status = status_bits & ~(STATUS_SOUTH | STATUS_WEST)
    status |= STATUS_SOUTH if lat < 0 else 0
    status |= STATUS_WEST if lon < 0 else 0
    basic = _LOCATION.pack(
        alarm_bits & 0xFFFFFFFF, status & 0xFFFFFFFF, round(abs(lat) * 1e6), round(abs(lon) * 1e6),
        int(altitude_m) & 0xFFFF, round(speed_kmh * 10) & 0xFFFF, int(heading) % 360, _bcd_time(ts_ns),
    )
    return basic + b"".join(item(i, v) for i, v in items)


def batch_body(locations: Iterable[bytes], kind: int = 0) -> bytes:
    """A 0x0704 body from 0x0200 bodies; ``kind`` 1 for blind-area back-fill."""
    bodies = list(locations)
    return _U16.pack(len(bodies)) + bytes((kind,)) + b"".join(_U16.pack(len(b)) + b for b in bodies)


def _fixed(text: str, width: int) -> bytes:
    raw = text.encode("gbk")
    if len(raw) > width:
        raise CodecError("too_large", f"{text!r} longer than {width} bytes")
    return raw.ljust(width, b"\x00")


def register_body(
    *, province: int, city: int, maker: str, model: str, terminal_id: str, plate_color: int, plate: str,
    layout: str = "2013",
) -> bytes:
    """A 0x0100 body in the 2011, 2013 or 2019 layout."""
    widths = {"2019": (11, 30, 30), "2013": (5, 20, 7), "2011": (5, 8, 7)}[layout]
    return (_HEAD.pack(province, city) + _fixed(maker, widths[0]) + _fixed(model, widths[1])
            + _fixed(terminal_id, widths[2]) + bytes((plate_color,)) + plate.encode("gbk"))


def auth_body(code: str, *, edition: str = "2013", imei: str = "", software_version: str = "") -> bytes:
    """A 0x0102 body: the code alone (2013) or with IMEI and software version (2019)."""
    raw = code.encode("gbk")
    if edition != "2019":
        return raw
    return bytes((len(raw),)) + raw + _fixed(imei, 15) + _fixed(software_version, 20)


def general_answer_body(serial: int, msg_id: int, result: int = 0) -> bytes:
    """Body of 0x0001 (terminal) or 0x8001 (platform) general answers."""
    return struct.pack(">HHB", serial & 0xFFFF, msg_id, result)


def platform_answer(msg: Jt808Message, result: int = 0, *, serial: int) -> bytes:
    """0x8001 frame answering ``msg``, in the terminal's own header layout. ``serial`` is the
    platform's own counter."""
    return encode(0x8001, msg.phone, serial, general_answer_body(msg.serial, msg.msg_id, result),
                  edition=msg.edition, protocol_version=msg.protocol_version or 1)


def register_answer(msg: Jt808Message, result: int = 0, auth_code: str = "", *, serial: int) -> bytes:
    """0x8100 frame answering a 0x0100 registration; the auth code is sent only on success (result 0)."""
    body = _U16.pack(msg.serial) + bytes((result,)) + (auth_code.encode("gbk") if result == 0 else b"")
    return encode(0x8100, msg.phone, serial, body, edition=msg.edition,
                  protocol_version=msg.protocol_version or 1)
