"""JT/T 808 gateway: vehicle terminals connect over TCP, register, authenticate, report.

Identity is the terminal's phone number without its zero padding (the same device under 2013 and 2019
headers). 0x0100 registration of a terminal the registry knows (or any, with auto-provisioning) gets
0x8100 with a fresh auth code, stored in the device-secret store (kind ``jt808_auth``) before the answer
goes out, together with the edition the registration body was laid out in (``devices.protocol_edition``);
0x0102 must present that code before any 0x0200/0x0704 on the connection is accepted (until then they are
answered 0x8001 "failed" and dead-lettered). Every report and heartbeat of an authenticated connection is
checked again against the registry (a cache hit: the cache is invalidated by NOTIFY): once the device is
removed or its code replaced, it is refused and the connection closed. Frames the codec reads only after
a repair (a bare 0x7D check code) are accepted and counted (``wulian_gateway_frames_repaired_total``). An
accepted location frame is published raw to ``wl/{region}/{stream}/{phone}/jt808`` and answered 0x8001
"ok" only after the broker's PUBACK.
Sub-packaged location batches are collected and republished as whole 0x0704 frames (each fitting the
1023-byte body limit) so that ingest decodes every position; each package is answered once all are in.
Registration, authentication (either result, for a known device) and logout never reach MQTT: they are
recorded as ``device_events`` through the dead-letter sink, with the gateway's answer as their code.
"""
from __future__ import annotations

import asyncio
import hmac
import secrets
import struct

from wulian.ingest.codecs import jt808
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.device_secrets import JT808_AUTH
from wulian.ingest.device_store import DeviceSpec
from wulian.ingest.gateways.base import Gateway, Pending, Session

RESULT_OK, RESULT_FAILED, RESULT_MSG_ERROR, RESULT_NOT_SUPPORTED = 0, 1, 2, 3
REGISTER_NO_TERMINAL = 4  # 0x8100 result: terminal not in the database
LOCATION_IDS = frozenset({0x0200, 0x0704})
MAX_PACKAGES = 64  # a sub-packaged message larger than this is refused (bounded memory per connection)
_U16 = struct.Struct(">H")


def new_auth_code() -> str:
    return secrets.token_hex(8)


def batch_frames(msg: jt808.Jt808Message, serial: int) -> list[bytes]:
    """A joined 0x0704 message as whole 0x0704 frames of at most 1023 body bytes each."""
    body = msg.body
    if len(body) < 3:
        raise CodecError("truncated", "0x0704 body shorter than its header")
    kind = body[2]
    items, pos = [], 3
    while pos + 2 <= len(body):
        (n,) = _U16.unpack_from(body, pos)
        items.append(body[pos + 2:pos + 2 + n])
        pos += 2 + n
    frames, chunk, size = [], [], 3
    for it in items:
        if chunk and size + 2 + len(it) > 1023:
            frames.append(jt808.encode(0x0704, msg.phone, serial, jt808.batch_body(chunk, kind),
                                       edition=msg.edition, protocol_version=msg.protocol_version or 1))
            chunk, size = [], 3
        chunk.append(it)
        size += 2 + len(it)
    if chunk:
        frames.append(jt808.encode(0x0704, msg.phone, serial, jt808.batch_body(chunk, kind),
                                   edition=msg.edition, protocol_version=msg.protocol_version or 1))
    return frames


