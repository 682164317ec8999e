"""Per-device MQTT credentials and the ACL, against a real Mosquitto with password_file + acl_file."""
import asyncio
import os
import signal
import stat
import threading
import uuid

import pytest
from paho.mqtt.client import CallbackAPIVersion, Client
from paho.mqtt.enums import MQTTProtocolVersion

from wulian.ingest import device_secrets
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams, MqttPublisher
from wulian.ingest.provisioning import (
    DeviceSpec, bootstrap_stack_auth, check_password, hash_password, provision_device, read_password_file,
    remove_credentials, render_acl, set_credentials_many, write_acl,
)
from tests.conftest import wait_until
from tests.services import Broker, free_port
from wulian.settings import Settings


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory):
    """Mosquitto with authentication: service account ``ingest`` and two devices."""
    d = tmp_path_factory.mktemp("secure-mosquitto")
    set_credentials_many(d / "passwd", {"ingest": "svc-pw", "DEV_A": "a-pw", "DEV_B": "b-pw"})
    write_acl(d / "acl")
    b = Broker(d, free_port(), extra_conf=f"allow_anonymous false\npassword_file {d / 'passwd'}\n"
                                          f"acl_file {d / 'acl'}\n")
    b.start()
    yield b
    b.stop()


def _connect_rc(port: int, user: str | None, password: str | None) -> str:
    c = Client(CallbackAPIVersion.VERSION2, client_id=f"probe-{uuid.uuid4().hex[:6]}",
               protocol=MQTTProtocolVersion.MQTTv5)
    if user:
        c.username_pw_set(user, password)
    done, out = threading.Event(), {}

    def on_connect(client, userdata, flags, reason_code, properties):
        out["rc"] = str(reason_code)
        done.set()

    c.on_connect = on_connect
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        done.wait(5)
    finally:
        c.disconnect()
        c.loop_stop()
    return out.get("rc", "no answer")


def _params(broker, user, password):
    return MqttParams("127.0.0.1", broker.port, f"{user}-{uuid.uuid4().hex[:6]}", username=user, password=password)


def test_only_known_accounts_with_their_password_connect(secure_broker):
    assert _connect_rc(secure_broker.port, "DEV_A", "a-pw") == "Success"
    assert _connect_rc(secure_broker.port, "DEV_A", "b-pw") == "Not authorized"
    assert _connect_rc(secure_broker.port, None, None) == "Not authorized"
    assert _connect_rc(secure_broker.port, "nobody", "x") == "Not authorized"


async def test_device_publishes_only_under_its_own_topic(secure_broker):
    watcher = MqttConsumer(_params(secure_broker, "ingest", "svc-pw"), ["wl/#"])
    watcher._client._manual_ack = False
    await watcher.start()
    try:
        with MqttPublisher(_params(secure_broker, "DEV_A", "a-pw")) as pub:
            pub.publish("wl/city/pollution/DEV_B/telemetry", b"forged")  # another device's topic
            pub.publish("wl/city/alerts/pollution/DEV_A", b"forged alert")  # not a device topic
            pub.publish("wl/city/pollution/DEV_A/telemetry", b"mine")
            assert pub.wait_acked(10)
            # MQTT 5: Mosquitto answers a publish the ACL denies with PUBACK "not authorized"
            assert (pub.acked, pub.refused) == (1, 2)
        await wait_until(lambda: watcher.received >= 1)
        await asyncio.sleep(0.3)  # nothing to await: the forged messages must not arrive
        batch = await watcher.get_batch(10, 0.0)
        assert [(m.topic, m.payload) for m in batch] == [("wl/city/pollution/DEV_A/telemetry", b"mine")]
    finally:
        watcher.stop()


async def test_publish_async_resolves_false_when_the_acl_refuses(secure_broker):
    pub = MqttPublisher(_params(secure_broker, "DEV_B", "b-pw"))
    await asyncio.to_thread(pub.connect)
    try:
        ok = pub.publish_async("wl/city/vehicle/DEV_B/jt808", b"\x7e\x7e")
        denied = pub.publish_async("wl/city/vehicle/DEV_A/jt808", b"\x7e\x7e")
        assert await asyncio.wait_for(ok, 10) is True
        assert await asyncio.wait_for(denied, 10) is False
        assert pub.pending == 0
    finally:
        pub.close()


