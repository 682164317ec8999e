"""deploy/systemd: every unit passes ``systemd-analyze verify``, is hardened, and its service starts with
exactly the unit's command line and environment file (test values substituted in a copy of the file)
and answers on its health endpoint; then stops on the unit's KillSignal."""
from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.services import free_port

ROOT = Path(__file__).resolve().parent.parent
SYSTEMD = ROOT / "deploy" / "systemd"
UNITS = sorted(SYSTEMD.glob("*.service"))
ENV_FILE = SYSTEMD / "wulian.env"
INSTALLED_BIN = "/opt/wulian/venv/bin/"  # where deploy/debian/README.md installs the virtualenv
# unit -> (the env-file key of the port its health endpoint listens on, readiness path)
HEALTH = {
    "wulian-ingest": ("WULIAN_INGEST__METRICS_PORT", "/readyz"),
    "wulian-api": ("WULIAN_API__PORT", "/readyz"),
    "wulian-derive": ("WULIAN_DERIVE__METRICS_PORT", "/readyz"),
    "wulian-gateway-hj212": ("WULIAN_GATEWAY__HJ212_METRICS_PORT", "/readyz"),
    "wulian-gateway-jt808": ("WULIAN_GATEWAY__JT808_METRICS_PORT", "/readyz"),
    "wulian-notify": ("WULIAN_NOTIFY__METRICS_PORT", "/readyz"),
    "wulian-forward-hj212": ("WULIAN_FORWARD__METRICS_PORT", "/readyz"),
}
HARDENING = {"User": "wulian", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
             "PrivateTmp": "yes", "PrivateDevices": "yes", "CapabilityBoundingSet": "",
             "RestrictSUIDSGID": "yes", "SystemCallFilter": "@system-service"}
# keys of the production file the test cannot satisfy (no certificates here): dropped from the copy
UNSET = {"WULIAN_API__TLS_CERTFILE", "WULIAN_API__TLS_KEYFILE", "WULIAN_MQTT__CA_FILE"}


def parse_unit(path: Path) -> dict[str, list[str]]:
    """``[Service]`` key -> values (a key may repeat), as systemd reads them."""
    out: dict[str, list[str]] = {}
    section = None
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.setdefault(f"{section}.{key.strip()}" if section != "Service" else key.strip(), []).append(value.strip())
    return out


def parse_env_file(text: str) -> dict[str, str]:
    """systemd EnvironmentFile= syntax: KEY=VALUE lines, '#'/';' comments, optional quotes."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip()] = value
    return out


def installed_here(arg: str) -> str:
    """The unit's path to the installed ``wulian`` -> this checkout's virtualenv."""
    return arg.replace(INSTALLED_BIN, str(Path(sys.executable).parent) + "/")


def test_a_unit_for_every_service_with_the_one_environment_file():
    assert {u.stem for u in UNITS} == set(HEALTH)
    for unit in UNITS:
        u = parse_unit(unit)
        assert u["EnvironmentFile"] == ["/etc/wulian/wulian.env"], unit.name
        assert u["ExecStart"][0].startswith(INSTALLED_BIN + "wulian "), unit.name
        for key, value in HARDENING.items():
            assert u.get(key) == [value], f"{unit.name}: {key}"
        assert "MemoryDenyWriteExecute" not in u  # numba's JIT needs executable memory
    env = parse_env_file(ENV_FILE.read_text())
    assert all(k.startswith("WULIAN_") for k in env)
    from wulian.settings import Settings

    Settings(_env_file=ENV_FILE)  # every key is a valid setting of the right type


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.stem)
def test_systemd_analyze_verify(unit, tmp_path):
    """``systemd-analyze verify`` insists the command exists: it is pointed at this checkout's venv."""
    copy = tmp_path / unit.name
    copy.write_text(installed_here(unit.read_text()))
    proc = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stderr.strip() == "", proc.stderr
    sec = subprocess.run(["systemd-analyze", "security", "--offline=true", str(copy)],
                         capture_output=True, text=True)
    level = float(sec.stdout.split("Overall exposure level for")[1].split(":")[1].split()[0])
    assert level <= 2.0, sec.stdout[-500:]  # "OK" band of systemd's exposure scale


@pytest.fixture(scope="module")
def env_copy(pg_stack, test_dsn, tmp_path_factory) -> dict[str, str]:
    """The production environment file with test values: this session's database and authenticated
    broker, free ports, no certificates."""
    secrets = parse_env_file((pg_stack.stack.dir / "secrets.env").read_text())
    env = parse_env_file(ENV_FILE.read_text())
    for key in UNSET:
        env.pop(key)
    env.update({
        "WULIAN_DB__DSN": test_dsn,
        "WULIAN_MQTT__HOST": "127.0.0.1", "WULIAN_MQTT__PORT": str(pg_stack.stack.mqtt_port),
        "WULIAN_MQTT__TLS": "false",
        **{k: secrets[k] for k in ("WULIAN_MQTT__PASSWORD", "WULIAN_GATEWAY__MQTT_PASSWORD",
                                   "WULIAN_MQTT__DYNSEC_PASSWORD")},
        **{k: str(free_port()) for k in env if k.endswith("_PORT") and k != "WULIAN_MQTT__PORT"},
    })
    path = tmp_path_factory.mktemp("etc-wulian") / "wulian.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return {"path": str(path)}


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.stem)
def test_service_starts_with_its_units_command_and_environment_file(unit, env_copy, tmp_path):
    u = parse_unit(unit)
    argv = [installed_here(a) for a in shlex.split(u["ExecStart"][0])]
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(tmp_path)}  # systemd's clean environment
    for assignment in u.get("Environment", []):
        key, _, value = assignment.partition("=")
        env[key] = value.replace("/var/cache/wulian", str(tmp_path / "cache"))
    file_env = parse_env_file(Path(env_copy["path"]).read_text())
    env.update(file_env)
    port_key, path = HEALTH[unit.stem]
    url = f"http://127.0.0.1:{file_env[port_key]}{path}"
    proc = subprocess.Popen(argv, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120  # first start compiles numba kernels into the empty cache
        while True:
            assert proc.poll() is None, f"{unit.stem} exited: {proc.stdout.read().decode()[-3000:]}"
            try:
                r = httpx.get(url, timeout=2)
                if r.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"{url} never answered 200"
            time.sleep(0.2)
        assert r.json()["status"] == "ok"
        assert httpx.get(url.replace(path, "/livez"), timeout=2).status_code == 200
    finally:
        if proc.poll() is None:
            proc.send_signal(getattr(signal, u["KillSignal"][0]))
            try:
                proc.wait(timeout=int(u["TimeoutStopSec"][0]))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                pytest.fail(f"{unit.stem} did not stop on {u['KillSignal'][0]} within TimeoutStopSec")
    assert proc.returncode == 0, proc.stdout.read().decode()[-3000:]
