"""Broker accounts of devices: Mosquitto's dynamic-security plugin over the network, or a password file.

With the dynamic-security plugin (``mosquitto_dynamic_security.so``, Mosquitto >= 2.0) accounts and
ACLs are changed by publishing JSON commands to ``$CONTROL/dynamic-security/v1`` as an administrator
account; the broker answers on ``$CONTROL/dynamic-security/v1/response``, applies the change at once
(no reload) and saves its JSON config. So ``wulian device add|remove`` works against a broker on any
host (:class:`DynSecAccounts`). Roles (rendered by :func:`render_dynsec_config`):

* ``wulian-device-{id}``, one role per device: publish only under its own id (``wl/+/{stream}/{id}/+``
  per stream, the password-file ACL's patterns), no subscriptions. One role each because Mosquitto
  2.0's plugin does not substitute ``%u`` in role ACLs (a shared ``%u`` role refused every publish);
* ``wulian-service``: ingest, api, simulator, gateway: anything outside ``$CONTROL``;
* ``wulian-admin``: the dynamic-security control topics only (provisioning).

The password file + SIGHUP variant (:class:`PasswordFileAccounts`) stays for brokers configured that way.
"""
from __future__ import annotations

import json
import os
import re
import ssl
import threading
import uuid
from pathlib import Path
from typing import Protocol

from wulian.ingest.provisioning import (
    ACL_FILE, SERVICE_ACCOUNTS, _read_env_file, _replace_file, allow_stream_in_acl, bootstrap_stack_auth,
    device_topic_patterns, generate_password, hash_password, reload_broker, remove_credentials, set_credentials_many,
)
from wulian.core.const import DEVICE_ID_PATTERN
from wulian.settings import MqttSettings

CONTROL_TOPIC = "$CONTROL/dynamic-security/v1"
RESPONSE_TOPIC = f"{CONTROL_TOPIC}/response"
DEVICE_ROLE_PREFIX = "wulian-device-"
SERVICE_ROLE = "wulian-service"
ADMIN_ROLE = "wulian-admin"
ADMIN_USER = MqttSettings().dynsec_username
# where Debian's mosquitto package puts the plugin (dpkg -L mosquitto)
DYNSEC_PLUGIN = Path("/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
DYNSEC_FILE = "dynamic-security.json"
# the secrets.env key of the administrator's password (wulian/settings.py: mqtt.dynsec_password)
ADMIN_PASSWORD_KEY = "WULIAN_MQTT__DYNSEC_PASSWORD"


_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)  # no '+', '#' or '/': safe inside an ACL topic


def device_role(user: str) -> str:
    return f"{DEVICE_ROLE_PREFIX}{user}"


class BrokerError(RuntimeError):
    """The broker refused a dynamic-security command or did not answer."""


class BrokerAccounts(Protocol):
    """Device accounts of a broker: Mosquitto's (here) or the NATS front door's (ingest/nats_accounts.py)."""

    def check_user(self, user: str) -> None: ...  # ValueError (one line) before anything is written
    def set_password(self, user: str, password: str, stream: str | None = None) -> None: ...
    def remove(self, user: str) -> bool: ...


def check_device_user(user: str) -> None:
    """Mosquitto's accounts take any valid device id (no '+', '#' or '/': safe inside an ACL topic)."""
    if not _DEVICE_RE.match(user):
        raise ValueError(f"invalid device id {user!r}")


class AllAccounts:
    """The same device account on several brokers (the local stack's Mosquitto and the NATS front door):
    checked by all before any is written; removed from all."""

    def __init__(self, backends: list) -> None:
        self.backends = backends

    def check_user(self, user: str) -> None:
        for b in self.backends:
            b.check_user(user)

    def set_password(self, user: str, password: str, stream: str | None = None) -> None:
        for b in self.backends:
            b.set_password(user, password, stream=stream)

    def remove(self, user: str) -> bool:
        return any([b.remove(user) for b in self.backends])  # a list: every backend, not the first True


class PasswordFileAccounts:
    """Accounts in a Mosquitto ``password_file`` on this host; the broker rereads it on SIGHUP."""

    def __init__(self, password_file: Path, pid_file: Path | None = None) -> None:
        self.password_file, self.pid_file = password_file, pid_file

    check_user = staticmethod(check_device_user)

    def set_password(self, user: str, password: str, stream: str | None = None) -> None:
        set_credentials_many(self.password_file, {user: password})
        if stream is not None:  # a registry stream: its pattern in the ACL beside the password file
            allow_stream_in_acl(self.password_file.parent / ACL_FILE, stream)
        if self.pid_file is not None:
            reload_broker(self.pid_file)

    def remove(self, user: str) -> bool:
        removed = remove_credentials(self.password_file, user)
        if removed and self.pid_file is not None:
            reload_broker(self.pid_file)
        return removed


