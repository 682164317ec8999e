"""Notifications end to end (issue 17): the outbox written with the alert transition, delivery through a
receiver that fails on purpose (down, random 500s, a sender killed with kill -9), signatures of every
channel kind, escalation, quiet hours, rate limits, failed/retry through the API, SSE resume."""
import asyncio
import base64
import hashlib
import hmac
import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import asyncpg
import httpx
import orjson
import pytest

from wulian.api.app import create_app
from wulian.api.auth import create_key
from wulian.core.timebase import CHINA_TZ
from wulian.ingest.alert_store import AlertTarget, ack_alert, escalate_due, raise_alert
from wulian.ingest.notify_channels import SIGNATURE_HEADER, TIMESTAMP_HEADER, webhook_signature
from wulian.ingest.notify_sender import Sender, SenderConfig
from tests.conftest import ROOT, wait_until
from tests.receiver import Receiver
from tests.services import serving

FAST = SenderConfig(poll_s=0.2, batch=50, concurrency=8, timeout_s=2.0, lease_s=2.0, backoff_base_s=0.05,
                    backoff_max_s=0.4, max_attempts=1000, rate_window_s=1.0, escalation_poll_s=0.05)
SECRET = "s3cr3t-签名"
# How long the receiver stays down in test_receiver_down_then_back_loses_nothing. Short by default so the
# suite stays short; WULIAN_TEST_RECEIVER_OUTAGE_S=120 gives issue 17's "receiver down 2 min" figures.
RECEIVER_OUTAGE_S = float(os.environ.get("WULIAN_TEST_RECEIVER_OUTAGE_S", "1.0"))


def h(key):
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def ctx(settings, pool):
    """A region of its own, an admin and an operator key, the API in process."""
    region = f"n{uuid.uuid4().hex[:8]}"
    async with pool.acquire() as con:
        admin = await create_key(con, name="admin", role="admin", regions=[])
        op = await create_key(con, name="duty", role="operator", regions=[region])
        dev = await con.fetchval("INSERT INTO devices (device_id, region, stream) VALUES ($1, $2, 'pollution')"
                                 " RETURNING id", f"D{uuid.uuid4().hex[:8]}", region)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as api:
            yield {"region": region, "admin": admin, "op": op, "dev": dev, "api": api, "settings": settings}


@pytest.fixture
async def sender_pool(test_dsn):
    async with asyncpg.create_pool(test_dsn, min_size=2, max_size=12) as p:
        yield p


@pytest.fixture
async def sender(sender_pool):
    """Runs a Sender in process while the test needs it (``start(cfg)``); stopped on exit."""
    stop = asyncio.Event()
    tasks = []

    def start(cfg: SenderConfig = FAST) -> Sender:
        s = Sender(sender_pool, cfg, httpx.AsyncClient(timeout=cfg.timeout_s))
        tasks.append(asyncio.create_task(s.run(stop)))
        return s

    yield start
    stop.set()
    await asyncio.gather(*tasks)


