"""HJ 212 gateway: stations (data loggers) connect over TCP and upload packets.

Per packet: the codec validates it (every CRC variant is tried, the one that matched must be
allowed for the device: Appendix A always, the Modbus ones when ``attrs.hj212_crc`` names them), the
MN + PW pair is checked against the device-secret store (kind ``hj212_pw``), and an upload (CN 2xxx) is
published raw to
``wl/{region}/{stream}/{MN}/hj212``. The 9014 data answer goes back only after the broker's PUBACK and
only when Flag bit A asks for one (HJ 212-2017 §6.1 and Appendix C). Packets whose CRC matched a
tolerated Modbus variant are re-stamped with the Appendix A CRC before publishing, so ingest checks
every packet the same way. Refusals are answered with 9011 QnRtn (Table 7: 3 PW error, 4 MN error,
9 CRC error) when the packet names its QN and MN, and always dead-lettered. A removed device
(``wulian device remove``) is refused as an unknown MN and its connection closed.
"""
from __future__ import annotations

import hmac
import re

from wulian.core.const import DEVICE_ID_PATTERN
from wulian.core.kernels.checksums import crc_hj212
from wulian.ingest.codecs import hj212
from wulian.ingest.codecs.errors import CodecError
from wulian.ingest.device_secrets import HJ212_PW
from wulian.ingest.device_store import DeviceSpec
from wulian.ingest.gateways.base import Gateway, Pending, Session

_MN = re.compile(rb"(?:^|[;#0-9])MN=([^;&]*)")
_QN = re.compile(rb"QN=([^;&]*)")
_PW = re.compile(rb"PW=([^;&]*)")
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)
QNRTN_PW_ERROR = 3
QNRTN_MN_ERROR = 4
QNRTN_CRC_ERROR = 9
# Auto-provisioning: the stream of a station follows its system code (HJ 212-2017 Table 5).
ST_STREAMS = {"21": "water", "22": "air", "24": "water", "26": "water"}


def crc_modes(attrs: dict) -> tuple[str, ...]:
    """The CRC variants a device may use: Appendix A always, plus ``attrs.hj212_crc`` (comma list)."""
    extra = attrs.get("hj212_crc") or ""
    modes = ["hj212"] + [m.strip() for m in str(extra).split(",") if m.strip() in hj212.CRC_MODES]
    return tuple(dict.fromkeys(modes))


def restamp(frame: bytes) -> bytes:
    """The same packet with the Appendix A CRC (for packets accepted under a Modbus variant)."""
    data = frame.strip()
    if data.endswith(b"\\r\\n"):
        data = data[:-4]
    segment = data[6:-4]
    return b"%s%04X\r\n" % (data[:-4], crc_hj212(segment))


def _text(m: re.Match | None) -> str | None:
    return m.group(1).decode("latin-1") if m else None


def reject_answer(frame: bytes, qn_rtn: int) -> bytes | None:
    """9011 with ``QnRtn`` built from what can be read of a packet that was not accepted."""
    qn, mn = _text(_QN.search(frame)), _text(_MN.search(frame))
    if not qn or not mn:
        return None
    try:
        return hj212.encode(cn="9011", mn=mn, st="91", pw=_text(_PW.search(frame)) or "", qn=qn, flag=4,
                            cp=f"QnRtn={qn_rtn}")
    except CodecError:
        return None


class Hj212Session(Session):
    async def on_frame(self, frame: bytes) -> bytes | Pending | None:
        gw = self.gateway
        # Every CRC variant is tried here, so that garbage costs no registry lookup; whether the variant
        # that matched is allowed for this device is checked once the device is known.
        try:
            packet = hj212.decode(frame, crc_modes=hj212.CRC_MODES, max_length=gw.limits.max_frame_bytes)
        except CodecError as exc:
            self.dead_letter(exc.reason, exc.detail, frame, _text(_MN.search(frame)))
            gw.frame(exc.reason)
            return reject_answer(frame, QNRTN_CRC_ERROR) if exc.reason == "bad_crc" else None
        if packet.repairs:  # a wrong declared length, framed by && + CRC: tolerated and counted
            gw.repaired(packet.repairs)
        if not packet.mn or not _DEVICE_RE.match(packet.mn):
            self.dead_letter("bad_mn", f"MN={packet.mn!r}", frame)
            gw.frame("bad_mn")
            return None
        if packet.cn.startswith("9"):  # the station answering a command of ours: nothing to store
            gw.frame("answer")
            return None
        device = await gw.registry.get(packet.mn)
        if device is None and gw.config.auto_provision:
            # trust on first use: the PW it sent, and the CRC variant it used
            attrs = {"hj212_crc": packet.crc_mode} if packet.crc_mode != "hj212" else {}
            device = await gw.registry.provision(DeviceSpec(
                packet.mn, gw.config.region, ST_STREAMS.get(packet.st or "", "pollution"), "hj212", attrs=attrs,
                secrets={HJ212_PW: packet.pw or ""}))
        if device is None or device.removed:
            if device is not None:  # its credentials were revoked: hang up
                self.closing = True
            return self._refuse(packet, frame, "unknown_device" if device is None else "removed_device",
                                QNRTN_MN_ERROR)
        if packet.crc_mode not in crc_modes(device.attrs):
            detail = f"CRC matches the {packet.crc_mode} variant, not enabled for this device (attrs.hj212_crc)"
            self.dead_letter("bad_crc", detail, frame, packet.mn)
            gw.frame("bad_crc")
            return hj212.request_answer(packet, QNRTN_CRC_ERROR, crc_mode="hj212")
        want_pw = device.secrets.get(HJ212_PW)
        if want_pw is None or not hmac.compare_digest(want_pw.encode(), (packet.pw or "").encode()):
            return self._refuse(packet, frame, "bad_pw" if want_pw is not None else "no_pw_configured",
                                QNRTN_PW_ERROR)
        self.device_id = packet.mn
        if not packet.cn.startswith("2"):  # requests and notices (1013...): answered, not stored
            gw.frame("control")
            return hj212.answer(packet)
        gw.frame("accepted")
        raw = frame if packet.crc_mode == "hj212" else restamp(frame)
        ack = gw.publish(gw.topic(device.region, device.stream, packet.mn), raw)
        return Pending(ack, hj212.data_answer(packet) if packet.ack_requested else None)

    def _refuse(self, packet: hj212.Hj212Packet, frame: bytes, reason: str, qn_rtn: int) -> bytes | None:
        self.auth_failed(reason)
        self.dead_letter(reason, f"MN={packet.mn}", frame, packet.mn)
        self.gateway.frame(reason)
        return hj212.request_answer(packet, qn_rtn) if packet.ack_requested else None


class Hj212Gateway(Gateway):
    protocol = "hj212"

    def split(self, buffer: bytes) -> tuple[list[bytes], bytes]:
        return hj212.split_packets(buffer, max_length=self.limits.max_frame_bytes)

    def session(self, ip: str) -> Session:
        return Hj212Session(self, ip)
