"""Accounts of the NATS front door (``cluster.front_door = "nats"``): who may connect to the nodes, and where
each may publish.

nats-server's ``authorization { users: [...] }`` applies to its MQTT listener as to NATS clients: an MQTT
CONNECT's username/password is checked against the users, and an MQTT topic ``a/b/c`` is the subject
``a.b.c`` for the user's permissions (measured on nats-server 2.9.10: a publish outside them is logged as a
"Publish Violation" and not stored, although MQTT 3.1.1 has no negative PUBACK, so the device still gets
one; a wrong password or no account gets CONNACK "not authorized"). So the NATS door gets what Mosquitto's
dynamic-security plugin gives city mode (ingest/broker_accounts.py), with the same topic patterns
(``device_topic_patterns``):

* one user per device, named by its device id, MQTT connections only, publish only under its own id,
  no subscriptions (a device's QoS 1 publish needs no internal ``$MQTT`` permission: the server stores it);
* ``wulian``: routers, workers, ``cluster up``, benches (NATS connections only, every subject);
* ``simulator``: chaos devices and bench publishers (MQTT only, publish ``<prefix>.>``
  only: no ``$JS``/``$MQTT`` subject, the JetStream API and nats-server's own MQTT bookkeeping).

No anonymous access: with a users list nats-server refuses a client without an account.

The store (``accounts.json``, 0600, beside the node configs) holds the service accounts' passwords (the
local cluster's clients read them) and each device's bcrypt hash with its subjects; :func:`write_include`
renders it into ``accounts.conf``, which every node config includes, replaced atomically; the nodes
reread it on SIGHUP (``nats_cluster.reload``), and a node drops a connected client whose account is gone.
nats-server takes bcrypt hashes (``$2a$``/``$2b$``); the cost is low (:data:`BCRYPT_COST`) because every
device connect costs the node one comparison, and the generated passwords are 144-bit random tokens that
no cost would make weaker or stronger.

nats-server 2.9 refuses an MQTT topic with a ``.`` (it closes the connection, no PUBACK: measured), so a
device id with a ``.`` cannot publish through this door: :func:`check_device_id` refuses it at
provisioning.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import re
from pathlib import Path
from typing import Callable

import bcrypt

from wulian.core.const import DEVICE_ID_PATTERN
from wulian.ingest.provisioning import _replace_file, device_topic_patterns, generate_password

STORE_FILE = "accounts.json"
LOCK_FILE = ".accounts.lock"
INCLUDE_FILE = "accounts.conf"  # ``include``d by every node config (ingest/nats_cluster.py)
SERVICE_USER = "wulian"  # routers, workers, cluster up, benches: NATS connections
SIMULATOR_USER = "simulator"  # chaos devices, bench publishers, the front door's hello: MQTT connections
BCRYPT_COST = 6  # paid at every device connect: CONNACK 6.0 ms at 6, 140.5 ms at 10 (docs/cluster.md)
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)


def check_device_id(device_id: str) -> None:
    """ValueError (one line) for an id this door cannot carry."""
    if not _DEVICE_RE.match(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    if device_id in (SERVICE_USER, SIMULATOR_USER):  # a second user of that name: the nodes refuse the file
        raise ValueError(f"device id {device_id!r} is a service account of the NATS front door")
    if "." in device_id:
        raise ValueError(f"device id {device_id!r} contains '.': the NATS front door (cluster.front_door = nats)"
                         " cannot carry it (nats-server 2.9 refuses MQTT topics containing '.')")


def topic_to_subject(topic: str) -> str:
    """An MQTT topic filter as nats-server maps it to a subject: ``/`` -> ``.``, ``+`` -> ``*``, ``#`` -> ``>``."""
    return ".".join({"+": "*", "#": ">"}.get(level, level) for level in topic.split("/"))


def device_subjects(device_id: str, prefix: str = "wl", stream: str | None = None) -> list[str]:
    """What a device may publish to: Mosquitto's ACL patterns (ingest/provisioning.py) as subjects."""
    return [topic_to_subject(t) for t in device_topic_patterns(prefix, device_id, stream)]


def hash_password(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(BCRYPT_COST)).decode()


def _q(text: str) -> str:
    return json.dumps(text)  # a JSON string is a valid nats-server config string


