"""paho-mqtt's private internals, patched for speed, all in this module and nowhere else.

What is patched (measured together about 2x on receive, README: benchmarks):
- ``Client._sock_recv`` / ``loop_read`` / ``_sock_close`` (``BufferedClient``): paho reads each packet with
  two or more ``recv()`` calls and goes back to ``select()`` after each; the socket is read in 256 KiB
  chunks and paho's reads are served from that buffer, drained before returning to ``select()``;
- ``Client._sockpairW`` / ``_packet_queue`` (``BufferedClient.ack_batch``): a batch of PUBACKs is one
  queued write (one wake-up of the network thread, one ``send()``) instead of one of each per ack;
- ``paho.mqtt._packet.decode_publish`` (:func:`install`): an MQTT 5 PUBLISH without properties skips
  building a ``Properties`` object (about a sixth of ingest's CPU at 15,000 msg/s, py-spy);
- ``Client._handle_publish`` (``BufferedClient``, when ``on_message_raw`` is set and no per-filter
  callback is): a QoS 0/1 PUBLISH goes to ``on_message_raw(mid, qos, topic bytes, payload)`` without an
  ``MQTTMessage``, a debug-log format, a topic-filter walk and two topic decodes per message (the network
  thread's share of ingest's CPU, py-spy, issue 14). QoS 2 and everything else stay paho's.

And one correctness fix (``OrderedClient.publish``): stock paho sends a QoS 1/2 message published
while it reconnects (CONNECT sent, CONNACK not yet handled) at once, ahead of the older unacknowledged
messages it resends only on the CONNACK, so the broker receives a device's messages out of order
(MQTT 5.0 section 4.6: resends keep the original order; topics are ordered). The alarm engine ignores a
reading older than one already accepted, so each overtaken reading was stored but never evaluated:
whole raises and clears went missing after a broker restart (``wulian chaos``, restart_broker).

They rely on private names and behaviour, so they are applied only to the paho versions they were
verified against (``VERIFIED_PAHO``) and only when those internals are still there
(:func:`internals_problems`); otherwise ingest runs stock paho (``StockClient``), logged once.
Nothing happens at import: ``mqtt_client`` calls :func:`install` when it builds a client.
``tests/test_mqtt_transport.py`` fails when the installed paho no longer matches.
"""
from __future__ import annotations

import inspect
import logging
import struct
import threading
from importlib.metadata import version as _dist_version

from paho.mqtt import _packet
from paho.mqtt.client import MQTT_LOG_ERR, CallbackAPIVersion, Client
from paho.mqtt.enums import MessageState, MQTTErrorCode, MQTTProtocolVersion, _ConnectionState
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

log = logging.getLogger(__name__)

VERIFIED_PAHO = frozenset({"2.2.0"})  # paho-mqtt versions whose internals these patches were checked against
READ_CHUNK = 256 * 1024
_PUBACK = struct.Struct("!BBH").pack  # fixed header, remaining length 2, packet identifier


class StockClient(Client):
    """Stock paho plus the one method the consumer needs: acknowledge a batch. ``on_message_raw`` is
    used by ``BufferedClient`` only (stock paho calls ``on_message``)."""

    on_message_raw = None  # (mid, qos, topic: bytes, payload: bytes) -> None

    def ack_batch(self, acks: list[tuple[int, int]]) -> None:
        for mid, qos in acks:
            self.ack(mid, qos)


