"""``wulian device add|remove``: provision a device (registry row + its own MQTT credentials), or
revoke every credential it has.

The MQTT password is printed once (generated unless ``--mqtt-password`` is given); the broker keeps
only its hash. The account is written to Mosquitto and, in cluster mode with the NATS front door (its
accounts in ``<stack dir>/nats``), to the NATS nodes too; that door refuses a device id with a '.'.
HJ 212 stations (``--type hj212``) also get their access password PW (``--hj212-pw`` or a generated
one, printed once, kept in the device-secret store); JT/T 808 terminals get their auth
code when they register with the gateway. ``remove`` revokes the MQTT account, the PW and the auth
code, and marks the registry row removed so that the gateways refuse the device from its next packet.
"""
from __future__ import annotations

import argparse
import asyncio
import json
from pathlib import Path

from wulian.settings import Settings, get_settings


def broker_files(settings: Settings) -> tuple[Path, Path, Path]:
    """(password file, ACL file, pid file) of the local stack's broker."""
    from wulian.ingest.provisioning import ACL_FILE

    mq = settings.stack.dir / "mosquitto"
    return mq / "passwd", mq / ACL_FILE, mq / "mosquitto.pid"


def mosquitto_accounts(args: argparse.Namespace, s: Settings):
    """Mosquitto's device accounts: ``--password-file``; else the broker's dynamic-security plugin when the
    administrator's password is set (any host); else the local stack's password file."""
    from wulian.ingest.broker_accounts import DynSecAccounts, PasswordFileAccounts

    passwd, _acl, pid = broker_files(s)
    if args.password_file:
        return PasswordFileAccounts(Path(args.password_file), pid)
    q = s.mqtt
    if q.dynsec_password:
        return DynSecAccounts(q.host, int(q.port), q.dynsec_username, q.dynsec_password, prefix=q.topic_prefix,
                              tls=q.tls, ca_file=str(q.ca_file) if q.ca_file else None)
    return PasswordFileAccounts(passwd, pid)


def nats_accounts(s: Settings):
    """The NATS front door's device accounts, when it is the cluster's front door and its accounts exist
    here (``wulian cluster up`` created them in ``<stack dir>/nats``); else None."""
    from wulian.cli.commands.cluster import cluster_dir
    from wulian.ingest import nats_accounts as na
    from wulian.ingest import nats_cluster as nc

    cdir = cluster_dir(s)
    if s.cluster.front_door != "nats" or na.load_store(cdir) is None:
        return None
    return na.NatsAccounts(cdir, s.mqtt.topic_prefix, reload=lambda: nc.reload(cdir))


def broker_accounts(args: argparse.Namespace, s: Settings):
    """Where device accounts go: Mosquitto's (city mode's broker, :func:`mosquitto_accounts`) and, when
    there is one, the NATS front door's (:func:`nats_accounts`), so the device may use either."""
    from wulian.ingest.broker_accounts import AllAccounts

    if args.no_broker:
        return None
    nats = nats_accounts(s)
    mosquitto = mosquitto_accounts(args, s)
    return AllAccounts([mosquitto, nats]) if nats is not None else mosquitto


async def _add(args: argparse.Namespace, s: Settings) -> dict:
    import asyncpg

    from wulian.ingest.device_secrets import HJ212_PW
    from wulian.ingest.device_store import DeviceSpec
    from wulian.ingest.provisioning import provision_device

    attrs: dict = {}
    secrets = {HJ212_PW: args.hj212_pw} if args.hj212_pw else {}
    if args.hj212_crc:
        attrs["hj212_crc"] = args.hj212_crc
    spec = DeviceSpec(args.device_id, args.region or s.sim.region, args.stream, args.type, args.name, attrs,
                      secrets)
    con = await asyncpg.connect(s.db.dsn)
    try:
        p = await provision_device(con, spec, password_file=None, mqtt_password=args.mqtt_password,
                                   accounts=broker_accounts(args, s))
    finally:
        await con.close()
    out = {"device_id": p.device_id, "id": p.registry_id, "created": p.created,
           "mqtt_username": p.mqtt_username, "mqtt_password": p.mqtt_password,
           "topic": f"{s.mqtt.topic_prefix}/{spec.region}/{spec.stream}/{p.device_id}/+"}
    if HJ212_PW in p.secrets:
        out[HJ212_PW] = p.secrets[HJ212_PW]
    return out


async def _remove(args: argparse.Namespace, s: Settings) -> dict:
    import asyncpg

    from wulian.ingest import audit
    from wulian.ingest.provisioning import remove_device

    accounts = broker_accounts(args, s)
    con = await asyncpg.connect(s.db.dsn)
    try:
        r = await remove_device(con, args.device_id, accounts=accounts)
        if r.registry or r.secrets or r.mqtt:
            await audit.record(con, actor=audit.cli_actor(), source="cli", action="device.remove",
                               object_type="device", object_id=args.device_id,
                               before={"registered": r.known, "mqtt_credentials": r.mqtt or None},
                               after={"removed": r.registry, "secrets_revoked": r.secrets,
                                      "mqtt_credentials": False})
    finally:
        await con.close()
    if not r.known and not r.mqtt:
        raise ValueError(f"unknown device {args.device_id!r}: not in the registry, no MQTT account")
    return {"device_id": r.device_id, "removed": r.registry, "secrets_revoked": r.secrets,
            "credentials_removed": r.mqtt}


def run(args: argparse.Namespace) -> int:
    from wulian.ingest.broker_accounts import BrokerError

    s = get_settings()
    try:
        out = asyncio.run(_add(args, s) if args.action == "add" else _remove(args, s))
    except (ValueError, BrokerError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(out, ensure_ascii=False))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("device", help="provision a device: registry row + its own MQTT credentials")
    p.add_argument("action", choices=["add", "remove"],
                   help="remove: revoke every credential (MQTT account, HJ 212 PW, JT/T 808 auth code)")
    p.add_argument("device_id")
    p.add_argument("--region", default=None, help="default: the simulator region setting")
    p.add_argument("--stream", default="pollution")
    p.add_argument("--type", default=None, help="hj212, jt808, dlt645, cjt188, telemetry...")
    p.add_argument("--name", default=None)
    p.add_argument("--mqtt-password", default=None, help="default: generated and printed once")
    p.add_argument("--hj212-pw", default=None, help="HJ 212 access password (PW); generated for --type hj212")
    p.add_argument("--hj212-crc", default=None, help="extra CRC variants tolerated: modbus, modbus_le")
    p.add_argument("--password-file", default=None, help="a Mosquitto password_file on this host (default: the broker's "
                   "dynamic-security plugin when mqtt.dynsec_password is set, else .stack/mosquitto/passwd)")
    p.add_argument("--no-broker", action="store_true", help="registry row only (no MQTT credentials)")
    p.set_defaults(func=run)