def render(store: dict) -> str:
    """The ``authorization`` block of every node config, from the store."""
    prefix = store["prefix"]
    svc = store["service"]
    users = [
        f'  {{user: {_q(SERVICE_USER)}, password: {_q(svc[SERVICE_USER]["hash"])}, '
        f'allowed_connection_types: ["STANDARD"]}}',
        f'  {{user: {_q(SIMULATOR_USER)}, password: {_q(svc[SIMULATOR_USER]["hash"])}, '
        f'allowed_connection_types: ["MQTT"], permissions: {{publish: {{allow: [{_q(prefix + ".>")}]}}, '
        f'subscribe: {{deny: [">"]}}}}}}',
    ]
    for user, d in sorted(store["devices"].items()):
        allow = ", ".join(_q(s) for s in d["publish"])
        users.append(f'  {{user: {_q(user)}, password: {_q(d["hash"])}, allowed_connection_types: ["MQTT"], '
                     f'permissions: {{publish: {{allow: [{allow}]}}, subscribe: {{deny: [">"]}}}}}}')
    return ("# Rendered by Wulian (ingest/nats_accounts.py) from accounts.json; nodes reread it on SIGHUP.\n"
            "authorization {\n users: [\n" + "\n".join(users) + "\n ]\n}\n")


def load_store(cdir: Path) -> dict | None:
    f = cdir / STORE_FILE
    return json.loads(f.read_text()) if f.exists() else None


def _save(cdir: Path, store: dict) -> None:
    _replace_file(cdir / STORE_FILE, json.dumps(store, indent=1) + "\n", mode=0o600)
    _replace_file(cdir / INCLUDE_FILE, render(store), mode=0o600)


@contextlib.contextmanager
def _locked(cdir: Path):
    """One writer of the store at a time (two ``wulian device add`` at once would lose one account)."""
    cdir.mkdir(parents=True, exist_ok=True)
    with open(cdir / LOCK_FILE, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        yield


def ensure_store(cdir: Path, prefix: str = "wl") -> dict:
    """The store with both service accounts (passwords generated once), and its include file rendered.
    Idempotent: ``wulian cluster up`` calls it before starting the nodes."""
    with _locked(cdir):
        return _ensure(cdir, prefix)


def _ensure(cdir: Path, prefix: str) -> dict:
    store = load_store(cdir) or {"prefix": prefix, "service": {}, "devices": {}}
    for user in (SERVICE_USER, SIMULATOR_USER):
        if user not in store["service"]:
            pw = generate_password()
            store["service"][user] = {"password": pw, "hash": hash_password(pw)}
    _save(cdir, store)
    return store


def service_credentials(cdir: Path, user: str = SERVICE_USER) -> tuple[str, str] | None:
    """(user, password) of a service account of the local cluster in ``cdir``; None without a store."""
    store = load_store(cdir)
    if store is None or user not in store["service"]:
        return None
    return user, store["service"][user]["password"]


class NatsAccounts:
    """Device accounts on the NATS front door (the ``BrokerAccounts`` protocol of ingest/broker_accounts.py):
    the store and include file in ``cdir``, then ``reload`` (SIGHUP to the nodes that read it)."""

    def __init__(self, cdir: Path, prefix: str = "wl", reload: Callable[[], object] | None = None) -> None:
        self.cdir, self.prefix, self.reload = cdir, prefix, reload

    def check_user(self, user: str) -> None:
        check_device_id(user)

    def set_password(self, user: str, password: str, stream: str | None = None) -> None:
        check_device_id(user)
        with _locked(self.cdir):
            store = _ensure(self.cdir, self.prefix)
            store["devices"][user] = {"hash": hash_password(password),
                                      "publish": device_subjects(user, store["prefix"], stream)}
            _save(self.cdir, store)
        if self.reload is not None:
            self.reload()

    def remove(self, user: str) -> bool:
        with _locked(self.cdir):
            store = load_store(self.cdir)
            if store is None or store["devices"].pop(user, None) is None:
                return False
            _save(self.cdir, store)
        if self.reload is not None:
            self.reload()
        return True


def write_include(cdir: Path, target: Path | None = None) -> Path:
    """Render the include file again from the store (``wulian cluster accounts sync``), to ``target`` (a
    node host's config dir) or beside the store; returns where it went."""
    store = load_store(cdir)
    if store is None:
        raise ValueError(f"no NATS accounts in {cdir}: run `wulian cluster up` (or copy {STORE_FILE} there)")
    path = target or cdir / INCLUDE_FILE
    _replace_file(path, render(store), mode=0o600)
    return path

