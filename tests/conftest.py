"""Session fixtures: real PostgreSQL+TimescaleDB (the project's local stack, a fresh database per
session) and a real Mosquitto subprocess. If they cannot be started the tests fail, never skip."""
from __future__ import annotations

import asyncio
import contextlib
import faulthandler
import os
import sys
import shutil
import threading
import uuid
from pathlib import Path

import asyncpg
import pytest

from wulian.ingest.batch_writer import init_connection
from wulian.ingest.migrations import migrate
from tests.helpers import api_client
from tests.services import Broker, free_port
from wulian.local_stack import run_stack
from wulian.settings import DbSettings, IngestSettings, MqttSettings, Settings, StackSettings

ROOT = Path(__file__).resolve().parent.parent

# A test still running after STALL_S prints where it is (every thread, every task of the tests' event
# loop) into its captured output; pytest-timeout fails it at the configured timeout, which reports that
# output. CI stopped once at its time limit with a test hung and nothing to tell where.
STALL_S = float(os.environ.get("WULIAN_TEST_STALL_S", "300"))
_TEST_LOOP: list[asyncio.AbstractEventLoop] = []


def _dump_stall(nodeid: str) -> None:
    out = sys.__stderr__
    print(f"\n*** {nodeid} still running after {STALL_S:.0f} s: threads and tasks ***", file=out, flush=True)
    faulthandler.dump_traceback(file=out, all_threads=True)
    for loop in _TEST_LOOP[-1:]:
        with contextlib.suppress(RuntimeError):  # the set of tasks changed while read: what was read stays
            for task in list(asyncio.all_tasks(loop)):
                task.print_stack(limit=12, file=out)
    out.flush()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    timer = threading.Timer(STALL_S, _dump_stall, args=(item.nodeid,))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


@pytest.fixture(scope="session")
def pg_stack() -> Settings:
    """The project's own stack script, on free ports in a throwaway dir: never a running instance."""
    stack = StackSettings(dir=ROOT / ".stack" / f"test-{os.getpid()}", pg_port=free_port(), mqtt_port=free_port())
    settings = Settings(stack=stack)
    run_stack("up", settings)
    yield settings
    run_stack("down", settings, check=False)
    shutil.rmtree(stack.dir, ignore_errors=True)


@contextlib.asynccontextmanager
async def fresh_database(pg_stack: Settings, prefix: str = "wulian_test"):
    """A new database with TimescaleDB and all migrations; dropped on exit."""
    name = f"{prefix}_{uuid.uuid4().hex[:10]}"
    admin_dsn = pg_stack.db.dsn.rsplit("/", 1)[0] + "/postgres"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{name}"
    con = await asyncpg.connect(dsn)
    try:
        await migrate(con)
    finally:
        await con.close()
    try:
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture(scope="session")
async def test_dsn(pg_stack: Settings):
    """The session's database (tests that would disturb others take a fresh_database of their own)."""
    async with fresh_database(pg_stack) as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def pool(test_dsn: str):
    async with asyncpg.create_pool(test_dsn, min_size=1, max_size=6, init=init_connection) as p:
        yield p


@pytest.fixture(scope="session")
def broker(tmp_path_factory) -> Broker:
    b = Broker(tmp_path_factory.mktemp("mosquitto"), free_port())
    b.start()
    yield b
    b.stop()


@pytest.fixture
def settings(test_dsn: str, broker: Broker) -> Settings:
    """Settings pointing at the test database and broker, with a unique ingest session per test."""
    return Settings(
        db=DbSettings(dsn=test_dsn),
        # sessions outlive a test by seconds only: a shared test broker must not keep copying every message
        # into the queues of hundreds of finished tests' ingest sessions
        mqtt=MqttSettings(port=broker.port, client_id=f"test-ingest-{uuid.uuid4().hex[:8]}", session_expiry_s=20),
        ingest=IngestSettings(batch_size=2000, batch_delay_ms=5, metrics_port=0),
    )


@pytest.fixture(autouse=True)
def no_swallowed_thread_exceptions():
    """Fail a test during which a thread (paho's network thread included) died with an exception."""
    seen: list[BaseException] = []
    old = threading.excepthook
    threading.excepthook = lambda args: seen.append(args.exc_value)
    yield
    threading.excepthook = old
    assert not seen, f"exception in a thread: {seen[0]!r}"


# A rule left enabled in the session database binds the series of every later test. test_security's
# catch-all rules (every stream and metric, threshold 1 or 5, about a hundred of them) made the 24 h
# environment test raise ~4 million alert updates in one batch: it timed out after them, never alone.
LEFT_RULES = ("SELECT id, definition->>'name' AS name FROM rules WHERE id > $1 AND enabled"
              " AND coalesce(definition->>'device_id', '') = ''")


@pytest.fixture(autouse=True)
async def no_rule_left_for_other_tests(request):
    """Fail a test that leaves an enabled rule not scoped to one device (its own) in the session
    database; a test wanting a wider rule disables or deletes it before it ends."""
    if not _TEST_LOOP or _TEST_LOOP[-1] is not asyncio.get_running_loop():
        _TEST_LOOP.append(asyncio.get_running_loop())  # the loop a stalled test's tasks are read from
    if "test_dsn" not in request.fixturenames:  # no session database: nothing to leave behind
        yield
        return
    dsn = request.getfixturevalue("test_dsn")  # session-scoped, so set up already: no loop re-entry
    con = await asyncpg.connect(dsn)
    try:
        before = await con.fetchval("SELECT coalesce(max(id), 0) FROM rules")
    finally:
        await con.close()
    yield
    con = await asyncpg.connect(dsn)
    try:
        left = [(r["id"], r["name"]) for r in await con.fetch(LEFT_RULES, before)]
    finally:
        await con.close()
    assert not left, f"rules left enabled for every device of later tests: {left}"


async def wait_until(predicate, timeout: float = 20.0, event: asyncio.Event | None = None):
    """Await ``predicate()`` (sync or async) becoming truthy, waking on ``event`` when given."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        left = deadline - loop.time()
        if left <= 0:
            raise TimeoutError("condition not met in time")
        if event is not None:
            event.clear()
            try:
                await asyncio.wait_for(event.wait(), timeout=min(left, 0.5))
            except asyncio.TimeoutError:
                pass
        else:
            await asyncio.sleep(0.05)


@pytest.fixture
async def api(settings):
    """An httpx client on the real API app (lifespan run), no key: pass ``headers`` per request."""
    async with api_client(settings) as c:
        yield c
