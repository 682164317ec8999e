"""Device accounts on the NATS front door (ingest/nats_accounts.py) against real nats-server nodes: the
project's 3-node cluster launcher with MQTT listeners, authorization always on. A provisioned device
publishes QoS 1 under its own id and is PUBACKed; under another device's id nothing is stored; a wrong
password, no account, and a removed device (after the reload) are refused; a device id with a '.' is
refused at provisioning with one line, before the registry row."""
from __future__ import annotations

import asyncio
import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import asyncpg
import nats
import pytest
from nats.js.api import AckPolicy, ConsumerConfig
from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.enums import MQTTProtocolVersion

from tests.cli import run_command
from tests.conftest import ROOT, fresh_database, wait_until
from wulian.ingest import jetstream as j
from wulian.ingest import nats_accounts as na
from wulian.ingest import nats_cluster
from wulian.ingest.nats_front_door import MQTT_STREAM, mqtt_hello
from wulian.ingest.provisioning import DeviceSpec, provision_device, remove_device

REGION = "shantou"


@pytest.fixture(scope="module")
async def door():
    cdir = ROOT / ".stack" / f"test-nats-accounts-{os.getpid()}"
    state = nats_cluster.up(cdir, mqtt=True)
    try:
        nc = await j.connect(state.urls, "test-accounts")  # as the service account
        try:
            await j.ensure_stream(nc, 4, 3)  # waits for JetStream's meta leader, which MQTT needs
        finally:
            await nc.close()
        await asyncio.to_thread(mqtt_hello, "127.0.0.1", state.nodes[0].mqtt_port, 10.0, *state.mqtt_account)
        yield state
    finally:
        nats_cluster.down(cdir)
        shutil.rmtree(cdir, ignore_errors=True)


def _accounts(state) -> na.NatsAccounts:
    cdir = Path(state.dir)
    return na.NatsAccounts(cdir, "wl", reload=lambda: nats_cluster.reload(cdir))


class Device:
    """An MQTT 3.1.1 client (all NATS MQTT takes) that records its CONNACK, PUBACKs and disconnects."""

    def __init__(self, port: int, user: str | None, password: str | None) -> None:
        self.c = Client(CallbackAPIVersion.VERSION2, client_id=f"dev-{uuid.uuid4().hex[:8]}",
                        protocol=MQTTProtocolVersion.MQTTv311)
        self.c.reconnect_delay_set(30, 30)  # a closed connection stays closed for the test
        if user is not None:
            self.c.username_pw_set(user, password)
        self.connack, self.connected, self.disconnected = None, threading.Event(), threading.Event()
        self.acked: set[int] = set()
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_: self.disconnected.set()
        self.c.on_publish = lambda client, userdata, mid, rc, props: self.acked.add(mid)
        self.c.connect("127.0.0.1", port)
        self.c.loop_start()
        self.connected.wait(10)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = str(reason_code)
        self.connected.set()

    def publish(self, topic: str, doc: dict) -> bool:
        """True once PUBACKed."""
        info = self.c.publish(topic, json.dumps(doc).encode(), qos=1)
        info.wait_for_publish(10)
        return info.is_published()

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()


def _connack(port: int, user: str | None, password: str | None) -> str | None:
    d = Device(port, user, password)
    d.close()
    return d.connack


async def _stored_subjects(state, consumer: str) -> list[str]:
    """What reached ``$MQTT_msgs`` for our topics since ``consumer`` was created."""
    nc = await j.connect(state.urls, "test-accounts")
    try:
        sub = await nc.jetstream().pull_subscribe_bind(consumer, stream=MQTT_STREAM)
        out = []
        while True:
            try:
                msgs = await sub.fetch(100, timeout=1.0)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):  # nothing more
                return out
            for m in msgs:
                out.append(m.subject)
                await m.ack()
    finally:
        await nc.close()


async def _watch(state) -> str:
    name = f"watch_{uuid.uuid4().hex[:6]}"
    nc = await j.connect(state.urls, "test-accounts")
    try:
        await nc.jetstream().add_consumer(MQTT_STREAM, ConsumerConfig(
            durable_name=name, filter_subject="$MQTT.msgs.wl.>", ack_policy=AckPolicy.EXPLICIT))
    finally:
        await nc.close()
    return name


def test_device_subjects_are_mosquittos_acl_patterns():
    from wulian.core.const import Stream

    assert na.device_subjects("D1") == [f"wl.*.{s.value}.D1.*" for s in Stream]
    assert "wl.*.pollution.D1.*" in na.device_subjects("D1")
    assert na.topic_to_subject("wl/+/x/#") == "wl.*.x.>"
    for service in (na.SERVICE_USER, na.SIMULATOR_USER):  # a device must not shadow a service account
        with pytest.raises(ValueError, match="service account"):
            na.check_device_id(service)