class DynSecAccounts:
    """Device accounts through the dynamic-security control topic (one short MQTT session per call)."""

    def __init__(self, host: str, port: int, username: str, password: str, *, prefix: str = "wl",
                 tls: bool = False, ca_file: str | None = None, timeout_s: float = 10.0) -> None:
        self.host, self.port, self.username, self.password = host, port, username, password
        self.prefix, self.tls, self.ca_file, self.timeout_s = prefix, tls, ca_file, timeout_s

    check_user = staticmethod(check_device_user)

    def command(self, commands: list[dict]) -> list[dict]:
        """Send one batch of commands; returns the broker's responses in order (each may hold ``error``)."""
        from paho.mqtt.client import CallbackAPIVersion, Client
        from paho.mqtt.enums import MQTTProtocolVersion

        c = Client(CallbackAPIVersion.VERSION2, client_id=f"wulian-dynsec-{uuid.uuid4().hex[:8]}",
                   protocol=MQTTProtocolVersion.MQTTv5)
        c.username_pw_set(self.username, self.password)
        if self.tls:
            c.tls_set_context(ssl.create_default_context(cafile=self.ca_file))
        subscribed, answered, out = threading.Event(), threading.Event(), {}

        def on_connect(client, userdata, flags, reason_code, properties):
            out["connect"] = reason_code
            if reason_code.is_failure:
                answered.set()
            else:
                client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribe(client, userdata, mid, reason_codes, properties):
            out["subscribe"] = reason_codes[0]
            if reason_codes[0].is_failure:
                answered.set()
            else:
                subscribed.set()

        def on_publish(client, userdata, mid, reason_code, properties):
            out["publish"] = reason_code
            if reason_code.is_failure:  # MQTT 5 PUBACK 0x87: the ACL refuses the control topic
                answered.set()

        def on_message(client, userdata, msg):
            out["response"] = msg.payload
            answered.set()

        c.on_connect, c.on_subscribe, c.on_publish, c.on_message = on_connect, on_subscribe, on_publish, on_message
        try:
            c.connect(self.host, self.port, keepalive=30)
        except OSError as exc:
            raise BrokerError(f"cannot reach the broker at {self.host}:{self.port}: {exc}") from exc
        c.loop_start()
        try:
            if subscribed.wait(self.timeout_s):
                c.publish(CONTROL_TOPIC, json.dumps({"commands": commands}), qos=1)
            answered.wait(self.timeout_s)
        finally:
            c.disconnect()
            c.loop_stop()
        if "connect" in out and out["connect"].is_failure:
            raise BrokerError(f"broker refused the administrator account {self.username!r}: {out['connect']}")
        if "subscribe" in out and out["subscribe"].is_failure:
            raise BrokerError(f"account {self.username!r} may not use {RESPONSE_TOPIC}: {out['subscribe']}")
        if "publish" in out and out["publish"].is_failure:
            raise BrokerError(f"account {self.username!r} may not use {CONTROL_TOPIC}: {out['publish']}")
        if "response" not in out:
            raise BrokerError(f"no dynamic-security answer from {self.host}:{self.port} (is the plugin loaded?)")
        return json.loads(out["response"])["responses"]

    def set_password(self, user: str, password: str, stream: str | None = None) -> None:
        """Create the device's role and account, or set a new password if they exist (idempotent). The role
        lets it publish under its own id in the built-in streams and in ``stream`` (a registry stream)."""
        if not _DEVICE_RE.match(user):
            raise ValueError(f"invalid device id {user!r}")
        role = device_role(user)
        acls = [{"acltype": "publishClientSend", "topic": t, "allow": True}
                for t in device_topic_patterns(self.prefix, user, stream)]
        role_answer, created = self.command([
            {"command": "createRole", "rolename": role, "acls": acls},
            {"command": "createClient", "username": user, "password": password, "roles": [{"rolename": role}]},
        ])
        errors = [a["error"] for a in (role_answer, created) if a.get("error") and "already exists" not in a["error"]]
        if not errors and created.get("error"):  # the account exists: new password, make sure of the role
            pw, got = self.command([{"command": "setClientPassword", "username": user, "password": password},
                                    {"command": "getClient", "username": user}])
            errors = [a["error"] for a in (pw, got) if a.get("error")]
            if not errors and role not in {r["rolename"] for r in got["data"]["client"].get("roles", [])}:
                # (Mosquitto 2.0.11 answers "Internal error" to adding a role the client already has)
                (added,) = self.command([{"command": "addClientRole", "username": user, "rolename": role}])
                errors = [added["error"]] if added.get("error") else []
        if errors:
            raise BrokerError(f"provisioning {user}: {'; '.join(errors)}")

    def remove(self, user: str) -> bool:
        """Delete the account and its role (the broker disconnects its live sessions); False if there was
        no account."""
        client, _role = self.command([{"command": "deleteClient", "username": user},
                                      {"command": "deleteRole", "rolename": device_role(user)}])
        if client.get("error") is None:
            return True
        if "not found" in client["error"].lower():
            return False
        raise BrokerError(f"deleteClient {user}: {client['error']}")