class Jt808Session(Session):
    def __init__(self, gateway: "Jt808Gateway", ip: str) -> None:
        super().__init__(gateway, ip)
        self.authenticated = False
        self.device = None  # the registry record, once authenticated
        self.auth_code: str | None = None  # the code this connection authenticated with
        self.serial = 0
        self._packages: dict[tuple[int, int], dict[int, jt808.Jt808Message]] = {}

    def next_serial(self) -> int:
        self.serial = (self.serial + 1) & 0xFFFF
        return self.serial

    def answer(self, msg: jt808.Jt808Message, result: int) -> bytes:
        return jt808.platform_answer(msg, result, serial=self.next_serial())

    async def on_frame(self, frame: bytes) -> bytes | Pending | None:
        gw = self.gateway
        try:
            msg = jt808.decode(frame)
        except CodecError as exc:
            self.dead_letter(exc.reason, exc.detail, frame)
            gw.frame(exc.reason)
            return None
        if msg.repairs:  # a bare 0x7D check code: tolerated, counted, published as the terminal sent it
            gw.repaired(msg.repairs)
        mid = msg.msg_id
        if mid in LOCATION_IDS:
            return await self._location(msg, frame)
        if mid == 0x0002:  # heartbeat
            if self.authenticated and not await self._still_admitted(msg, frame):
                return self.answer(msg, RESULT_FAILED)
            gw.frame("heartbeat")
            return self.answer(msg, RESULT_OK if self.authenticated else RESULT_FAILED)
        if mid == 0x0100:
            return await self._register(msg, frame)
        if mid == 0x0102:
            return await self._auth(msg, frame)
        if mid == 0x0001:  # the terminal answering us
            gw.frame("answer")
            return None
        if mid == 0x0003:  # logout
            gw.frame("control")
            if self.device is not None:
                self._event(msg, frame, "jt808_logout", "ok")
            self.closing = True
            return self.answer(msg, RESULT_OK)
        gw.frame("unsupported")
        return self.answer(msg, RESULT_NOT_SUPPORTED)

    async def _register(self, msg: jt808.Jt808Message, frame: bytes) -> bytes:
        gw = self.gateway
        phone = msg.terminal_phone
        device = await gw.registry.get(phone)
        if device is None and gw.config.auto_provision:
            device = await gw.registry.provision(DeviceSpec(phone, gw.config.region, "vehicle", "jt808"))
        if device is None or device.removed:
            reason = "unknown_device" if device is None else "removed_device"
            if device is not None:  # removed: its credentials were revoked, hang up
                self.closing = True
            self.auth_failed(reason)
            self.dead_letter(reason, f"0x0100 from {phone}", frame, phone)
            gw.frame(reason)
            return jt808.register_answer(msg, REGISTER_NO_TERMINAL, serial=self.next_serial())
        code = new_auth_code()
        patch = {}
        reg = msg.payload
        edition = int(msg.edition)  # header only: 2011 and 2013 look the same
        if isinstance(reg, jt808.Register):
            patch["jt808_terminal"] = {"maker": reg.maker, "model": reg.model, "terminal_id": reg.terminal_id,
                                       "plate": reg.plate, "plate_color": reg.plate_color,
                                       "province": reg.province, "city": reg.city}
            edition = int(reg.layout)  # the body's field widths tell 2011, 2013 and 2019 apart
        await gw.registry.update(phone, attrs=patch, secrets={JT808_AUTH: code}, protocol_edition=edition)
        self._event(msg, frame, "jt808_register", "ok")
        gw.frame("register")
        return jt808.register_answer(msg, 0, code, serial=self.next_serial())

    async def _auth(self, msg: jt808.Jt808Message, frame: bytes) -> bytes:
        gw = self.gateway
        phone = msg.terminal_phone
        device = await gw.registry.get(phone)
        want = device.secrets.get(JT808_AUTH) if device is not None and not device.removed else None
        got = msg.payload.code if isinstance(msg.payload, jt808.Auth) else ""
        if want is None or not hmac.compare_digest(want.encode(), got.encode("utf-8", "replace")):
            reason = ("unknown_device" if device is None else "removed_device" if device.removed
                      else "bad_auth_code")
            if reason == "removed_device":
                self.closing = True
            if device is not None:
                self._event(msg, frame, "jt808_auth", reason)
            self.auth_failed(reason)
            self.dead_letter(reason, f"0x0102 from {phone}", frame, phone)
            gw.frame(reason)
            self.authenticated = False
            return self.answer(msg, RESULT_FAILED)
        self.authenticated = True
        self.device_id = phone
        self.device = device
        self.auth_code = want
        self._event(msg, frame, "jt808_auth", "ok")
        gw.frame("auth")
        return self.answer(msg, RESULT_OK)

    def _event(self, msg: jt808.Jt808Message, frame: bytes, kind: str, result: str) -> None:
        """A device event for a message the gateway answers itself: the codec's event (never the auth
        code) with the gateway's answer as ``result``."""
        events = jt808.to_decoded(msg).events or [{"kind": kind, "phone": msg.phone}]
        self.gateway.device_events(self.ip, msg.terminal_phone, [{**ev, "result": result} for ev in events],
                                   frame)

    async def _still_admitted(self, msg: jt808.Jt808Message, frame: bytes) -> bool:
        """The authenticated device is still registered with the code this connection presented (a
        cache hit unless its credentials changed); if not, the connection loses its authentication
        and is closed after this frame's answer."""
        device = await self.gateway.registry.get(self.device_id)
        if device is not None and not device.removed and device.secrets.get(JT808_AUTH) == self.auth_code:
            self.device = device
            return True
        reason = "removed_device" if device is None or device.removed else "auth_code_revoked"
        self.authenticated, self.device, self.auth_code, self.closing = False, None, None, True
        self.dead_letter(reason, f"0x{msg.msg_id:04X} from {msg.terminal_phone}", frame)
        self.gateway.frame(reason)
        return False

    async def _location(self, msg: jt808.Jt808Message, frame: bytes) -> bytes | Pending | None:
        gw = self.gateway
        phone = msg.terminal_phone
        if not self.authenticated or phone != self.device_id:
            reason = "not_authenticated" if not self.authenticated else "phone_mismatch"
            self.dead_letter(reason, f"0x{msg.msg_id:04X} from {phone}", frame, phone)
            gw.frame(reason)
            return self.answer(msg, RESULT_FAILED)
        if not await self._still_admitted(msg, frame):
            return self.answer(msg, RESULT_FAILED)
        device = self.device
        topic = gw.topic(device.region, device.stream, phone)
        if msg.subpackage:
            return self._package(msg, frame, topic)
        gw.frame("accepted")
        return Pending(gw.publish(topic, frame), self.answer(msg, RESULT_OK), self.answer(msg, RESULT_FAILED))

    def _package(self, msg: jt808.Jt808Message, frame: bytes, topic: str) -> bytes | Pending | None:
        gw = self.gateway
        total = msg.total or 0
        if not 1 <= total <= MAX_PACKAGES or not 1 <= (msg.seq or 0) <= total:
            self.dead_letter("bad_package", f"package {msg.seq}/{total}", frame)
            gw.frame("bad_package")
            return self.answer(msg, RESULT_MSG_ERROR)
        # Packages of one message carry consecutive serials: the first package's is the key.
        key = (msg.msg_id, (msg.serial - msg.seq + 1) & 0xFFFF)
        parts = self._packages.setdefault(key, {})
        parts[msg.seq] = msg
        if len(parts) < total:
            gw.frame("package")
            return None
        del self._packages[key]
        try:
            joined = jt808.join_packages(parts.values())
            frames = batch_frames(joined, joined.serial) if joined.msg_id == 0x0704 else [
                jt808.encode(0x0200, joined.phone, joined.serial, joined.body, edition=joined.edition,
                             protocol_version=joined.protocol_version or 1)]
        except CodecError as exc:
            self.dead_letter(exc.reason, exc.detail, frame)
            gw.frame(exc.reason)
            return self.answer(msg, RESULT_MSG_ERROR)
        gw.frame("accepted")
        acks = [gw.publish(topic, f) for f in frames]
        ack = acks[0] if len(acks) == 1 else _all_true(acks)
        answers = b"".join(self.answer(p, RESULT_OK) for p in sorted(parts.values(), key=lambda p: p.seq))
        return Pending(ack, answers, self.answer(msg, RESULT_FAILED))


def _all_true(futures: list) -> asyncio.Future:
    async def both() -> bool:
        return all(await asyncio.gather(*futures))

    return asyncio.ensure_future(both())


class Jt808Gateway(Gateway):
    protocol = "jt808"

    def split(self, buffer: bytes) -> tuple[list[bytes], bytes]:
        return jt808.split_frames(buffer, max_size=self.limits.max_frame_bytes)

    def session(self, ip: str) -> Session:
        return Jt808Session(self, ip)
