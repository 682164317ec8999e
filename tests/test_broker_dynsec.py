"""Device accounts over Mosquitto's dynamic-security control topic (a real broker with the real plugin),
and the local stack's broker: dynamic security loaded, never started without authentication."""
import argparse
import asyncio
import os
import stat
import subprocess
import uuid

import pytest

from wulian.local_stack import STACK_SCRIPT, stack_env
from wulian.ingest.broker_accounts import (
    ADMIN_PASSWORD_KEY, ADMIN_USER, CONTROL_TOPIC, DYNSEC_FILE, DYNSEC_PLUGIN, BrokerError,
    DynSecAccounts, bootstrap_local_dynsec, device_role, write_dynsec_config,
)
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams, MqttPublisher
from wulian.ingest.provisioning import ACL_FILE, DeviceSpec, allow_stream_in_acl, provision_device, write_acl
from wulian.settings import DbSettings, MqttSettings, Settings, StackSettings
from tests.conftest import wait_until
from tests.services import Broker, free_port, port_open
from tests.test_broker_security import _connect_rc


@pytest.fixture(scope="module")
def dynsec_broker(tmp_path_factory):
    """Mosquitto with the dynamic-security plugin: administrator + the ``ingest`` service account."""
    d = tmp_path_factory.mktemp("dynsec-mosquitto")
    write_dynsec_config(d / DYNSEC_FILE, {"ingest": "svc-pw"}, "admin-pw")
    b = Broker(d, free_port(), extra_conf=f"allow_anonymous false\nplugin {DYNSEC_PLUGIN}\n"
                                          f"plugin_opt_config_file {d / DYNSEC_FILE}\n")
    b.start()
    yield b
    b.stop()


def _admin(broker, password="admin-pw") -> DynSecAccounts:
    return DynSecAccounts("127.0.0.1", broker.port, ADMIN_USER, password)


def _params(broker, user, password):
    return MqttParams("127.0.0.1", broker.port, f"{user}-{uuid.uuid4().hex[:6]}", username=user, password=password)


async def test_device_added_over_the_control_topic_publishes_only_inside_its_topic_until_removed(
        dynsec_broker, pool):
    dev, other = f"D{uuid.uuid4().hex[:8]}", f"D{uuid.uuid4().hex[:8]}"
    accounts = _admin(dynsec_broker)
    assert _connect_rc(dynsec_broker.port, dev, "x") == "Not authorized"  # unknown before
    async with pool.acquire() as con:
        p = await provision_device(con, DeviceSpec(dev, "city", "pollution", "telemetry"), password_file=None,
                                   accounts=accounts)
    watcher = MqttConsumer(_params(dynsec_broker, "ingest", "svc-pw"), ["wl/#"])
    watcher._client._manual_ack = False
    await watcher.start()
    try:
        # effective at once: no reload, no file on this host
        with MqttPublisher(_params(dynsec_broker, dev, p.mqtt_password)) as pub:
            pub.publish(f"wl/city/pollution/{dev}/telemetry", b"mine")
            pub.publish(f"wl/city/pollution/{other}/telemetry", b"forged")  # another device's topic
            pub.publish(f"wl/city/alerts/pollution/{dev}", b"forged alert")  # not a device topic
            pub.publish(CONTROL_TOPIC, b'{"commands":[{"command":"listClients"}]}')  # not the control topic
            assert pub.wait_acked(10)
            assert (pub.acked, pub.refused) == (1, 3)  # MQTT 5 PUBACK 0x87 for the three refused
        await wait_until(lambda: watcher.received >= 1)
        await asyncio.sleep(0.3)  # nothing to await: the refused messages must not arrive
        batch = await watcher.get_batch(10, 0.0)
        assert [(m.topic, m.payload) for m in batch] == [(f"wl/city/pollution/{dev}/telemetry", b"mine")]
    finally:
        watcher.stop()
    assert accounts.remove(dev) is True
    assert _connect_rc(dynsec_broker.port, dev, p.mqtt_password) == "Not authorized"
    assert accounts.remove(dev) is False  # idempotent: nothing left to remove