async def test_device_publishes_only_under_its_own_id_and_is_removed(pg_stack, door):
    port = door.nodes[0].mqtt_port
    accounts = _accounts(door)
    tag = uuid.uuid4().hex[:6]
    dev, other = f"NA{tag}", f"NB{tag}"
    async with fresh_database(pg_stack, "wulian_nats_accounts") as dsn:
        con = await asyncpg.connect(dsn)
        try:
            watch = await _watch(door)  # before the provisioning: a reload makes the JetStream API miss a beat
            p = await provision_device(con, DeviceSpec(dev, REGION, "pollution", "telemetry"), password_file=None,
                                       accounts=accounts)
            await provision_device(con, DeviceSpec(other, REGION, "pollution", "telemetry"), password_file=None,
                                   accounts=accounts)
            await wait_until(lambda: _connack(port, dev, p.mqtt_password) == "Success", timeout=20)  # reloaded
            d = Device(port, dev, p.mqtt_password)
            try:
                own = f"wl/{REGION}/pollution/{dev}/telemetry"
                assert d.publish(own, {"values": {"SO2": 1.0}})  # PUBACKed
                # MQTT 3.1.1 has no negative PUBACK: the node acknowledges, logs a Publish Violation, stores nothing
                d.publish(f"wl/{REGION}/pollution/{other}/telemetry", {"values": {"SO2": 2.0}})
                d.publish(f"wl/{REGION}/alerts/{dev}/x", {"values": {"SO2": 3.0}})
                assert d.publish(own, {"values": {"SO2": 4.0}})
            finally:
                d.close()
            subjects = await _stored_subjects(door, watch)
            assert subjects == [f"$MQTT.msgs.wl.{REGION}.pollution.{dev}.telemetry"] * 2

            # the same device with a wrong password, and no account at all: CONNACK "not authorized"
            for user, pw in ((dev, p.mqtt_password + "x"), (None, None), ("nobody", "pw")):
                assert _connack(port, user, pw) == "Not authorized", user
            # nor as a NATS client: a device account takes MQTT connections only
            for auth in ({"user": dev, "password": p.mqtt_password}, {}):
                with pytest.raises(nats.errors.Error):
                    await nats.connect(f"nats://127.0.0.1:{door.nodes[0].port}", allow_reconnect=False,
                                       connect_timeout=5, **auth)

            # removed: a live connection is closed by the reload, and a new one refused
            live = Device(port, dev, p.mqtt_password)
            assert live.connack == "Success"
            try:
                r = await remove_device(con, dev, accounts=accounts)
                assert r.mqtt and r.registry
                await wait_until(live.disconnected.is_set, timeout=20)
            finally:
                live.close()
            assert _connack(port, dev, p.mqtt_password) == "Not authorized"
            assert dev not in (Path(door.dir) / na.INCLUDE_FILE).read_text()
            assert not accounts.remove(dev)  # idempotent: no account left
        finally:
            await con.close()


async def test_a_dotted_device_id_is_refused_at_provisioning_with_one_line(pg_stack, door, tmp_path, monkeypatch,
                                                                           capsys):
    from wulian.cli.commands import device

    async with fresh_database(pg_stack, "wulian_nats_dots") as dsn:
        con = await asyncpg.connect(dsn)
        try:
            with pytest.raises(ValueError, match="nats-server 2.9 refuses MQTT topics containing '.'"):
                await provision_device(con, DeviceSpec("ND.1", REGION, "pollution", "telemetry"),
                                       password_file=None, accounts=_accounts(door))
            assert await con.fetchval("SELECT count(*) FROM devices WHERE device_id = 'ND.1'") == 0
        finally:
            await con.close()

        # `wulian device add` where the cluster's front door is nats: one line, exit 2, nothing written
        stack = tmp_path / "stack"
        na.ensure_store(stack / "nats")
        monkeypatch.setenv("WULIAN_STACK__DIR", str(stack))
        monkeypatch.setenv("WULIAN_DB__DSN", dsn)
        monkeypatch.setenv("WULIAN_CLUSTER__FRONT_DOOR", "nats")
        add = ["device", "add", "--password-file", str(tmp_path / "passwd")]
        rc = await asyncio.to_thread(run_command, device, add + ["ND.2"])
        out = capsys.readouterr().out.strip()
        assert rc == 2 and len(out.splitlines()) == 1
        assert "nats-server 2.9 refuses MQTT topics containing '.'" in json.loads(out)["error"]
        assert not (tmp_path / "passwd").exists()
        # the same id is fine for Mosquitto alone (city mode's broker takes '.')
        monkeypatch.setenv("WULIAN_CLUSTER__FRONT_DOOR", "mosquitto")
        assert await asyncio.to_thread(run_command, device, add + ["ND.2"]) == 0
        assert "ND.2" in (tmp_path / "passwd").read_text()
        capsys.readouterr()
        # and a plain id goes to both brokers
        monkeypatch.setenv("WULIAN_CLUSTER__FRONT_DOOR", "nats")
        assert await asyncio.to_thread(run_command, device, add + ["ND3"]) == 0
        assert "ND3" in (tmp_path / "passwd").read_text()
        assert "ND3" in na.load_store(stack / "nats")["devices"]

        # nodes on other hosts: `wulian cluster accounts --out` renders their include file, hashes only
        from wulian.cli.commands import cluster

        out_file = tmp_path / "node-host" / "accounts.conf"
        assert await asyncio.to_thread(run_command, cluster, ["cluster", "accounts", "--out", str(out_file)]) == 0
        text = out_file.read_text()
        assert '"wl.*.pollution.ND3.*"' in text and "ND.2" not in text
        store = na.load_store(stack / "nats")
        assert all(a["password"] not in text for a in store["service"].values())
        assert store["devices"]["ND3"]["hash"] in text


def test_device_of_a_registry_stream_gets_its_subject_under_its_own_id():
    built_in = na.device_subjects("g1")
    own = na.device_subjects("g1", "wl", "greenhouse")
    assert own == built_in + ["wl.*.greenhouse.g1.*"]
    assert na.device_subjects("g1", "wl", "pollution") == built_in  # a built-in stream adds nothing
