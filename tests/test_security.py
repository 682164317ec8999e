"""Security: every route's auth, roles and regions (table-driven), rate limits, redaction, TLS."""
import asyncio
import collections
import io
import logging
import re
import ssl
import subprocess
import uuid

import httpx
import pytest
import uvicorn

from wulian.api.app import create_app
from wulian.api.auth import create_key
from wulian.ingest.mqtt_client import MqttConsumer, MqttParams, MqttPublisher
from tests.conftest import ROOT, wait_until
from tests.helpers import api_client
from tests.services import Broker, free_port
from wulian import log_redaction


@pytest.fixture
async def world(pool):
    """Two regions, a device and a cleared alert in region A, and one key per role/scope/condition.

    Its rule, and the ones the routes create, bind every series (no scope): they are deleted at the
    end, or every later test sharing the database evaluates them over all its data."""
    a, b = f"ra{uuid.uuid4().hex[:5]}", f"rb{uuid.uuid4().hex[:5]}"
    dev = f"SEC{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        rules_before = await con.fetchval("SELECT coalesce(max(id), 0) FROM rules")
        dev_pk = await con.fetchval(
            "INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'air') RETURNING id", dev, a)
        alert = await con.fetchval(
            "INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state, title,"
            " raised_at, last_seen) VALUES (1, $1, $2, $3, 'air', 'PM25', 'major', 'cleared', 't', now(), now())"
            " RETURNING id", dev_pk, dev, a)
        rule = await con.fetchval("INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id",
                                  '{"id": 0, "name": "r", "kind": "upper", "threshold": 1}')
        keys = {
            "admin": await create_key(con, name="k-admin", role="admin", regions=[]),
            "operator_a": await create_key(con, name="k-op-a", role="operator", regions=[a]),
            "regulator_a": await create_key(con, name="k-reg-a", role="regulator", regions=[a]),
            "operator_b": await create_key(con, name="k-op-b", role="operator", regions=[b]),
            "expired": await create_key(con, name="k-exp", role="admin", regions=[]),
            "revoked": await create_key(con, name="k-rev", role="admin", regions=[]),
        }
        await con.execute("UPDATE api_keys SET expires_at = now() - interval '1 s' WHERE name = 'k-exp'")
        await con.execute("UPDATE api_keys SET revoked_at = now() WHERE name = 'k-rev'")
    keys["malformed"] = "wl_nothex_123"
    keys["none"] = None
    yield {"region": a, "device": dev, "alert": alert, "rule": rule, "keys": keys}
    async with pool.acquire() as con:
        await con.execute("DELETE FROM rules WHERE id > $1", rules_before)


RULE = {"name": "x", "kind": "upper", "threshold": 5}
# (method, path template, body) -> expected status per principal
ROUTES = [
    ("GET", "/v1/devices", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=200)),
    ("GET", "/v1/devices/{device}", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=404)),
    ("GET", "/v1/devices/{device}/latest", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=404)),
    ("GET", "/v1/readings?device={device}&metric=PM25&from=2026-01-01T00:00:00Z&to=2026-01-02T00:00:00Z&bucket=1h",
     None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=404)),
    ("GET", "/v1/alerts", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=200)),
    ("GET", "/v1/alerts/{alert}", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=404)),
    ("POST", "/v1/alerts/{alert}/ack", {}, dict(admin=409, operator_a=409, regulator_a=409, operator_b=404)),
    ("POST", "/v1/alerts/{alert}/close", {}, dict(admin=200, operator_a=200, regulator_a=403, operator_b=404)),
    ("GET", "/v1/rules", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=200)),
    ("GET", "/v1/rules/{rule}", None, dict(admin=200, operator_a=200, regulator_a=200, operator_b=200)),
    ("POST", "/v1/rules", RULE, dict(admin=201, operator_a=403, regulator_a=403, operator_b=403)),
    ("PUT", "/v1/rules/{rule}", RULE, dict(admin=200, operator_a=403, regulator_a=403, operator_b=403)),
    ("DELETE", "/v1/rules/{rule}", None, dict(admin=204, operator_a=403, regulator_a=403, operator_b=403)),
]
BAD_KEYS = ("expired", "revoked", "malformed", "none")


@pytest.mark.parametrize("method,path,body,expected", ROUTES, ids=[f"{r[0]} {r[1].split('?')[0]}" for r in ROUTES])
@pytest.mark.parametrize("who", ["admin", "operator_a", "regulator_a", "operator_b", *BAD_KEYS])
async def test_route_access_by_role_region_and_key_state(api, world, method, path, body, expected, who):
    url = path.format(**{k: world[k] for k in ("device", "alert", "rule")})
    key = world["keys"][who]
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    r = await api.request(method, url, json=body, headers=headers)
    if who in BAD_KEYS:
        assert r.status_code == 401, r.text
        assert r.json()["error"] == "unauthorized" and r.headers["www-authenticate"] == "Bearer"
        return
    assert r.status_code == expected[who], r.text
    if r.status_code in (403, 404, 409, 422):
        assert r.json()["message"]


