"""Device provisioning and broker security: registry rows, per-device MQTT credentials, the ACL.

Every device gets its own MQTT account named by its device id; the broker's ACL (rendered once by
:func:`render_acl`) lets an account publish only under its own id (``wl/+/{stream}/%u/+`` for each
stream), while service accounts (ingest, api, simulator, gateway) may do anything. Credentials live
in a Mosquitto ``password_file``: PBKDF2-SHA512 hashes in the format ``mosquitto_passwd`` writes
(``$7$101$salt$hash``, Mosquitto >= 2.0), so no subprocess is needed. Mosquitto rereads both files on
SIGHUP (:func:`reload_broker`). The files are replaced atomically, keeping owner and mode. The other
credentials (HJ 212 PW, JT/T 808 auth code) go to the device-secret store (ingest/device_secrets.py),
never into ``devices.attrs``; :func:`remove_device` revokes all of them.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import secrets
import signal
import string
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import asyncpg

from wulian.core.const import DEVICE_ID_PATTERN, Stream
from wulian.ingest import audit, device_secrets, device_store
from wulian.ingest.device_store import DeviceSpec

SERVICE_ACCOUNTS = ("ingest", "api", "simulator", "gateway")
ACL_FILE = "acl"  # beside the password file (deploy/local/stack.sh points mosquitto.conf at both)
PBKDF2_ITERATIONS = 101  # what mosquitto_passwd 2.0 uses
_DEVICE_RE = re.compile(DEVICE_ID_PATTERN)


# --- passwords -----------------------------------------------------------------------------------

def generate_password(nbytes: int = 18) -> str:
    """A random URL-safe password (24 characters for the default 18 bytes)."""
    return secrets.token_urlsafe(nbytes)


def generate_hj212_pw() -> str:
    """A 6-character HJ 212 access password (PW is C6 in HJ 212-2017 Table 3)."""
    return "".join(secrets.choice(string.digits) for _ in range(6))


def hash_password(password: str, salt: bytes | None = None) -> str:
    """Mosquitto 2.0 password-file hash: ``$7$iterations$b64(salt)$b64(PBKDF2-SHA512)``."""
    salt = salt if salt is not None else os.urandom(12)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), salt, PBKDF2_ITERATIONS)
    return f"$7${PBKDF2_ITERATIONS}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def check_password(password: str, hashed: str) -> bool:
    """True if ``password`` matches a ``$7$`` entry (tests and ``wulian device check``)."""
    try:
        _, alg, iterations, salt, digest = hashed.split("$")
        if alg != "7":
            return False
        got = hashlib.pbkdf2_hmac("sha512", password.encode("utf-8"), base64.b64decode(salt), int(iterations))
        return hmac.compare_digest(base64.b64encode(got).decode(), digest)
    except (ValueError, TypeError):
        return False


def read_password_file(path: Path) -> dict[str, str]:
    """user -> hash, in file order; a missing file is empty."""
    out: dict[str, str] = {}
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        user, sep, hashed = line.strip().partition(":")
        if sep and user and not user.startswith("#"):
            out[user] = hashed
    return out


def _replace_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Write ``text`` to ``path`` atomically, keeping the old file's owner and mode if there was one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        if path.exists():
            st = path.stat()
            os.chmod(tmp, st.st_mode & 0o777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_password_file(path: Path, entries: dict[str, str]) -> None:
    _replace_file(path, "".join(f"{user}:{hashed}\n" for user, hashed in entries.items()))


def set_credentials_many(path: Path, accounts: dict[str, str]) -> None:
    """Add or replace accounts (user -> clear password) in the password file."""
    for user in accounts:
        if not user or ":" in user or any(c.isspace() for c in user):
            raise ValueError(f"invalid MQTT user name {user!r}")
    entries = read_password_file(path)
    for user, password in accounts.items():
        entries[user] = hash_password(password)
    write_password_file(path, entries)


def remove_credentials(path: Path, user: str) -> bool:
    entries = read_password_file(path)
    if entries.pop(user, None) is None:
        return False
    write_password_file(path, entries)
    return True


# --- ACL -----------------------------------------------------------------------------------------

def device_topic_patterns(prefix: str = "wl", user: str = "%u", stream: str | None = None) -> list[str]:
    """What a device account may publish to, one pattern per built-in stream plus the device's own
    ``stream`` when it is a registry (custom) stream (``%u``: its user name, which is its device id);
    the password-file ACL, the dynamic-security roles (ingest/broker_accounts.py) and the NATS front
    door's permissions (ingest/nats_accounts.py)."""
    streams = [s.value for s in Stream]
    if stream is not None and stream not in streams:
        streams.append(stream)
    return [f"{prefix}/+/{name}/{user}/+" for name in streams]