async def test_provisioned_device_can_connect_after_reload(secure_broker, pool):
    dev = f"P{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as con:
        p = await provision_device(con, DeviceSpec(dev, "city", "pollution", "hj212"),
                                   password_file=secure_broker.dir / "passwd")
        row = await con.fetchrow("SELECT region, stream, attrs->>'mqtt_user' AS u, attrs::text AS attrs "
                                 "FROM devices WHERE device_id = $1", dev)
        pw = (await device_secrets.get(con, dev))[device_secrets.HJ212_PW]
    assert (row["region"], row["stream"], row["u"]) == ("city", "pollution", dev)
    assert len(pw) == 6 and pw.isdigit() and pw == p.secrets[device_secrets.HJ212_PW]
    assert device_secrets.HJ212_PW not in row["attrs"]
    assert len(p.mqtt_password) >= 20
    assert _connect_rc(secure_broker.port, dev, p.mqtt_password) == "Not authorized"  # not reloaded yet
    secure_broker.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        if _connect_rc(secure_broker.port, dev, p.mqtt_password) == "Success":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("provisioned device could not connect after SIGHUP")
    assert remove_credentials(secure_broker.dir / "passwd", dev)
    secure_broker.proc.send_signal(signal.SIGHUP)
    await asyncio.sleep(0.3)  # nothing to await: mosquitto gives no sign of a finished reload
    assert _connect_rc(secure_broker.port, dev, p.mqtt_password) == "Not authorized"


def test_password_hash_is_mosquitto_format():
    h = hash_password("s3cret", salt=b"0123456789ab")
    assert h.startswith("$7$101$") and check_password("s3cret", h) and not check_password("other", h)


def test_acl_gives_devices_their_own_topics_only():
    acl = render_acl("wl", ["ingest", "gateway"])
    assert "user ingest\ntopic readwrite #" in acl and "user gateway\ntopic readwrite #" in acl
    patterns = [line for line in acl.splitlines() if line.startswith("pattern")]
    assert patterns and all(p.startswith("pattern write wl/+/") and p.endswith("/%u/+") for p in patterns)
    assert not any("alerts" in p or "read" in p.split()[1] for p in patterns)


def test_stack_bootstrap_writes_secrets_once_and_settings_read_them(tmp_path):
    secrets_file = tmp_path / "secrets.env"
    first = bootstrap_stack_auth(tmp_path, secrets_file)
    assert set(first) == {"ingest", "api", "simulator", "gateway"}
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "passwd").st_mode) == 0o600
    set_credentials_many(tmp_path / "passwd", {"DEV_X": "x"})  # a device added in between is kept
    again = bootstrap_stack_auth(tmp_path, secrets_file)
    assert again == first
    entries = read_password_file(tmp_path / "passwd")
    assert set(entries) == {"ingest", "api", "simulator", "gateway", "DEV_X"}
    assert check_password(first["gateway"], entries["gateway"])
    s = Settings(_env_file=secrets_file)
    assert (s.mqtt.username, s.mqtt.password) == ("ingest", first["ingest"])
    assert (s.gateway.mqtt_username, s.gateway.mqtt_password) == ("gateway", first["gateway"])


async def test_device_add_command_provisions_registry_and_broker(tmp_path, test_dsn):
    import argparse

    from wulian.cli.commands.device import _add
    from wulian.settings import DbSettings, MqttSettings, StackSettings

    # mqtt given: no dynamic-security administrator from a secrets.env, so the password file is used
    s = Settings(db=DbSettings(dsn=test_dsn), stack=StackSettings(dir=tmp_path), mqtt=MqttSettings())
    dev = f"HJ{uuid.uuid4().hex[:8]}"
    args = argparse.Namespace(device_id=dev, region="city", stream="pollution", type="hj212", name="outlet 1",
                              mqtt_password=None, hj212_pw="246810", hj212_crc="modbus", password_file=None,
                              no_broker=False)
    out = await _add(args, s)
    assert out["hj212_pw"] == "246810" and out["topic"] == f"wl/city/pollution/{dev}/+"
    entries = read_password_file(tmp_path / "mosquitto" / "passwd")
    assert check_password(out["mqtt_password"], entries[dev])


