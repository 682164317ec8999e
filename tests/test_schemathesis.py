"""Schemathesis against our own OpenAPI document: generated requests to every operation, with an admin
key, through a real uvicorn server on the test database. No response may be a 5xx, and every response
must conform to the schema the API publishes (body, content type). Bounded examples per operation."""
import uuid

import asyncpg
import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings as hsettings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import content_type_conformance, response_schema_conformance

from wulian.api.app import create_app
from wulian.api.auth import API_KEY_HEADER, create_key
from tests.conftest import fresh_database
from tests.services import serving
from wulian.settings import ApiSettings, DbSettings, MqttSettings, Settings

EXAMPLES = 40
SKIP = {"/v1/alerts/stream"}  # an endless SSE stream (covered by tests/test_alerts.py)
CHECKS = [not_a_server_error, response_schema_conformance, content_type_conformance]


def _send(client: httpx.Client, kw: dict) -> httpx.Response:
    """Send a case with httpx (schemathesis' own transport is requests, whose urllib3 in this venv is
    replaced by urllib3-future, which it cannot drive)."""
    body = {"json": kw["json"]} if "json" in kw else {}
    if "data" in kw:
        data = kw["data"]
        body = {"content": data} if isinstance(data, (bytes, str)) else {"data": data}
    return client.request(kw["method"], kw["url"], params=kw.get("params") or None, headers=kw.get("headers"),
                          cookies=kw.get("cookies") or None, **body)


@pytest.fixture(scope="module")
async def own_dsn(pg_stack):
    """Its own database: the rules it creates (hundreds, some matching everything) must not reach other
    tests' alarm engines."""
    async with fresh_database(pg_stack, "wulian_schemathesis") as dsn:
        yield dsn


@pytest.fixture(scope="module")
async def own_pool(own_dsn):
    async with asyncpg.create_pool(own_dsn, min_size=1, max_size=2) as p:
        yield p


@pytest.fixture(scope="module")
def api_url(own_dsn, broker):
    # /healthz must see the suite's own broker, never whatever listens on the default port
    settings = Settings(db=DbSettings(dsn=own_dsn, pool_min=1, pool_max=4), mqtt=MqttSettings(port=broker.port),
                        api=ApiSettings(rate_limit_per_s=0))  # rate limits have their own tests
    with serving(create_app(settings)) as url:
        yield url


@pytest.fixture
async def admin_key(own_pool):
    async with own_pool.acquire() as con:
        # a device and an alert, so generated ids sometimes hit real rows
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, 'stx', 'air')"
                                 " ON CONFLICT (device_id) DO UPDATE SET region = 'stx' RETURNING id",
                                 f"ST{uuid.uuid4().hex[:6]}")
        await con.execute("INSERT INTO alerts (rule_id, device, device_id, region, stream, metric, severity, state,"
                          " title, raised_at, last_seen) VALUES (1, $1, 'x', 'stx', 'air', 'm', 'major', 'active',"
                          " 't', now(), now())", dev)
        return await create_key(con, name="schemathesis", role="admin", regions=[])


def test_every_operation_no_5xx_and_responses_match_the_schema(api_url, admin_key):
    schema = schemathesis.openapi.from_url(f"{api_url}/openapi.json")
    # both security schemes carry the key, so generated values for either never replace it (auth failures
    # have their own tests in tests/test_security.py)
    headers = {"Authorization": f"Bearer {admin_key}", API_KEY_HEADER: admin_key}
    ran: dict[str, int] = {}
    failures: list[str] = []
    client = httpx.Client(timeout=20)
    for result in schema.get_all_operations():
        op = result.ok()
        if op.path in SKIP:
            continue
        label = f"{op.method.upper()} {op.path}"

        @hsettings(max_examples=EXAMPLES, deadline=None, database=None,
                   suppress_health_check=list(HealthCheck))
        @given(case=op.as_strategy())
        def run(case):
            ran[label] = ran.get(label, 0) + 1
            case.validate_response(_send(client, case.as_transport_kwargs(base_url=api_url, headers=headers)),
                                   checks=CHECKS)

        try:
            run()
        except (Exception, BaseExceptionGroup) as exc:  # every operation's failure, not only the first
            inner = getattr(exc, "exceptions", None)
            failures.append(f"{label}: {str(exc)[:1500]} {repr(inner[0])[:1500] if inner else ''}")
    client.close()
    print(f"schemathesis: {sum(ran.values())} cases over {len(ran)} operations")
    assert len(ran) >= 10, ran
    assert not failures, "\n\n".join(failures)