ROLES = ("admin", "operator_a", "regulator_a", "operator_b")


@pytest.fixture
async def secret_devices(pool, world):
    """An HJ 212 station and a JT/T 808 terminal in region A, provisioned with their secrets."""
    from wulian.ingest.device_secrets import JT808_AUTH, put
    from wulian.ingest.device_store import DeviceSpec
    from wulian.ingest.provisioning import provision_device

    station, terminal = f"SECH{uuid.uuid4().hex[:6]}", f"SECJ{uuid.uuid4().hex[:6]}"
    async with pool.acquire() as con:
        p = await provision_device(con, DeviceSpec(station, world["region"], "pollution", "hj212"),
                                   password_file=None)
        await provision_device(con, DeviceSpec(terminal, world["region"], "vehicle", "jt808"), password_file=None)
        code = f"authcode{uuid.uuid4().hex}"
        await put(con, terminal, {JT808_AUTH: code})
    return {"station": station, "terminal": terminal, "secrets": (p.secrets["hj212_pw"], code)}


def _get_urls(world, secret_devices) -> list[str]:
    """Every GET route of the API (from its OpenAPI document, so routes added later are covered), with
    path parameters filled in for both secret-holding devices and required query parameters given."""
    from wulian.settings import Settings

    query = {"from": "2026-01-01T00:00:00Z", "to": "2026-01-02T00:00:00Z", "metric": "PM25"}
    urls = []
    for path, ops in create_app(Settings()).openapi()["paths"].items():
        if "get" not in ops or path == "/v1/alerts/stream":  # an endless event stream
            continue
        for dev in (secret_devices["station"], secret_devices["terminal"]):
            params = [p for p in ops["get"].get("parameters", []) if p.get("required") and p["in"] == "query"]
            qs = "&".join(f"{p['name']}={dev if p['name'] == 'device' else query[p['name']]}" for p in params)
            # ids of other resources (channels, keys, ...) that no fixture creates: a 404 is fine
            url = path.format_map(collections.defaultdict(lambda: "1", device_id=dev, alert_id=world["alert"],
                                                          rule_id=world["rule"]))
            urls.append(f"{url}?{qs}" if qs else url)
    urls += [f"/v1/devices?region={world['region']}", "/v1/devices?stream=vehicle&limit=1000"]
    return sorted(set(urls))


@pytest.mark.parametrize("who", ROLES)
async def test_no_route_echoes_device_secrets_to_any_role(api, world, secret_devices, who):
    """For every role, the raw body of every GET route (device routes, lists, /latest, alerts...) holds
    neither the HJ 212 PW nor the JT/T 808 auth code."""
    headers = {"Authorization": f"Bearer {world['keys'][who]}"}
    described = []
    for url in _get_urls(world, secret_devices):
        r = await api.get(url, headers=headers)
        assert r.status_code in (200, 403, 404, 422), (url, r.status_code, r.text)  # 403: admin-only routes
        for secret in secret_devices["secrets"]:
            assert secret not in r.text, (who, url)
        if r.status_code == 200 and url.startswith("/v1/devices") and secret_devices["station"] in r.text:
            described.append(url.split("?")[0])
    # the device routes did describe the station to the roles that may see it (so the search had content)
    station = secret_devices["station"]
    expected = {"/v1/devices", f"/v1/devices/{station}", f"/v1/devices/{station}/latest",
                f"/v1/devices/{station}/events"}
    assert set(described) == (set() if who == "operator_b" else expected)


async def test_grafana_role_cannot_read_device_secrets(pool, secret_devices):
    import asyncpg

    async with pool.acquire() as con:
        async with con.transaction():
            await con.execute("SET LOCAL ROLE wulian_grafana")
            devices = await con.fetchval("SELECT string_agg(d::text, ' ') FROM devices d")
            assert secret_devices["station"] in devices
            # decimals out first (timestamps' microseconds, coordinates): an HJ 212 PW is 6 random digits,
            # which such a fraction can hold by chance; a leaked secret would stand as text of its own
            visible = re.sub(r"\d+\.\d+", " ", devices)
            for secret in secret_devices["secrets"]:
                assert secret not in visible
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await con.fetch("SELECT * FROM device_secrets")


