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