class OrderedClient(StockClient):
    """Stock paho, except that a QoS 1/2 message never overtakes an older one still waiting to be
    (re)sent: MQTT 5.0 section 4.6 [MQTT-4.6.0-1] (resends in the original order) and ordered topics.

    paho resends what was unacknowledged only when it handles the CONNACK, and marks those messages
    ``MQTT_MS_PUBLISH`` until then; a message published meanwhile (while CONNECTING, or once CONNECTED but
    before that resend loop ran) went to the socket at once. Such a message is now kept back the way paho
    keeps back one published while disconnected (``_send_publish`` answers NO_CONN: state
    ``MQTT_MS_PUBLISH``, ``rc`` NO_CONN), and the CONNACK's resend loop sends it after the older ones."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._held_by: int | None = None  # thread whose publish() is being kept back

    def _ready_to_send(self) -> bool:
        """Connected, and the newest queued message is not itself waiting to be (re)sent (messages are
        queued in publish order, ``_out_messages`` keeps that order). Caller holds ``_out_message_mutex``."""
        if self._state != _ConnectionState.MQTT_CS_CONNECTED:
            return False
        if not self._out_messages:
            return True
        return next(reversed(self._out_messages.values())).state != MessageState.MQTT_MS_PUBLISH

    def publish(self, topic, payload=None, qos=0, retain=False, properties=None):
        if qos == 0:
            return super().publish(topic, payload, qos, retain, properties)
        with self._out_message_mutex:  # an RLock: paho's publish() takes it again
            if self._ready_to_send():
                return super().publish(topic, payload, qos, retain, properties)
            self._held_by = threading.get_ident()
            try:
                return super().publish(topic, payload, qos, retain, properties)
            finally:
                self._held_by = None

    def _send_publish(self, *args, **kwargs) -> MQTTErrorCode:
        if self._held_by == threading.get_ident():  # only the held publish(): resends go through
            return MQTTErrorCode.MQTT_ERR_NO_CONN
        return super()._send_publish(*args, **kwargs)


class BufferedClient(OrderedClient):
    """paho reads every packet with two or more ``recv()`` calls (1 byte for the command, 1 per length
    byte, then the body) and goes back to ``select()`` after each packet. Reading the socket in large
    chunks and handing paho its bytes from the buffer, and draining the buffer before returning to
    ``select()``, cuts the system calls per message from ~4 to ~0.01 (measured: see README, benchmarks).
    Only the transport changes; packet parsing and acknowledgement stay paho's."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._rbuf = b""
        self._rpos = 0

    def _sock_recv(self, bufsize: int) -> bytes:
        if self._rpos >= len(self._rbuf):
            data = super()._sock_recv(READ_CHUNK)  # raises BlockingIOError when nothing is there
            if not data:
                return data  # connection closed
            self._rbuf, self._rpos = data, 0
        pos = self._rpos
        out = self._rbuf[pos:pos + bufsize]
        self._rpos = pos + len(out)
        return out

    def loop_read(self, max_packets: int = 1) -> MQTTErrorCode:
        rc = super().loop_read(max_packets)
        # select() cannot see bytes already in our buffer: process them all before going back to it
        while rc == MQTTErrorCode.MQTT_ERR_SUCCESS and self._sock is not None and self._rpos < len(self._rbuf):
            rc = super().loop_read(1)
        return rc

    def _sock_close(self) -> None:
        self._rbuf, self._rpos = b"", 0
        super()._sock_close()

    def _handle_publish(self) -> MQTTErrorCode:
        raw = self.on_message_raw
        header = self._in_packet["command"]
        if raw is None or header & 0x06 == 0x04 or self._on_message_filtered._root._children:
            return super()._handle_publish()  # QoS 2, or per-filter callbacks: paho's own path
        p = _packet.decode_publish(header, self._in_packet["packet"], self._protocol)
        with self._in_callback_mutex:
            try:
                raw(p.mid, p.qos, p.topic, p.payload)
            except Exception as err:  # as paho treats an exception in on_message
                self._easy_log(MQTT_LOG_ERR, "Caught exception in on_message: %s", err)
                if not self.suppress_exceptions:
                    raise
        if p.qos == 1 and not self._manual_ack:
            return self._send_puback(p.mid)
        return MQTTErrorCode.MQTT_ERR_SUCCESS

    def ack_batch(self, acks: list[tuple[int, int]]) -> None:
        """PUBACK many messages as one queued write: one wake-up of the network thread and one ``send()``
        instead of one of each per ack (thousands per batch), and no per-ack packet dict and debug log.

        Each PUBACK is the 4-byte form paho's ``_send_command_with_mid`` builds (MQTT 5.0 3.4.2.1: reason
        code and properties omitted for Success), concatenated in the order given, which is arrival
        order (MQTT 5.0 4.6). Anything but QoS 1 under manual ack goes through paho's ``ack`` one by one."""
        if not acks:
            return
        if not self._manual_ack or any(qos != 1 for _, qos in acks):
            wake = self._sockpairW
            self._sockpairW = None  # queued without a wake-up each; one wake-up below
            try:
                for mid, qos in acks:
                    self.ack(mid, qos)
            finally:
                self._sockpairW = wake
            if wake is not None:
                try:
                    wake.send(b"0")
                except BlockingIOError:
                    pass
            return
        packet = b"".join([_PUBACK(PacketTypes.PUBACK << 4, 2, mid) for mid, _ in acks])
        self._packet_queue(PacketTypes.PUBACK << 4, packet, acks[-1][0], 1)


