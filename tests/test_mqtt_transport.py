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