def allow_stream_in_acl(acl_file: Path, stream: str, prefix: str = "wl") -> bool:
    """Add a registry stream's pattern to a rendered ``acl_file`` (devices still publish only under
    their own id); True if the file changed (the broker then needs a SIGHUP)."""
    extra = device_topic_patterns(prefix, stream=stream)[len(Stream):]
    if not extra or not acl_file.exists():
        return False
    line, text = f"pattern write {extra[0]}", acl_file.read_text()
    if line in text.splitlines():
        return False
    _replace_file(acl_file, text.rstrip("\n") + "\n" + line + "\n", mode=0o644)
    return True


def render_acl(prefix: str = "wl", service_accounts: Iterable[str] = SERVICE_ACCOUNTS) -> str:
    """Mosquitto ``acl_file`` text. Devices: publish under their own id, one pattern per stream (so a
    device named like a stream can never write into ``{prefix}/{region}/alerts/...``); no reads."""
    lines = ["# Rendered by Wulian (ingest/provisioning.py); reloaded by SIGHUP.", ""]
    for user in service_accounts:
        lines += [f"user {user}", "topic readwrite #", ""]
    lines.append("# every other account is a device: it may publish only under its own id")
    lines += [f"pattern write {p}" for p in device_topic_patterns(prefix)]
    return "\n".join(lines) + "\n"


def write_acl(path: Path, prefix: str = "wl", service_accounts: Iterable[str] = SERVICE_ACCOUNTS) -> None:
    _replace_file(path, render_acl(prefix, service_accounts), mode=0o644)


def reload_broker(pid_file: Path) -> bool:
    """SIGHUP the broker so it rereads password and ACL files; False if it is not running."""
    try:
        pid = int(pid_file.read_text().strip())
        os.kill(pid, signal.SIGHUP)
        return True
    except (OSError, ValueError):
        return False


# --- registry (rows written by ingest/device_store.py) -------------------------------------------

@dataclass(frozen=True, slots=True)
class Provisioned:
    device_id: str
    registry_id: int
    created: bool
    mqtt_username: str
    mqtt_password: str | None = field(repr=False)  # None when broker credentials were not written
    attrs: dict
    secrets: dict = field(repr=False)  # to hand to the device once (``wulian device add`` prints them)


async def provision_device(
    con: asyncpg.Connection,
    spec: DeviceSpec,
    *,
    password_file: Path | None,
    mqtt_password: str | None = None,
    pid_file: Path | None = None,
    accounts=None,
    actor: str | None = None,
    source: str = "cli",
) -> Provisioned:
    """Registry row + broker credentials (+ HJ 212 PW for pollution/air/water devices of type hj212, in
    the device-secret store). Without ``password_file`` nor ``accounts`` only the registry row is written.
    ``accounts`` (a broker account backend of ingest/broker_accounts.py, e.g. dynamic security over the
    network) is used instead of the file."""
    if accounts is not None:  # e.g. the NATS front door refuses a '.' in the id: before the registry row
        accounts.check_user(spec.device_id)
    attrs = dict(spec.attrs)
    secrets_ = dict(spec.secrets)
    if spec.device_type == "hj212" and device_secrets.HJ212_PW not in secrets_:
        secrets_[device_secrets.HJ212_PW] = generate_hj212_pw()
    attrs["mqtt_user"] = spec.device_id
    spec = DeviceSpec(spec.device_id, spec.region, spec.stream, spec.device_type, spec.name, attrs, secrets_)
    async with audit.device_change(con, spec.device_id, action="device.provision", actor=actor, source=source):
        registry_id, created = await device_store.upsert(con, spec, device_store.PROVISION)
    password = None
    if accounts is not None:
        password = mqtt_password or generate_password()
        accounts.set_password(spec.device_id, password, stream=spec.stream)
    elif password_file is not None:
        password = mqtt_password or generate_password()
        set_credentials_many(password_file, {spec.device_id: password})
        allow_stream_in_acl(password_file.parent / ACL_FILE, spec.stream)
        if pid_file is not None:
            reload_broker(pid_file)
    return Provisioned(spec.device_id, registry_id, created, spec.device_id, password, attrs, secrets_)