def _params(fn) -> list[str]:
    return list(inspect.signature(fn).parameters)


def internals_problems() -> list[str]:
    """What the patches rely on that the installed paho lacks or changed (empty: all as verified)."""
    want = {
        "Client._sock_recv": (getattr(Client, "_sock_recv", None), ["self", "bufsize"]),
        "Client._sock_close": (getattr(Client, "_sock_close", None), ["self"]),
        "Client.loop_read": (getattr(Client, "loop_read", None), ["self", "max_packets"]),
        "Client.ack": (getattr(Client, "ack", None), ["self", "mid", "qos"]),
        "Client.publish": (getattr(Client, "publish", None), ["self", "topic", "payload", "qos", "retain",
                                                              "properties"]),
        "Client._send_publish": (getattr(Client, "_send_publish", None),
                                 ["self", "mid", "topic", "payload", "qos", "retain", "dup", "info", "properties"]),
        "_packet.decode_publish": (getattr(_packet, "decode_publish", None), ["header", "packet", "protocol"]),
        "Client._packet_queue": (getattr(Client, "_packet_queue", None),
                                 ["self", "command", "packet", "mid", "qos", "info"]),
        "_packet.PublishPacket": (getattr(_packet, "PublishPacket", None),
                                  ["dup", "qos", "retain", "topic", "mid", "properties", "payload"]),
    }
    problems = [f"{name}: missing" if fn is None else f"{name}{_params(fn)} != {params}"
                for name, (fn, params) in want.items() if fn is None or _params(fn) != params]
    if "_sock_recv(self._in_packet['to_process'])" not in inspect.getsource(Client._packet_read):
        problems.append("Client._packet_read no longer reads through _sock_recv")
    handle_src = inspect.getsource(Client._handle_publish)
    if "_packet.decode_publish(" not in handle_src:
        problems.append("Client._handle_publish no longer calls _packet.decode_publish")
    for needle in ('self._in_packet["command"]', 'self._in_packet["packet"]', "self._manual_ack",
                   "self._send_puback(message.mid)"):
        if needle not in handle_src:
            problems.append(f"Client._handle_publish no longer uses {needle}")
    if "struct.pack('!BBH', command, remaining_length, mid)" not in inspect.getsource(Client._send_command_with_mid):
        problems.append("Client._send_command_with_mid no longer builds the 4-byte PUBACK")
    if "self._send_puback(mid)" not in inspect.getsource(Client.ack):
        problems.append("Client.ack no longer sends a PUBACK for QoS 1")
    if "self._on_message_filtered.iter_match(" not in inspect.getsource(Client._handle_on_message):
        problems.append("Client._handle_on_message no longer matches _on_message_filtered")
    # OrderedClient: a publish whose _send_publish says NO_CONN is kept as MQTT_MS_PUBLISH, and the
    # CONNACK resends the MQTT_MS_PUBLISH messages in order
    pub_src, connack_src = inspect.getsource(Client.publish), inspect.getsource(Client._handle_connack)
    if "MQTT_ERR_NO_CONN" not in pub_src or "mqtt_ms_publish" not in pub_src:
        problems.append("Client.publish no longer keeps a NO_CONN message as mqtt_ms_publish")
    if "m.state == mqtt_ms_publish" not in connack_src:
        problems.append("Client._handle_connack no longer resends mqtt_ms_publish messages")
    client = vars(Client(CallbackAPIVersion.VERSION2, client_id="wulian-paho-check"))
    for attr in ("_sock", "_sockpairW", "_state", "_out_messages", "_out_message_mutex", "_in_packet",
                 "_in_callback_mutex", "_manual_ack", "_on_message_filtered"):
        if attr not in client:
            problems.append(f"Client().{attr}: missing")
    if not isinstance(client.get("_out_message_mutex"), type(threading.RLock())):
        problems.append("Client()._out_message_mutex is not an RLock")
    root = getattr(client.get("_on_message_filtered"), "_root", None)
    if not isinstance(getattr(root, "_children", None), dict):
        problems.append("Client()._on_message_filtered._root._children: missing")
    return problems