async def _channel(ctx, name, kind="webhook", url="http://127.0.0.1:9/x", secret=SECRET, **extra) -> int:
    r = await ctx["api"].post("/v1/channels", headers=h(ctx["admin"]), json={
        "name": f"{name}-{uuid.uuid4().hex[:6]}", "kind": kind, "url": url, "secret": secret, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


async def _route(ctx, channels, **extra) -> int:
    r = await ctx["api"].post("/v1/routes", headers=h(ctx["admin"]), json={
        "name": "duty", "regions": [ctx["region"]], "channels": channels, **extra})
    assert r.status_code == 201, r.text
    return r.json()["id"]


def _target(ctx, k: int, severity="major") -> AlertTarget:
    return AlertTarget(900000 + k, ctx["dev"], "dev", ctx["region"], "pollution", f"m{k}", severity, f"SO2 high {k}")


async def _raise(pool, ctx, k, severity="major") -> dict:
    async with pool.acquire() as con, con.transaction():
        return await raise_alert(con, _target(ctx, k, severity), time.time_ns(), 100.0 + k)


async def _keys(pool, channel) -> set[str]:
    async with pool.acquire() as con:
        return {r["idempotency_key"] for r in await con.fetch(
            "SELECT idempotency_key FROM notifications WHERE channel_id = $1", channel)}


async def _states(pool, channel) -> dict:
    async with pool.acquire() as con:
        return {r["state"]: r["n"] for r in await con.fetch(
            "SELECT state, count(*) AS n FROM notifications WHERE channel_id = $1 GROUP BY state", channel)}


def _report(name, figures):
    print(f"\n[notify figures] {name}: {figures}")


# --- the outbox and the API --------------------------------------------------------------------------

async def test_outbox_row_exists_only_if_the_transition_commits(pool, ctx):
    ch = await _channel(ctx, "tx")
    await _route(ctx, [ch])
    with pytest.raises(RuntimeError):
        async with pool.acquire() as con, con.transaction():
            assert await raise_alert(con, _target(ctx, 1), time.time_ns(), 1.0) is not None
            assert await con.fetchval("SELECT count(*) FROM notifications WHERE channel_id = $1", ch) == 1
            raise RuntimeError("the alert transition fails after the store wrote it")
    assert await _keys(pool, ch) == set()
    ev = await _raise(pool, ctx, 2)
    assert await _keys(pool, ch) == {f"wl-{ev['event_id']}-{(await _route_ids(pool, ch))[0]}-0"}


async def _route_ids(pool, ch):
    async with pool.acquire() as con:
        return [r["id"] for r in await con.fetch("SELECT id FROM notify_routes WHERE $1 = ANY(channels)", ch)]


async def test_channel_secret_never_returned_nor_granted_to_grafana(pool, ctx):
    api = ctx["api"]
    ch = await _channel(ctx, "ding", kind="dingtalk", url="https://oapi.dingtalk.com/robot/send?access_token=TOKEN123")
    for r in (await api.get(f"/v1/channels/{ch}", headers=h(ctx["admin"])),
              await api.get("/v1/channels", headers=h(ctx["admin"]))):
        assert r.status_code == 200
        assert SECRET not in r.text and "TOKEN123" not in r.text and '"secret"' not in r.text
    assert (await api.get(f"/v1/channels/{ch}", headers=h(ctx["admin"]))).json()["has_secret"] is True
    assert (await api.get("/v1/channels", headers=h(ctx["op"]))).status_code == 403
    bad = await api.post("/v1/routes", headers=h(ctx["admin"]), json={"name": "x", "channels": [2**31 - 1]})
    assert bad.status_code == 422 and bad.json()["error"] == "invalid_query"
    async with pool.acquire() as con:
        for table in ("notify_channel_secrets", "forward_station_secrets"):
            assert not await con.fetchval("SELECT has_table_privilege('wulian_grafana', $1, 'SELECT')", table)


# --- delivery under faults ---------------------------------------------------------------------------

async def test_webhook_signed_and_delivered_through_random_500s(pool, ctx, sender):
    rx = Receiver(fail_rate=0.4, seed=212).start()
    try:
        ch = await _channel(ctx, "hook", url=rx.url)
        await _route(ctx, [ch])
        n = 40
        for k in range(n):
            await _raise(pool, ctx, k)
        sender()
        expected = await _keys(pool, ch)
        assert len(expected) == n
        await wait_until(lambda: expected <= set(rx.delivered_keys()), timeout=60)
        await wait_until(lambda: _all_delivered(pool, ch, n), timeout=20)
        for r in rx.requests:  # every request signed: HMAC-SHA256 over "timestamp.body"
            assert r.headers[SIGNATURE_HEADER] == webhook_signature(SECRET, int(r.headers[TIMESTAMP_HEADER]), r.body)
            assert orjson.loads(r.body)["idempotency_key"] == r.headers["Idempotency-Key"]
        figures = rx.figures(expected)
        _report("random 500s (40%)", figures)
        assert figures["lost"] == 0 and figures["delivered"] == n and figures["failed_requests"] > 0
    finally:
        rx.stop()


async def _all_delivered(pool, ch, n):
    return (await _states(pool, ch)).get("delivered") == n


async def test_receiver_down_then_back_loses_nothing(pool, ctx, sender, tmp_path):
    """Receiver down for RECEIVER_OUTAGE_S (issue 17: "receiver down 2 min" with the env var at 120): the sender
    keeps retrying throughout, and once it is back every notification arrives exactly once after dedup."""
    outage_s, cfg = RECEIVER_OUTAGE_S, _outage_cfg(RECEIVER_OUTAGE_S)
    rx = Receiver()  # not started: the port refuses connections
    ch = await _channel(ctx, "down", url=rx.url)
    await _route(ctx, [ch])
    n = 20
    for k in range(n):
        await _raise(pool, ctx, k)
    loop = asyncio.get_running_loop()
    down_at = loop.time()
    sender(cfg)

    async def retried_thrice():
        async with pool.acquire() as con:
            return await con.fetchval("SELECT bool_and(attempts >= 3 AND last_error IS NOT NULL) FROM notifications"
                                      " WHERE channel_id = $1", ch)
    await wait_until(retried_thrice, timeout=30 + outage_s)
    await asyncio.sleep(max(0.0, down_at + outage_s - loop.time()))  # the rest of the outage
    async with pool.acquire() as con:
        before = await con.fetchrow(
            "SELECT count(*) FILTER (WHERE state = 'pending') AS pending, sum(attempts) AS attempts,"
            " min(attempts) AS min_attempts, extract(epoch FROM now() - min(last_attempt_at)) AS stalest_s"
            " FROM notifications WHERE channel_id = $1", ch)
    assert before["pending"] == n  # how recently each was retried is a figure below, not a timed assertion
    rx.start()
    back_at, outage_done_s = time.time(), loop.time() - down_at
    try:
        expected = await _keys(pool, ch)
        # Bounded: the next retry of each row is at most one backoff cap away.
        await wait_until(lambda: _all_delivered(pool, ch, n), timeout=cfg.backoff_max_s + 30)
        async with pool.acquire() as con:
            attempts = await con.fetchval("SELECT sum(attempts) FROM notifications WHERE channel_id = $1", ch)
        first_ok = {}
        for r in rx.delivered():
            first_ok.setdefault(r.headers.get("Idempotency-Key"), r.at)
        figures = {**rx.figures(expected), "outage_s": round(outage_done_s, 1), "backoff_max_s": cfg.backoff_max_s,
                   "attempts": attempts, "failed_attempts_during_outage": before["attempts"],
                   "min_failed_attempts_per_notification": before["min_attempts"],
                   "stalest_retry_at_back_s": round(float(before["stalest_s"]), 2),
                   "back_to_all_delivered_s": round(max(first_ok[k] for k in expected) - back_at, 2)}
        (tmp_path / "receiver_down.json").write_text(orjson.dumps(figures, option=orjson.OPT_INDENT_2).decode())
        _report(f"receiver down {outage_s:g} s", figures)
        assert figures["lost"] == 0 and figures["delivered"] == n and before["min_attempts"] >= 3
    finally:
        rx.stop()


async def test_failed_state_visible_and_retryable(pool, ctx, sender):
    rx = Receiver(fail_rate=1.0).start()
    try:
        ch = await _channel(ctx, "fail", url=rx.url)
        await _route(ctx, [ch])
        await _raise(pool, ctx, 1)
        sender(_cfg(max_attempts=3))
        api, op = ctx["api"], ctx["op"]

        async def failed():
            r = await api.get("/v1/notifications", params={"state": "failed", "channel": ch}, headers=h(op))
            return r.json()["data"]
        (row,) = await wait_until(failed, timeout=20)
        assert row["attempts"] == 3 and "HTTP 500" in row["last_error"]
        other = await api.get("/v1/notifications", params={"state": "failed", "channel": ch},
                              headers=h(await _other_key(pool)))
        assert other.json()["data"] == []  # another region's key does not see it
        assert (await api.post(f"/v1/notifications/{row['id']}/retry", headers=h(ctx["admin"]))).status_code == 200
        again = await api.post(f"/v1/notifications/{row['id']}/retry", headers=h(op))
        assert again.status_code == 409 and again.json()["error"] == "conflict"
        (entry,) = await _audit(ctx, action="notification.retry", object_id=str(row["id"]))  # the refused one: none
        assert (entry["before"]["state"], entry["before"]["attempts"]) == ("failed", 3)
        assert (entry["after"]["state"], entry["after"]["attempts"]) == ("pending", 0)
        assert entry["region"] == ctx["region"] and entry["source"] == "api"
        rx.fail_rate = 0.0
        await wait_until(lambda: _all_delivered(pool, ch, 1), timeout=20)
    finally:
        rx.stop()


def _cfg(**kw) -> SenderConfig:
    from dataclasses import replace
    return replace(FAST, **kw)


def _outage_cfg(outage_s: float) -> SenderConfig:
    """FAST with the backoff cap scaled to the outage (1/20 of it): about 20 retries spread over a long outage,
    and delivery within about one cap once the receiver is back."""
    return _cfg(backoff_max_s=max(FAST.backoff_max_s, outage_s / 20))


async def _other_key(pool):
    async with pool.acquire() as con:
        return await create_key(con, name="elsewhere", role="operator", regions=["elsewhere"])


def _sender_env(settings, **notify) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WULIAN_")}
    env.update({"WULIAN_DB__DSN": settings.db.dsn, "WULIAN_NOTIFY__METRICS_PORT": "0", "PYTHONPATH": str(ROOT)})
    base = {"poll_s": 0.2, "lease_s": 1.0, "backoff_base_s": 0.05, "backoff_max_s": 0.4, "max_attempts": 1000,
            "escalation_poll_s": 0.2, "concurrency": 4}
    env.update({f"WULIAN_NOTIFY__{k.upper()}": str(v) for k, v in {**base, **notify}.items()})
    return env


def _spawn_sender(env) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wulian", "notify", "run"], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def test_sender_killed_with_kill_9_loses_nothing(pool, ctx):
    rx = Receiver(delay_s=0.05).start()
    procs = []
    try:
        ch = await _channel(ctx, "kill9", url=rx.url)
        await _route(ctx, [ch])
        n = 60
        for k in range(n):
            await _raise(pool, ctx, k)
        expected = await _keys(pool, ch)
        env = _sender_env(ctx["settings"])
        procs.append(_spawn_sender(env))
        await wait_until(lambda: len(rx.delivered()) >= 12, timeout=60)
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        at_kill = len(set(rx.delivered_keys()))
        assert at_kill < n
        procs.append(_spawn_sender(env))
        await wait_until(lambda: _all_delivered(pool, ch, n), timeout=60)
        figures = rx.figures(expected)
        figures["delivered_before_kill"] = at_kill
        _report("sender kill -9", figures)
        assert figures["lost"] == 0 and figures["delivered"] == n
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
                p.wait(10)
        rx.stop()


# --- channel formats and signatures ------------------------------------------------------------------

async def test_wecom_dingtalk_feishu_formats_and_signatures(pool, ctx, sender):
    rx = Receiver().start()
    try:
        wecom = await _channel(ctx, "wecom", kind="wecom", url=rx.url.replace("/hook", "/cgi-bin/webhook/send"),
                               secret="WECOMKEY")
        ding = await _channel(ctx, "ding", kind="dingtalk", url=rx.url + "?access_token=TOK", secret="SECding")
        feishu = await _channel(ctx, "feishu", kind="feishu", url=rx.url + "/v2/bot/abc", secret="fsecret")
        for ch in (wecom, ding, feishu):
            await _route(ctx, [ch])
        await _raise(pool, ctx, 7, severity="critical")
        sender()
        await wait_until(lambda: len(rx.delivered()) >= 3, timeout=20)
        by_path = {urlsplit(r.path).path: r for r in rx.delivered()}
        w = by_path["/cgi-bin/webhook/send"]  # WeCom: the robot key in the URL, markdown, no signature
        assert parse_qs(urlsplit(w.path).query)["key"] == ["WECOMKEY"]
        assert orjson.loads(w.body)["msgtype"] == "markdown" and "SO2 high 7" in orjson.loads(w.body)["markdown"]["content"]
        d = by_path["/hook"]  # DingTalk 加签: sign = b64(HMAC-SHA256(secret, ts + "\n" + secret)) in the query
        q = parse_qs(urlsplit(d.path).query)
        ts = q["timestamp"][0]
        want = base64.b64encode(hmac.new(b"SECding", f"{ts}\nSECding".encode(), hashlib.sha256).digest()).decode()
        assert q["sign"] == [want] and q["access_token"] == ["TOK"]
        assert abs(int(ts) - time.time() * 1000) < 60_000
        assert orjson.loads(d.body)["msgtype"] == "markdown"
        f = orjson.loads(by_path["/hook/v2/bot/abc"].body)  # Feishu: HMAC keyed by ts + "\n" + secret, empty msg
        want = base64.b64encode(hmac.new(f"{f['timestamp']}\nfsecret".encode(), b"", hashlib.sha256).digest()).decode()
        assert f["sign"] == want and f["msg_type"] == "text" and "紧急" in f["content"]["text"]
    finally:
        rx.stop()


async def test_robot_error_code_is_a_failure(pool, ctx, sender):
    rx = Receiver(ok_body=b'{"errcode":310000,"errmsg":"sign not match"}').start()
    try:
        ch = await _channel(ctx, "badsign", kind="dingtalk", url=rx.url, secret="x")
        await _route(ctx, [ch])
        await _raise(pool, ctx, 1)
        sender(_cfg(max_attempts=2))
        await wait_until(lambda: _states_eq(pool, ch, {"failed": 1}), timeout=20)
    finally:
        rx.stop()


async def _states_eq(pool, ch, want):
    return await _states(pool, ch) == want


async def test_notify_test_command_sends_a_test_message(pool, ctx):
    rx = Receiver().start()
    try:
        r = await ctx["api"].post("/v1/channels", headers=h(ctx["admin"]), json={
            "name": f"cli-{uuid.uuid4().hex[:6]}", "kind": "webhook", "url": rx.url, "secret": SECRET})
        name = r.json()["name"]
        env = _sender_env(ctx["settings"])
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "wulian", "notify", "test", name],
                                      env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        (req,) = rx.delivered()
        assert orjson.loads(req.body)["alert"]["test"] is True
        missing = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "wulian", "notify", "test", "nope"],
                                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert missing.returncode == 2 and "no channel named 'nope'" in missing.stderr
    finally:
        rx.stop()