@dataclass(frozen=True, slots=True)
class Removed:
    device_id: str
    known: bool  # the registry has the device (removed now or before)
    registry: bool  # the registry row was marked removed now (False: unknown or removed before)
    secrets: list[str]  # kinds revoked from the device-secret store
    mqtt: bool  # the broker account was deleted


async def remove_device(con: asyncpg.Connection, device_id: str, *, accounts=None,
                        password_file: Path | None = None, pid_file: Path | None = None) -> Removed:
    """Revoke every credential of a device: the registry row is marked removed (the gateways refuse it,
    auto-provisioning never revives it), its secrets are deleted (both announced to the gateways'
    caches by trigger), and its MQTT account leaves the broker: through ``accounts`` (dynamic security
    deletes the client and disconnects it) or the password file (the broker reloads on SIGHUP and
    disconnects a client whose account is gone). Idempotent; the row and its data stay."""
    if not _DEVICE_RE.match(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    async with con.transaction():
        was_removed = await device_store.mark_removed(con, device_id)
        kinds = await device_secrets.revoke(con, device_id)
    if accounts is not None:
        mqtt = accounts.remove(device_id)
    else:
        mqtt = password_file is not None and remove_credentials(password_file, device_id)
        if mqtt and pid_file is not None:
            reload_broker(pid_file)
    return Removed(device_id, was_removed is not None, was_removed is False, kinds, mqtt)


# --- local stack bootstrap -----------------------------------------------------------------------

def _read_env_file(path: Path) -> dict[str, str]:
    out = {}
    if path.exists():
        for line in path.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and not key.startswith("#"):
                out[key.strip()] = value.strip()
    return out


def bootstrap_stack_auth(mq_dir: Path, secrets_file: Path, prefix: str = "wl") -> dict[str, str]:
    """Service accounts for the local stack: passwords generated once into ``secrets_file`` (0600,
    read by wulian/settings.py as an env file), hashed into ``mq_dir/passwd`` (device entries kept),
    and the ACL rendered to ``mq_dir/acl``. Idempotent; returns account -> password."""
    env = _read_env_file(secrets_file)
    keys = {
        "ingest": "WULIAN_MQTT__PASSWORD",
        "gateway": "WULIAN_GATEWAY__MQTT_PASSWORD",
        "api": "WULIAN_SERVICE_ACCOUNTS__API_PASSWORD",
        "simulator": "WULIAN_SERVICE_ACCOUNTS__SIMULATOR_PASSWORD",
    }
    accounts = {user: env.get(key) or generate_password() for user, key in keys.items()}
    text = [
        "# Local stack MQTT service accounts, written by `wulian stack up` (deploy/local/stack.sh).",
        "# wulian/settings.py reads this file; variables set in the environment take precedence.",
        "# ingest, the API and the simulators use the first account; gateways their own.",
        "WULIAN_MQTT__USERNAME=ingest",
        f"WULIAN_MQTT__PASSWORD={accounts['ingest']}",
        "WULIAN_GATEWAY__MQTT_USERNAME=gateway",
        f"WULIAN_GATEWAY__MQTT_PASSWORD={accounts['gateway']}",
        f"WULIAN_SERVICE_ACCOUNTS__API_PASSWORD={accounts['api']}",
        f"WULIAN_SERVICE_ACCOUNTS__SIMULATOR_PASSWORD={accounts['simulator']}",
    ]
    _replace_file(secrets_file, "\n".join(text) + "\n", mode=0o600)
    os.chmod(secrets_file, 0o600)
    entries = read_password_file(mq_dir / "passwd")
    changed = {u: p for u, p in accounts.items() if not check_password(p, entries.get(u, ""))}
    if changed or not (mq_dir / "passwd").exists():
        set_credentials_many(mq_dir / "passwd", changed)
    write_acl(mq_dir / ACL_FILE, prefix)
    return accounts


if __name__ == "__main__":  # deploy/local/stack.sh: python -m wulian.ingest.provisioning bootstrap MQ_DIR SECRETS
    import sys

    if len(sys.argv) != 4 or sys.argv[1] != "bootstrap":
        raise SystemExit("usage: python -m wulian.ingest.provisioning bootstrap MQ_DIR SECRETS_FILE")
    bootstrap_stack_auth(Path(sys.argv[2]), Path(sys.argv[3]))
