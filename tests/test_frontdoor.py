"""The MQTT front door under kill -9 with a queue (``wulian chaos --broker-kill``): nats-server's MQTT
listener keeps every QoS 1 message it PUBACKed; Mosquitto (autosave every 30 s, the deployed setting)
loses what arrived since its last save. The second assertion pins the window docs/cluster.md
describes: should a Mosquitto version persist before the PUBACK, it fails and the docs must change."""
import shutil

import pytest

from wulian.ingest.chaos.frontdoor import MosquittoDoor, NatsMqttDoor, measure


@pytest.fixture
def door_dir(tmp_path):
    yield tmp_path
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_nats_mqtt_keeps_what_it_acknowledged_through_kill9(door_dir):
    r = measure(NatsMqttDoor(door_dir), messages=2000)
    assert r["published"] == 2000 and r["kept"] == 2000 and r["lost"] == 0, r


def test_mosquitto_loses_what_arrived_since_its_last_autosave(door_dir):
    r = measure(MosquittoDoor(door_dir, autosave="autosave_interval 30"), messages=2000)
    assert r["published"] == 2000 and r["lost"] > 0, r


def test_nats_subjects_map_back_to_mqtt_topics():
    from wulian.ingest.nats_front_door import topic_of

    assert topic_of("$MQTT.msgs.wl.shantou.air.dev-1.telemetry") == "wl/shantou/air/dev-1/telemetry"


def _session(port: int, topic: str | None, got: list) -> "Client":
    """An MQTT 5 consumer resuming its persistent session (subscribing only when ``topic`` is given)."""
    import threading

    from paho.mqtt.client import CallbackAPIVersion, Client
    from paho.mqtt.enums import MQTTProtocolVersion
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    c = Client(CallbackAPIVersion.VERSION2, client_id="share-router", protocol=MQTTProtocolVersion.MQTTv5)
    done = threading.Event()
    c.on_message = lambda cl, u, m: got.append(m.payload)
    c.on_connect = lambda cl, u, f, rc, p: done.set()
    c.on_subscribe = lambda *a: done.set()
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    c.connect("127.0.0.1", port, 30, clean_start=False, properties=props)
    c.loop_start()
    assert done.wait(10)
    if topic:
        done.clear()
        c.subscribe(topic, qos=1)
        assert done.wait(10)
    return c


def test_mosquitto_forgets_shared_subscriptions_over_a_restart(door_dir):
    """A session's ``$share`` subscription is gone after a restart (a plain one is kept): what devices
    publish before the routers re-subscribe is dropped. Why cluster mode's front door is NATS."""
    import time

    from paho.mqtt.client import CallbackAPIVersion, Client

    kept = {}
    for topic in ("$share/g/t/#", "t/#"):
        door = MosquittoDoor(door_dir / topic.replace("/", "_").replace("$", "").replace("#", "all"))
        door.dir.mkdir()
        door.start()
        try:
            c = _session(door.port, topic, [])
            c.disconnect()
            c.loop_stop()
            door.stop()  # a clean shutdown: Mosquitto saves every session
            door.start()
            dev = Client(CallbackAPIVersion.VERSION2, client_id="share-device")
            dev.connect("127.0.0.1", door.port)
            dev.loop_start()
            for i in range(20):
                dev.publish("t/x", str(i), qos=1).wait_for_publish(10)
            dev.disconnect()
            dev.loop_stop()
            got: list = []
            c = _session(door.port, None, got)  # resumed, not re-subscribed
            time.sleep(2)
            c.disconnect()
            c.loop_stop()
            kept[topic] = len(got)
        finally:
            door.stop()
    assert kept == {"$share/g/t/#": 0, "t/#": 20}


def _matches(filt: str, subject: str) -> bool:
    """NATS subject matching: ``*`` one token, ``>`` one or more trailing tokens."""
    f, s = filt.split("."), subject.split(".")
    for i, tok in enumerate(f):
        if tok == ">":
            return len(s) > i
        if i >= len(s) or (tok != "*" and tok != s[i]):
            return False
    return len(f) == len(s)


def test_nats_lanes_are_disjoint_and_keep_a_device_in_one_lane():
    """Every device topic of a stream with a lane matches exactly that lane's filter (overlapping lanes
    lose messages on nats-server 2.9.10's interest stream), and alert events match none."""
    from wulian.ingest.nats_front_door import MQTT_SUBJECT_PREFIX, builtin_lanes, lane

    lanes = builtin_lanes("wl") + [lane("wl", "custom_env")]
    streams = [ln.name for ln in lanes]
    assert len({ln.durable for ln in lanes}) == len(lanes)
    for stream in streams:
        for kind in ("telemetry", "hj212"):
            subject = f"{MQTT_SUBJECT_PREFIX}wl.shantou.{stream}.dev-1.{kind}"
            assert [ln.name for ln in lanes if _matches(ln.filter, subject)] == [stream]
    alert = f"{MQTT_SUBJECT_PREFIX}wl.shantou.alerts.grid.dev-1"
    assert not [ln for ln in lanes if _matches(ln.filter, alert)]
    other = f"{MQTT_SUBJECT_PREFIX}other.shantou.grid.dev-1.telemetry"
    assert not [ln for ln in lanes if _matches(ln.filter, other)]