def test_device_of_a_registry_stream_may_publish_there_under_its_own_id_only(dynsec_broker):
    """A custom stream's device gets its stream's pattern; others do not, and ids stay its own."""
    dev, plain = f"G{uuid.uuid4().hex[:8]}", f"P{uuid.uuid4().hex[:8]}"
    accounts = _admin(dynsec_broker)
    accounts.set_password(dev, "g-pw", stream="greenhouse")
    accounts.set_password(plain, "p-pw")
    try:
        with MqttPublisher(_params(dynsec_broker, dev, "g-pw")) as pub:
            pub.publish(f"wl/city/greenhouse/{dev}/telemetry", b"mine")
            pub.publish(f"wl/city/pollution/{dev}/telemetry", b"built-in stream, own id")
            pub.publish(f"wl/city/greenhouse/{plain}/telemetry", b"forged")
            assert pub.wait_acked(10)
            assert (pub.acked, pub.refused) == (2, 1)
        with MqttPublisher(_params(dynsec_broker, plain, "p-pw")) as pub:
            pub.publish(f"wl/city/greenhouse/{plain}/telemetry", b"not its stream")
            assert pub.wait_acked(10)
            assert (pub.acked, pub.refused) == (0, 1)
    finally:
        accounts.remove(dev)
        accounts.remove(plain)


def test_registry_stream_pattern_added_once_to_a_password_file_acl(tmp_path):
    acl = tmp_path / ACL_FILE
    write_acl(acl)
    before = acl.read_text()
    assert allow_stream_in_acl(acl, "pollution") is False  # built-in: already there
    assert allow_stream_in_acl(acl, "greenhouse") is True
    assert allow_stream_in_acl(acl, "greenhouse") is False
    assert acl.read_text() == before + "pattern write wl/+/greenhouse/%u/+\n"
    assert allow_stream_in_acl(tmp_path / "missing", "greenhouse") is False


def test_reprovisioning_sets_a_new_password(dynsec_broker):
    dev = f"R{uuid.uuid4().hex[:8]}"
    accounts = _admin(dynsec_broker)
    accounts.set_password(dev, "first-pw")
    accounts.set_password(dev, "second-pw")
    assert _connect_rc(dynsec_broker.port, dev, "first-pw") == "Not authorized"
    assert _connect_rc(dynsec_broker.port, dev, "second-pw") == "Success"
    (answer,) = accounts.command([{"command": "getClient", "username": dev}])
    assert [r["rolename"] for r in answer["data"]["client"]["roles"]] == [device_role(dev)]
    accounts.remove(dev)
    (answer,) = accounts.command([{"command": "getRole", "rolename": device_role(dev)}])
    assert "not found" in answer["error"].lower()  # no role left behind


def test_control_topic_refuses_service_accounts_and_wrong_admin_passwords(dynsec_broker):
    with pytest.raises(BrokerError, match="refused the administrator"):
        _admin(dynsec_broker, "wrong").set_password("DX1", "pw")
    with pytest.raises(BrokerError, match="may not use"):  # '#' of the service role excludes $CONTROL
        DynSecAccounts("127.0.0.1", dynsec_broker.port, "ingest", "svc-pw").set_password("DX1", "pw")
    assert _connect_rc(dynsec_broker.port, "DX1", "pw") == "Not authorized"


def test_device_ids_that_would_widen_the_acl_are_refused(dynsec_broker):
    for bad in ("+", "#", "a/b"):
        with pytest.raises(ValueError, match="invalid device id"):
            _admin(dynsec_broker).set_password(bad, "pw")


def test_unreachable_broker_is_a_clear_error():
    with pytest.raises(BrokerError, match="cannot reach"):
        DynSecAccounts("127.0.0.1", free_port(), ADMIN_USER, "pw").remove("DX1")