_chosen: type[StockClient] | None = None


def install(paho_version: str | None = None) -> type[StockClient]:
    """Apply the patches if the installed paho is one they were verified against, once per process;
    the client class to build (``BufferedClient``, or ``StockClient`` with a warning logged once)."""
    global _chosen
    if _chosen is not None and paho_version is None:
        return _chosen
    v = paho_version or _dist_version("paho-mqtt")
    problems = [] if v not in VERIFIED_PAHO else internals_problems()
    if v not in VERIFIED_PAHO or problems:
        log.warning("paho-mqtt %s is not one the fast transport was verified against (%s)%s: using stock paho",
                    v, ", ".join(sorted(VERIFIED_PAHO)), f"; {'; '.join(problems)}" if problems else "")
        chosen: type[StockClient] = StockClient
    else:
        _install_fast_publish_decode()
        chosen = BufferedClient
    if paho_version is None:
        _chosen = chosen
    return chosen


def _install_fast_publish_decode() -> None:
    """Skip building a paho ``Properties`` object for MQTT 5 PUBLISH packets that carry none.

    paho constructs one per received message (two dicts of ~30 entries, then ``clear()``): about a sixth
    of ingest's CPU at 15,000 msg/s (py-spy). Packets with a zero property length get a shared empty
    instance (paho only reads it to log); anything else goes through paho's own decoder unchanged."""
    if getattr(_packet.decode_publish, "_wulian_fast", False):
        return
    original = _packet.decode_publish
    empty = Properties(PacketTypes.PUBLISH)

    def decode_publish(header: int, packet, protocol):
        if protocol == MQTTProtocolVersion.MQTTv5 and len(packet) >= 2:
            qos = (header & 0x06) >> 1
            slen = (packet[0] << 8) | packet[1]
            pos = 2 + slen + (2 if qos else 0)
            if slen and len(packet) > pos and packet[pos] == 0:  # property length 0
                mid = ((packet[pos - 2] << 8) | packet[pos - 1]) if qos else 0
                return _packet.PublishPacket(dup=bool(header & 0x08), qos=qos, retain=bool(header & 0x01),
                                             topic=bytes(packet[2:2 + slen]), mid=mid, properties=empty,
                                             payload=bytes(packet[pos + 1:]))
        return original(header, packet, protocol)

    decode_publish._wulian_fast = True
    decode_publish.paho = original  # benchmarks and tests compare stock paho with it
    _packet.decode_publish = decode_publish
