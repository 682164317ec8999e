"""The fast PUBLISH decoder gives exactly what paho's own decoder gives."""
import random
import struct

from paho.mqtt import _packet
from paho.mqtt.enums import MQTTProtocolVersion

import wulian.ingest.mqtt_client  # noqa: F401  (installs the fast decoder)


def _paho_decoder():
    fast = _packet.decode_publish
    assert getattr(fast, "_wulian_fast", False)
    return next(c.cell_contents for c in fast.__closure__
                if callable(c.cell_contents) and c.cell_contents.__name__ == "decode_publish")


def test_fast_publish_decode_matches_paho():
    fast, paho = _packet.decode_publish, _paho_decoder()
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