# --- audit (issue 18): every channel/route/outbox write and the forward CLI, without secrets -------------

async def _audit(ctx, **params) -> list[dict]:
    r = await ctx["api"].get("/v1/audit", params={"limit": 1000, **params}, headers=h(ctx["admin"]))
    assert r.status_code == 200, r.text
    return r.json()["data"]


async def test_channel_route_and_forward_writes_audited_with_before_after_and_no_secret(pool, ctx):
    api, admin = ctx["api"], h(ctx["admin"])
    url = "https://oapi.dingtalk.com/robot/send?access_token=TOKEN123"
    new_secret, upstream_pw = "n3w-" + SECRET, f"PW{uuid.uuid4().hex[:8]}"
    ch = await _channel(ctx, "aud", kind="dingtalk", url=url)
    r = await api.patch(f"/v1/channels/{ch}", headers=admin,
                        json={"secret": new_secret, "rate_per_window": 7, "url": url + "4"})
    assert r.status_code == 200, r.text
    rt = await _route(ctx, [ch])
    r = await api.put(f"/v1/routes/{rt}", headers=admin, json={
        "name": "duty-2", "regions": [ctx["region"]], "channels": [ch], "severities": ["critical"]})
    assert r.status_code == 200, r.text
    assert (await api.delete(f"/v1/routes/{rt}", headers=admin)).status_code == 204
    assert (await api.delete(f"/v1/channels/{ch}", headers=admin)).status_code == 204

    delete, update, create = await _audit(ctx, object_type="notify_channel", object_id=str(ch))
    assert [e["action"] for e in (create, update, delete)] == ["channel.create", "channel.update", "channel.delete"]
    assert create["before"] is None and create["after"]["kind"] == "dingtalk" and create["after"]["has_secret"]
    assert create["after"]["secret"] == "***" and create["after"]["url"].endswith("access_token=***")
    assert (update["before"]["rate_per_window"], update["after"]["rate_per_window"]) == (0, 7)
    assert update["after"]["secret"] == "***" and "secret" not in update["before"]
    assert delete["before"]["id"] == ch and delete["after"] is None
    rdel, rupd, rnew = await _audit(ctx, object_type="notify_route", object_id=str(rt))
    assert [e["action"] for e in (rnew, rupd, rdel)] == ["route.create", "route.update", "route.delete"]
    assert rnew["before"] is None and rnew["after"]["channels"] == [ch]
    assert (rupd["before"]["name"], rupd["before"]["severities"]) == ("duty", [])
    assert (rupd["after"]["name"], rupd["after"]["severities"]) == ("duty-2", ["critical"])
    assert rdel["before"]["name"] == "duty-2" and rdel["after"] is None
    assert {(e["actor"], e["source"]) for e in (create, update, delete, rnew, rupd, rdel)} == {("admin", "api")}

    # the CLI writes of `wulian forward`: an upstream created then changed, a station mapped with its PW
    name = f"prov-{uuid.uuid4().hex[:6]}"
    env = _sender_env(ctx["settings"])
    for args in (["upstream", name, "127.0.0.1", "9"], ["upstream", name, "127.0.0.1", "10"],
                 ["station", name, "DAUD01", "PROVAUD01", upstream_pw]):
        out = await asyncio.to_thread(subprocess.run, [sys.executable, "-m", "wulian", "forward", *args],
                                      env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
    upd, new = await _audit(ctx, object_type="forward_upstream", object_id=name)
    assert (new["action"], new["before"], new["after"]["port"]) == ("forward_upstream.create", None, 9)
    assert (upd["action"], upd["before"]["port"], upd["after"]["port"]) == ("forward_upstream.update", 9, 10)
    (st,) = await _audit(ctx, object_type="forward_station", object_id=f"{name}/DAUD01")
    assert st["action"] == "forward_station.create" and st["before"] is None
    assert st["after"] == {"upstream": name, "device_id": "DAUD01", "upstream_mn": "PROVAUD01", "upstream_pw": "***"}
    assert all(e["source"] == "cli" and e["actor"].startswith("cli:") for e in (new, upd, st))

    # no secret anywhere in the log: not through the API, not in the stored JSON
    text = (await api.get("/v1/audit", params={"limit": 1000}, headers=admin)).text
    async with pool.acquire() as con:
        stored = " ".join(f"{r['before']} {r['after']}" for r in await con.fetch(
            "SELECT before::text AS before, after::text AS after FROM audit_log"))
    for secret in (SECRET, new_secret, "TOKEN123", upstream_pw):
        for blob in (text, stored):
            assert secret not in blob and orjson.dumps(secret).decode().strip('"') not in blob


# --- escalation, quiet hours, rate limits ------------------------------------------------------------

async def test_unacknowledged_major_alert_escalates_and_ack_stops_it(pool, ctx, sender):
    rx = Receiver().start()
    try:
        chans = [await _channel(ctx, f"esc{i}", url=f"{rx.url}/{i}") for i in range(3)]
        await _route(ctx, chans, escalate_after_s=0.3)
        ev = await _raise(pool, ctx, 1)
        sender()
        await wait_until(lambda: {r.path for r in rx.delivered()} >= {"/hook/0", "/hook/1", "/hook/2"}, timeout=20)
        detail = (await ctx["api"].get(f"/v1/alerts/{ev['id']}", headers=h(ctx["op"]))).json()
        events = [e["event"] for e in detail["history"]]
        assert events == ["raised", "escalated", "escalated"]
        assert "step 1" in detail["history"][1]["comment"] and "step 2" in detail["history"][2]["comment"]
        # a second alert, acknowledged before its escalation is due: nothing more is sent
        ev2 = await _raise(pool, ctx, 2)
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT count(*) FROM alert_escalations WHERE alert_id = $1", ev2["id"]) == 1
        r = await ctx["api"].post(f"/v1/alerts/{ev2['id']}/ack", headers=h(ctx["op"]), json={"comment": "on it"})
        assert r.status_code == 200
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT count(*) FROM alert_escalations WHERE alert_id = $1", ev2["id"]) == 0
            async with con.transaction():
                await con.execute("SELECT pg_sleep(0.35)")
                assert await escalate_due(con) == 0
            hist = await con.fetch("SELECT event FROM alert_events WHERE alert_id = $1 ORDER BY id", ev2["id"])
        assert [x["event"] for x in hist] == ["raised", "acknowledged"]
        # a minor alert does not escalate under the default policy (major, critical)
        ev3 = await _raise(pool, ctx, 3, severity="minor")
        async with pool.acquire() as con:
            assert await con.fetchval("SELECT count(*) FROM alert_escalations WHERE alert_id = $1", ev3["id"]) == 0
    finally:
        rx.stop()


def _quiet_now() -> tuple[str, str]:
    now = datetime.now(CHINA_TZ)
    return (now - timedelta(hours=1)).strftime("%H:%M"), (now + timedelta(hours=1)).strftime("%H:%M")


async def test_quiet_hours_hold_all_but_critical(pool, ctx, sender):
    rx = Receiver().start()
    try:
        start, end = _quiet_now()
        ch = await _channel(ctx, "quiet", url=rx.url, quiet_start=start, quiet_end=end)
        await _route(ctx, [ch])
        major = await _raise(pool, ctx, 1, severity="major")
        crit = await _raise(pool, ctx, 2, severity="critical")
        sender()
        await wait_until(lambda: len(rx.delivered()) >= 1, timeout=20)
        (got,) = rx.delivered()
        assert orjson.loads(got.body)["alert"]["id"] == crit["id"]
        async with pool.acquire() as con:
            held = await con.fetchrow("SELECT state, attempts, next_attempt_at > now() + interval '50 minutes' AS later"
                                      " FROM notifications WHERE alert_id = $1", major["id"])
        assert dict(held) == {"state": "pending", "attempts": 0, "later": True}
        r = await ctx["api"].patch(f"/v1/channels/{ch}", headers=h(ctx["admin"]), json={"clear_quiet_hours": True})
        assert r.status_code == 200 and r.json()["quiet_start"] is None
        await wait_until(lambda: len(rx.delivered()) == 2, timeout=20)
    finally:
        rx.stop()


async def test_rate_limit_per_channel(pool, ctx, sender, sender_pool):
    rx = Receiver().start()
    try:
        ch = await _channel(ctx, "rate", url=rx.url, rate_per_window=2)
        await _route(ctx, [ch])
        n = 6
        for k in range(n):
            await _raise(pool, ctx, k)
        sender()
        await wait_until(lambda: _all_delivered(pool, ch, n), timeout=30)
        async with pool.acquire() as con:
            sent = [r["t"] for r in await con.fetch(
                "SELECT last_attempt_at AS t FROM notifications WHERE channel_id = $1 ORDER BY t", ch)]
        # at most 2 sends in any window of rate_window_s (1 s): the 3rd after the 1st by a full window
        assert all((sent[i + 2] - sent[i]).total_seconds() >= FAST.rate_window_s for i in range(n - 2))
    finally:
        rx.stop()


# --- SSE that resumes --------------------------------------------------------------------------------

async def _read_events(lines, want: int) -> list[dict]:
    out, cur = [], {}
    async for line in lines:
        if line.startswith("id: "):
            cur["id"] = int(line[4:])
        elif line.startswith("data: "):
            cur["data"] = orjson.loads(line[6:])
        elif line == "" and "data" in cur:
            out.append(cur)
            cur = {}
            if len(out) == want:
                return out
    return out


async def test_sse_resumes_from_last_event_id(pool, ctx, settings):
    app = create_app(settings)
    with serving(app) as base:
        async with httpx.AsyncClient(base_url=base, timeout=20) as c:
            hdr = h(ctx["op"])
            async with c.stream("GET", "/v1/alerts/stream", headers=hdr) as resp:
                lines = resp.aiter_lines()
                await _raise(pool, ctx, 1)
                first = await asyncio.wait_for(_read_events(lines, 1), 10)
            last_id = first[0]["id"]
            assert first[0]["data"]["event_id"] == last_id and first[0]["data"]["event"] == "raised"
            # while the client is away: two raises, an acknowledgement, a clear-free close is illegal, so ack
            missed = [await _raise(pool, ctx, 2), await _raise(pool, ctx, 3)]
            async with pool.acquire() as con, con.transaction():
                await ack_alert(con, missed[0]["id"], "active", "duty", "seen")
            async with c.stream("GET", "/v1/alerts/stream", headers={**hdr, "Last-Event-ID": str(last_id)}) as resp:
                lines = resp.aiter_lines()
                replayed = await asyncio.wait_for(_read_events(lines, 3), 10)
                live_ev = await _raise(pool, ctx, 4)
                live = await asyncio.wait_for(_read_events(lines, 1), 10)
    got = [(e["data"]["id"], e["data"]["event"]) for e in replayed]
    assert got == [(missed[0]["id"], "raised"), (missed[1]["id"], "raised"), (missed[0]["id"], "acknowledged")]
    ids = [e["id"] for e in replayed + live]
    assert ids == sorted(ids) and ids[0] > last_id
    assert live[0]["data"]["id"] == live_ev["id"] and live[0]["id"] == live_ev["event_id"]
    print(f"\n[notify figures] SSE resume: missed 3, replayed {len(replayed)} in order, then live 1")


def test_redacted_urls_keep_no_token_wherever_the_robot_carries_it():
    from wulian.ingest.notify_channels import redact_url

    cases = {
        "https://qyapi.weixin.qq.com/cgi-bin/webhook/send?key=693a91f6-7xxx": "693a91f6",
        "https://oapi.dingtalk.com/robot/send?access_token=abc123def456": "abc123def456",
        "https://open.feishu.cn/open-apis/bot/v2/hook/2f6a7c1e-8b3d-4e5f-9a0b-1c2d3e4f5a6b": "2f6a7c1e",
        "https://user:s3cretpass@hooks.example.org/notify": "s3cretpass",
        "https://hooks.example.org/hooks/A1b2C3d4E5f6G7h8I9": "A1b2C3d4E5f6G7h8I9",
    }
    for url, token in cases.items():
        red = redact_url(url)
        assert token not in red and "***" in red, red
    assert redact_url("https://open.feishu.cn/open-apis/bot/v2/hook/") == "https://open.feishu.cn/open-apis/bot/v2/hook/"


async def test_a_channel_url_the_sender_cannot_use_is_refused(ctx):
    """Schemathesis found a 500: an unbalanced '[' in the host made urlsplit raise when the channel was read back."""
    for url in ("http://r[x/hook", "http://rÚ/hook", "http:///nohost"):
        r = await ctx["api"].post("/v1/channels", headers=h(ctx["admin"]),
                                  json={"name": f"bad-{uuid.uuid4().hex[:6]}", "kind": "webhook", "url": url})
        assert r.status_code == 422, (url, r.text)
