"""paho's internals as ``ingest.paho_fast`` patches them: the installed paho is one the patches were verified
against and still has what they rely on (this file fails when paho changes underneath), the fast PUBLISH
decoder gives exactly what paho's own decoder gives, and any other paho version runs stock."""
import logging
import random
import socket
import struct
import subprocess
import sys
from importlib.metadata import version

import pytest
from paho.mqtt import _packet
from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.enums import MQTTProtocolVersion

from wulian.ingest import paho_fast


def test_installed_paho_is_verified_and_has_what_the_patches_rely_on():
    assert version("paho-mqtt") in paho_fast.VERIFIED_PAHO
    assert paho_fast.internals_problems() == []
    assert paho_fast.install() is paho_fast.BufferedClient
    assert getattr(_packet.decode_publish, "_wulian_fast", False)


def test_nothing_is_patched_at_import():
    code = ("import wulian.ingest.mqtt_client, wulian.ingest.service; from paho.mqtt import _packet; "
            "print(getattr(_packet.decode_publish, '_wulian_fast', False))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_stock_sock_recv_behaves_as_the_buffer_expects():
    """The buffer calls stock ``_sock_recv``: bytes when there are some (at most ``bufsize``),
    BlockingIOError on a non-blocking socket with nothing to read, b"" once the peer closed."""
    a, b = socket.socketpair()
    a.setblocking(False)
    c = Client(CallbackAPIVersion.VERSION2)
    c._sock = a
    try:
        with pytest.raises(BlockingIOError):
            Client._sock_recv(c, 16)
        b.sendall(b"0123456789")
        assert Client._sock_recv(c, 4) == b"0123"
        b.close()
        assert Client._sock_recv(c, 64) == b"456789" and Client._sock_recv(c, 64) == b""
    finally:
        c._sock = None
        a.close()


def test_buffered_client_serves_paho_reads_from_one_recv():
    a, b = socket.socketpair()
    a.setblocking(False)
    c = paho_fast.BufferedClient(CallbackAPIVersion.VERSION2)
    c._sock = a
    try:
        b.sendall(b"\x30\x05hello")
        assert [c._sock_recv(1), c._sock_recv(1), c._sock_recv(5)] == [b"\x30", b"\x05", b"hello"]
        assert c._rpos == len(c._rbuf) == 7  # all from one recv of the chunk
        with pytest.raises(BlockingIOError):
            c._sock_recv(1)
    finally:
        c._sock = None
        a.close()
        b.close()


def test_ack_batch_sends_the_bytes_paho_acks_would_as_one_write():
    """One queued write holding, in order, exactly the PUBACKs paho's ``ack`` queues one by one."""
    acks = [(1, 1), (300, 1), (65535, 1), (7, 1)]
    ours = paho_fast.BufferedClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    stock = Client(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    ours.ack_batch(acks)
    for mid, qos in acks:
        stock.ack(mid, qos)
    assert len(ours._out_packet) == 1 and len(stock._out_packet) == len(acks)
    assert ours._out_packet[0]["packet"] == b"".join(p["packet"] for p in stock._out_packet)
    # QoS 2 in the batch: paho's own acks (PUBCOMP), one per message, still one wake-up
    mixed = paho_fast.BufferedClient(CallbackAPIVersion.VERSION2, protocol=MQTTProtocolVersion.MQTTv5, manual_ack=True)
    mixed.ack_batch([(1, 1), (2, 2)])
    assert [p["packet"][0] >> 4 for p in mixed._out_packet] == [4, 7]  # PUBACK, PUBCOMP


def test_unverified_paho_runs_stock_and_says_so(caplog):
    with caplog.at_level(logging.WARNING, logger="wulian.ingest.paho_fast"):
        assert paho_fast.install("9.9.9") is paho_fast.StockClient
    assert "paho-mqtt 9.9.9 is not one the fast transport was verified against" in caplog.text
    assert paho_fast.install() is paho_fast.BufferedClient  # the process's own choice is unchanged


def test_fast_publish_decode_matches_paho():
    paho_fast.install()
    fast = _packet.decode_publish
    paho = fast.paho
    rnd = random.Random(7)
    for _ in range(3000):
        topic = rnd.randbytes(rnd.randint(1, 60))
        qos = rnd.choice([0, 1, 2])
        props = rnd.choice([b"\x00", b"\x00", b"\x02\x01\x01"])  # none, or a payload-format indicator
        pkt = struct.pack("!H", len(topic)) + topic + (struct.pack("!H", rnd.randint(1, 65535)) if qos else b"")
        pkt += props + rnd.randbytes(rnd.randint(0, 300))
        header = 0x30 | (qos << 1) | rnd.choice([0, 1]) | rnd.choice([0, 8])
        a = fast(header, bytearray(pkt), MQTTProtocolVersion.MQTTv5)
        b = paho(header, bytearray(pkt), MQTTProtocolVersion.MQTTv5)
        assert (a.dup, a.qos, a.retain, a.topic, a.mid, bytes(a.payload)) == \
            (b.dup, b.qos, b.retain, b.topic, b.mid, bytes(b.payload))


# -- publish order across a reconnect (a one-connection-at-a-time fake broker, the client driven by loop()) --

def _recv_exact(sock: socket.socket, n: int) -> bytes:
    out = b""
    while len(out) < n:
        chunk = sock.recv(n - len(out))
        assert chunk, "the client closed the connection"
        out += chunk
    return out


def _read_packet(sock: socket.socket) -> tuple[int, bytes]:
    """One MQTT control packet: (first header byte, body)."""
    header = _recv_exact(sock, 1)[0]
    length, mult = 0, 1
    while True:
        b = _recv_exact(sock, 1)[0]
        length += (b & 0x7F) * mult
        mult *= 128
        if not b & 0x80:
            return header, _recv_exact(sock, length)


def _published_payloads(sock: socket.socket, n: int) -> list[bytes]:
    """The payloads of the next ``n`` QoS 1 MQTT 5 PUBLISH packets (other packets, e.g. PINGREQ, skipped)."""
    out = []
    while len(out) < n:
        header, body = _read_packet(sock)
        if header & 0xF0 != 0x30:
            continue
        pos = 2 + struct.unpack("!H", body[:2])[0] + 2  # topic, packet id
        assert body[pos] == 0  # no properties
        out.append(body[pos + 1:])
    return out


CONNACK_V5 = bytes([0x20, 0x03, 0x00, 0x00, 0x00])  # session not present, success, no properties


def _pump(c: Client, turns: int = 5) -> None:
    for _ in range(turns):
        c.loop(0.02)


@pytest.mark.parametrize("cls", [paho_fast.OrderedClient, paho_fast.BufferedClient])
def test_messages_published_while_reconnecting_do_not_overtake_the_resent_ones(cls):
    """MQTT 5.0 section 4.6: a client resends in the original order, and topics are ordered. Stock paho
    sent a message published after the new CONNECT (or from on_connect) at once, and the older
    unacknowledged ones only on the CONNACK: the broker got 3, 4, 1, 2 here, and in ``wulian chaos``
    the alarm engine skipped the overtaken readings as late (raises went missing after a broker restart)."""
    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    port = srv.getsockname()[1]
    c = cls(CallbackAPIVersion.VERSION2, client_id="order-check", protocol=MQTTProtocolVersion.MQTTv5)
    conns = []
    try:
        c.connect("127.0.0.1", port, keepalive=60, clean_start=False)
        conn, _ = srv.accept()
        conns.append(conn)
        conn.settimeout(10)
        assert _read_packet(conn)[0] == 0x10  # CONNECT
        conn.sendall(CONNACK_V5)
        _pump(c)
        assert c.is_connected()
        c.publish("order/t", b"1", qos=1)
        _pump(c)
        assert _published_payloads(conn, 1) == [b"1"]  # sent, never acknowledged
        conn.close()  # the broker goes away
        _pump(c)
        assert not c.is_connected()
        c.publish("order/t", b"2", qos=1)  # while disconnected: kept for the resend
        c.reconnect()  # CONNECT is on its way, the CONNACK is not
        conn, _ = srv.accept()
        conns.append(conn)
        conn.settimeout(10)
        assert _read_packet(conn)[0] == 0x10
        c.publish("order/t", b"3", qos=1)  # while CONNECTING
        c.on_connect = lambda *a: c.publish("order/t", b"4", qos=1)  # CONNECTED, resends not yet queued
        conn.sendall(CONNACK_V5)
        _pump(c)
        assert _published_payloads(conn, 4) == [b"1", b"2", b"3", b"4"]
        c.publish("order/t", b"5", qos=1)  # and once they are, straight through as before
        _pump(c)
        assert _published_payloads(conn, 1) == [b"5"]
    finally:
        c.on_connect = None
        c.disconnect()
        for conn in conns:
            conn.close()
        srv.close()