def test_local_stack_broker_requires_the_generated_service_accounts(pg_stack):
    """deploy/local/stack.sh (run by the session's pg_stack fixture) starts Mosquitto with auth on, through
    the dynamic-security plugin (tests/test_broker_dynsec.py provisions devices on it)."""
    secrets_file = pg_stack.stack.dir / "secrets.env"
    assert stat.S_IMODE(os.stat(secrets_file).st_mode) == 0o600
    s = Settings(_env_file=secrets_file, stack=pg_stack.stack)
    port = pg_stack.stack.mqtt_port
    assert _connect_rc(port, None, None) == "Not authorized"
    assert _connect_rc(port, s.mqtt.username, s.mqtt.password) == "Success"
    assert _connect_rc(port, s.gateway.mqtt_username, s.gateway.mqtt_password) == "Success"
    conf = (pg_stack.stack.dir / "mosquitto" / "mosquitto.conf").read_text()
    assert conf.rstrip().endswith(
        f"plugin_opt_config_file {pg_stack.stack.dir / 'mosquitto' / 'dynamic-security.json'}")
    assert conf.split("allow_anonymous")[-1].split()[0] == "false"


async def test_device_remove_revokes_every_credential_and_disconnects_the_mqtt_client(secure_broker, pool,
                                                                                      test_dsn):
    """`wulian device remove`: the MQTT account, the HJ 212 PW and the JT/T 808 auth code all go, and a
    client still connected with the removed account is disconnected by the broker's reload."""
    import argparse

    from wulian.cli.commands.device import _remove
    from wulian.settings import DbSettings, StackSettings

    dev = f"R{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as con:
        p = await provision_device(con, DeviceSpec(dev, "city", "pollution", "hj212"),
                                   password_file=secure_broker.dir / "passwd")
        await device_secrets.put(con, dev, {device_secrets.JT808_AUTH: "code-7"})
    secure_broker.proc.send_signal(signal.SIGHUP)
    for _ in range(50):
        if _connect_rc(secure_broker.port, dev, p.mqtt_password) == "Success":
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("provisioned device could not connect after SIGHUP")
    c = Client(CallbackAPIVersion.VERSION2, client_id=f"{dev}-live", protocol=MQTTProtocolVersion.MQTTv5)
    c.username_pw_set(dev, p.mqtt_password)
    up, down = threading.Event(), threading.Event()
    c.on_connect = lambda *a: up.set()
    c.on_disconnect = lambda *a: down.set()
    c.reconnect_delay_set(60, 60)  # no reconnection attempt within the test
    c.connect("127.0.0.1", secure_broker.port)
    c.loop_start()
    try:
        assert await asyncio.to_thread(up.wait, 10)
        s = Settings(db=DbSettings(dsn=test_dsn), stack=StackSettings(dir=secure_broker.dir / "stack"))
        pid_file = s.stack.dir / "mosquitto" / "mosquitto.pid"  # where `wulian device` finds the broker
        pid_file.parent.mkdir(parents=True)
        pid_file.write_text(str(secure_broker.proc.pid))
        out = await _remove(argparse.Namespace(device_id=dev, password_file=str(secure_broker.dir / "passwd"),
                                               no_broker=False), s)
        assert out == {"device_id": dev, "removed": True, "secrets_revoked": ["hj212_pw", "jt808_auth"],
                       "credentials_removed": True}
        assert dev not in read_password_file(secure_broker.dir / "passwd")
        assert await asyncio.to_thread(down.wait, 10)  # the broker's reload drops the revoked account
    finally:
        c.disconnect()
        c.loop_stop()
    assert _connect_rc(secure_broker.port, dev, p.mqtt_password) == "Not authorized"
    async with pool.acquire() as con:
        assert await device_secrets.get(con, dev) == {}
        assert await con.fetchval("SELECT removed_at IS NOT NULL FROM devices WHERE device_id = $1", dev)