# --- the plugin's config file (bootstrap) --------------------------------------------------------

def _client_entry(user: str, password: str, role: str) -> dict:
    # the plugin stores what mosquitto_passwd writes: PBKDF2-SHA512, base64 salt and hash
    _, _, iterations, salt, digest = hash_password(password).split("$")
    return {"username": user, "password": digest, "salt": salt, "iterations": int(iterations),
            "roles": [{"rolename": role}]}


def _roles(prefix: str) -> list[dict]:
    control = "$CONTROL/dynamic-security/#"
    allow = lambda t, topic: {"acltype": t, "topic": topic, "allow": True}  # noqa: E731
    return [
        {"rolename": ADMIN_ROLE, "acls": [allow("publishClientSend", control),
                                          allow("publishClientReceive", control),
                                          allow("subscribePattern", control)]},
        # '#' does not match topics starting with '$' (MQTT 5.0 §4.7.2): no control access
        {"rolename": SERVICE_ROLE, "acls": [allow(t, "#") for t in ("publishClientSend", "publishClientReceive",
                                                                    "subscribePattern", "unsubscribePattern")]},
    ]


def render_dynsec_config(services: dict[str, str], admin_password: str, prefix: str = "wl",
                         existing: dict | None = None) -> dict:
    """The plugin's JSON config: our roles (replaced), the administrator and service accounts (their
    passwords set), every other client and role of ``existing`` (devices added at run time) kept.
    Default access: nothing may be published or subscribed unless a role allows it."""
    ours = {ADMIN_USER: _client_entry(ADMIN_USER, admin_password, ADMIN_ROLE)}
    ours |= {u: _client_entry(u, p, SERVICE_ROLE) for u, p in services.items()}
    kept = [c for c in (existing or {}).get("clients", []) if c.get("username") not in ours]
    roles = _roles(prefix)
    names = {r["rolename"] for r in roles}
    return {
        "clients": list(ours.values()) + kept,
        "groups": (existing or {}).get("groups", []),
        "roles": roles + [r for r in (existing or {}).get("roles", []) if r.get("rolename") not in names],
        "defaultACLAccess": {"publishClientSend": False, "publishClientReceive": True,
                             "subscribe": False, "unsubscribe": True},
    }


def write_dynsec_config(path: Path, services: dict[str, str], admin_password: str, prefix: str = "wl") -> None:
    """Write (or update, keeping devices) the plugin's config; only while the broker is stopped, since a
    running broker rewrites the file on every change."""
    existing = json.loads(path.read_text()) if path.exists() else None
    _replace_file(path, json.dumps(render_dynsec_config(services, admin_password, prefix, existing), indent=1),
                  mode=0o600)


def bootstrap_local_dynsec(mq_dir: Path, secrets_file: Path, prefix: str = "wl") -> dict[str, str]:
    """The local stack's broker accounts: the service accounts of :func:`bootstrap_stack_auth` plus the
    dynamic-security administrator (password generated once into ``secrets_file``), rendered into
    ``mq_dir/dynamic-security.json``. Idempotent; returns account -> password."""
    admin_password = _read_env_file(secrets_file).get(ADMIN_PASSWORD_KEY) or generate_password()
    accounts = bootstrap_stack_auth(mq_dir, secrets_file, prefix)  # rewrites secrets_file
    with open(secrets_file, "a") as f:
        f.write(f"# the dynamic-security administrator ({ADMIN_USER}): wulian device add|remove\n"
                f"{ADMIN_PASSWORD_KEY}={admin_password}\n")
    os.chmod(secrets_file, 0o600)
    write_dynsec_config(mq_dir / DYNSEC_FILE, {u: accounts[u] for u in SERVICE_ACCOUNTS}, admin_password, prefix)
    return {**accounts, ADMIN_USER: admin_password}


if __name__ == "__main__":  # deploy/local/stack.sh (bootstrap), deploy/compose/compose.yaml (render)
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "render":  # containers: passwords from the settings' env
        from wulian.settings import Settings

        s = Settings()
        path = Path(sys.argv[2])
        missing = [k for k, v in (("WULIAN_MQTT__PASSWORD", s.mqtt.password),
                                  ("WULIAN_GATEWAY__MQTT_PASSWORD", s.gateway.mqtt_password),
                                  (ADMIN_PASSWORD_KEY, s.mqtt.dynsec_password)) if not v]
        if missing:
            raise SystemExit(f"broker_accounts render: set {', '.join(missing)}")
        if not path.exists():  # once: afterwards the broker owns the file (devices live in it)
            write_dynsec_config(path, {"ingest": s.mqtt.password, "gateway": s.gateway.mqtt_password},
                                s.mqtt.dynsec_password)
    elif len(sys.argv) == 4 and sys.argv[1] == "bootstrap":
        bootstrap_local_dynsec(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        raise SystemExit("usage: python -m wulian.ingest.broker_accounts bootstrap MQ_DIR SECRETS_FILE | render PATH")