async def test_grafana_role_reads_dead_letters_but_never_their_raw_payload(pool):
    """A refused HJ 212 packet keeps its PW in dead_letters.payload: the role may count and list dead
    letters (the overview dashboard) but not read the packet."""
    import asyncpg

    async with pool.acquire() as con:
        async with con.transaction():
            await con.execute("SET LOCAL ROLE wulian_grafana")
            assert await con.fetchval("SELECT count(*) >= 0 FROM (SELECT time, reason, topic, device_id, kind,"
                                      " detail FROM dead_letters LIMIT 1) d")
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                await con.fetch("SELECT payload FROM dead_letters LIMIT 1")


async def test_every_v1_route_requires_a_key(api, settings):
    """Covers routes added later too: no /v1 route answers anything but 401 without a key."""
    # from the OpenAPI document: app.routes may hold included routers rather than their routes
    paths = create_app(settings).openapi()["paths"]
    checked = 0
    for path, ops in paths.items():
        if not path.startswith("/v1"):
            continue
        url = path.replace("{", "").replace("}", "")
        for method in set(ops) & {"get", "post", "put", "patch", "delete"}:
            r = await api.request(method.upper(), url)
            assert r.status_code == 401, f"{method} {path} -> {r.status_code}"
            checked += 1
    assert checked >= 20  # the document really listed the routes


async def test_rate_limit_per_key(settings, world):
    settings.api.rate_limit_per_s = 0.5
    settings.api.rate_limit_burst = 3
    async with api_client(settings) as c:
        h_a = {"Authorization": f"Bearer {world['keys']['operator_a']}"}
        codes = [(await c.get("/v1/alerts", headers=h_a)).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        r = await c.get("/v1/alerts", headers=h_a)
        assert r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and r.json()["error"] == "rate_limited"
        # another key has its own bucket
        h_b = {"Authorization": f"Bearer {world['keys']['operator_b']}"}
        assert (await c.get("/v1/alerts", headers=h_b)).status_code == 200
        metrics = (await c.get("/metrics")).text
        assert "wulian_api_rate_limited_total 2.0" in metrics
        assert 'wulian_api_request_seconds_count{method="GET",route="/v1/alerts"}' in metrics


def test_secrets_are_redacted_from_log_lines():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        log_redaction.install()
        log = logging.getLogger("wulian.test")
        log.warning("auth with %s failed", "wl_0123456789ab_SuperSecretValue-_x")
        log.warning("packet QN=1;ST=32;CN=2011;PW=123456;MN=abc")
        log.warning("connecting to postgresql://wulian:hunter2@db:5432/wulian with password=hunter2")
        log.warning("terminal registered, auth_code=ABC123XYZ")
    finally:
        root.removeHandler(handler)
    out = stream.getvalue()
    for secret in ("SuperSecretValue", "PW=123456", "hunter2", "ABC123XYZ"):
        assert secret not in out
    assert "wl_0123456789ab_***" in out and "MN=abc" in out


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    subprocess.run(["bash", str(ROOT / "deploy/local/make-certs.sh"), str(d)], check=True, capture_output=True)
    return d


async def test_mqtt_over_tls(certs, tmp_path):
    tls_port = free_port()
    b = Broker(tmp_path, free_port(), extra_conf=(
        f"listener {tls_port} 127.0.0.1\ncafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\ntls_version tlsv1.2\n"))
    b.start()
    try:
        params = MqttParams("127.0.0.1", tls_port, f"tls-sub-{uuid.uuid4().hex[:6]}", tls=True,
                            ca_file=str(certs / "ca.crt"))
        sub = MqttConsumer(params, ["wl/+/air/+/+"])
        await sub.start()
        pub_params = MqttParams("127.0.0.1", tls_port, f"tls-pub-{uuid.uuid4().hex[:6]}", tls=True,
                                ca_file=str(certs / "ca.crt"))
        with MqttPublisher(pub_params) as pub:
            pub.publish("wl/tls/air/D1/telemetry", b'{"ok": 1}')
            assert pub.wait_acked(10)
        (msg,) = await asyncio.wait_for(sub.get_batch(1, 0), 10)
        sub.stop()
        assert msg.payload == b'{"ok": 1}'
        # a client that does not trust the CA cannot connect
        bad = MqttPublisher(MqttParams("127.0.0.1", tls_port, "tls-bad", tls=True, ca_file=None))
        with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
            bad.connect(timeout=3)
    finally:
        b.stop()


async def test_api_over_tls(settings, certs):
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning",
                                           ssl_certfile=str(certs / "server.crt"), ssl_keyfile=str(certs / "server.key")))
    task = asyncio.create_task(server.serve())
    await wait_until(lambda: server.started)
    try:
        ctx = ssl.create_default_context(cafile=str(certs / "ca.crt"))
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}", verify=ctx) as c:
            assert (await c.get("/healthz")).status_code == 200
        async with httpx.AsyncClient(base_url=f"https://127.0.0.1:{port}") as c:
            with pytest.raises(httpx.ConnectError):
                await c.get("/healthz")
    finally:
        server.should_exit = True
        await task