def test_bootstrap_keeps_devices_and_passwords(tmp_path):
    secrets_file = tmp_path / "secrets.env"
    first = bootstrap_local_dynsec(tmp_path, secrets_file)
    assert stat.S_IMODE(os.stat(tmp_path / DYNSEC_FILE).st_mode) == 0o600
    import json

    cfg = json.loads((tmp_path / DYNSEC_FILE).read_text())
    cfg["clients"].append({"username": "DEV_KEPT", "roles": [{"rolename": device_role("DEV_KEPT")}]})
    cfg["roles"].append({"rolename": device_role("DEV_KEPT"), "acls": []})
    (tmp_path / DYNSEC_FILE).write_text(json.dumps(cfg))
    again = bootstrap_local_dynsec(tmp_path, secrets_file)
    assert again == first
    cfg = json.loads((tmp_path / DYNSEC_FILE).read_text())
    assert {c["username"] for c in cfg["clients"]} == {ADMIN_USER, "ingest", "api", "simulator", "gateway",
                                                       "DEV_KEPT"}
    assert device_role("DEV_KEPT") in {r["rolename"] for r in cfg["roles"]}
    assert secrets_file.read_text().count(ADMIN_PASSWORD_KEY) == 1
    assert Settings(_env_file=secrets_file).mqtt.dynsec_password == first[ADMIN_USER]


async def test_device_command_provisions_over_the_local_stacks_control_topic(pg_stack, test_dsn):
    """`wulian device add|remove` against the stack started by deploy/local/stack.sh, as configured by its
    secrets.env: no password file is involved."""
    from wulian.cli.commands.device import _add, _remove

    secrets_file = pg_stack.stack.dir / "secrets.env"
    s = Settings(_env_file=secrets_file, stack=pg_stack.stack, db=DbSettings(dsn=test_dsn))
    assert s.mqtt.dynsec_password
    dev = f"S{uuid.uuid4().hex[:8]}"
    args = argparse.Namespace(device_id=dev, region="city", stream="water", type=None, name=None,
                              mqtt_password=None, hj212_pw=None, hj212_crc=None, password_file=None,
                              no_broker=False)
    out = await _add(args, s)
    port = pg_stack.stack.mqtt_port
    assert _connect_rc(port, dev, out["mqtt_password"]) == "Success"
    assert dev not in (pg_stack.stack.dir / "mosquitto" / "passwd").read_text()
    assert (await _remove(args, s))["credentials_removed"] is True
    assert _connect_rc(port, dev, out["mqtt_password"]) == "Not authorized"


def test_local_stack_refuses_to_start_an_unauthenticated_broker(tmp_path):
    """Without a Python that can render the accounts the stack used to start Mosquitto anonymously."""
    s = Settings(stack=StackSettings(dir=tmp_path / "stack", pg_port=free_port(), mqtt_port=free_port()),
                 mqtt=MqttSettings())
    env = {**stack_env(s), "WULIAN_PYTHON": str(tmp_path / "no-python")}
    proc = subprocess.run(["bash", str(STACK_SCRIPT), "up"], env=env, capture_output=True, text=True)
    assert proc.returncode != 0
    assert "refusing to start an unauthenticated broker" in proc.stderr
    assert not port_open(s.stack.mqtt_port) and not port_open(s.stack.pg_port)


def test_local_stack_refuses_a_config_that_reenables_anonymous_clients(tmp_path):
    s = Settings(stack=StackSettings(dir=tmp_path / "stack", pg_port=free_port(), mqtt_port=free_port()))
    (tmp_path / "stack" / "mosquitto").mkdir(parents=True)
    (tmp_path / "stack" / "mosquitto" / "extra.conf").write_text("allow_anonymous true\n")
    proc = subprocess.run(["bash", str(STACK_SCRIPT), "up"], env=stack_env(s), capture_output=True, text=True)
    try:
        assert proc.returncode != 0
        assert "would allow anonymous clients" in proc.stderr
        assert not port_open(s.stack.mqtt_port) and not port_open(s.stack.pg_port)  # checked before anything starts
    finally:
        subprocess.run(["bash", str(STACK_SCRIPT), "down"], env=stack_env(s), capture_output=True)
