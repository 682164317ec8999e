"""``wulian demo``: stack up, migrate, start ingest + API + simulators, print a live summary.

Runs until Ctrl-C or ``--duration`` seconds, then stops what it started (the stack keeps running;
``wulian stack down`` stops it).
"""
from __future__ import annotations

import argparse
import asyncio
import re
import signal
import subprocess
import sys
import time
import urllib.request

from wulian.settings import child_env, get_settings

_SUMMARY_SQL = """
SELECT d.stream, count(*) FROM (
    SELECT device FROM readings WHERE time >= $1
    UNION ALL SELECT device FROM vehicle_positions WHERE time >= $1
    UNION ALL SELECT device FROM traffic_observations WHERE time >= $1) x
JOIN devices d ON d.id = x.device GROUP BY 1 ORDER BY 1"""


_DERIVED_SQL = """
SELECT (SELECT count(*) FROM env_aqi_hourly) AS aqi_hours,
       (SELECT count(*) FROM env_water_hourly) AS water_hours,
       (SELECT count(*) FROM traffic_forecasts WHERE issued_at > now() - interval '1 day') AS forecasts,
       (SELECT count(*) FROM vehicle_violations) AS violations,
       (SELECT count(*) FROM meter_consumption_daily) AS meter_days"""


def _scrape(port: int) -> dict[str, float]:
    """Ingest's Prometheus counters: ``name`` (summed over labels) and ``name{labels}``."""
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(wulian_ingest_\w+?)(\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(3))
            if m.group(2):
                out[m.group(1) + m.group(2)] = float(m.group(3))
    return out


async def _summary_loop(start_wall, duration: float, every: float, metrics_port: int, api_url: str) -> None:
    import asyncpg

    s = get_settings()
    con = await asyncpg.connect(s.db.dsn)
    t0 = time.monotonic()
    last_n, last_t = 0.0, time.monotonic()
    try:
        while duration <= 0 or time.monotonic() - t0 < duration:
            await asyncio.sleep(every)
            m = _scrape(metrics_port)
            n = m.get("wulian_ingest_records_written_total", 0.0)
            now = time.monotonic()
            rate = (n - last_n) / (now - last_t)
            last_n, last_t = n, now
            per_stream = await con.fetch(_SUMMARY_SQL, start_wall)
            dead = await con.fetchval("SELECT count(*) FROM dead_letters WHERE time >= $1", start_wall)
            alerts = await con.fetchval("SELECT count(*) FROM alerts WHERE state IN ('active', 'acknowledged')")
            derived = await con.fetchrow(_DERIVED_SQL)
            streams = " ".join(f"{r['stream']}={r['count']}" for r in per_stream)
            written = {t: m.get('wulian_ingest_records_written_total{table="%s"}' % t, 0.0)
                       for t in ("readings", "vehicle_positions", "traffic_observations")}
            tables = " ".join(f"{t}={n:.0f}" for t, n in written.items())
            print(f"[{time.strftime('%H:%M:%S')}] {rate:8.0f} records/s | stored {tables} | live now: {streams} | "
                  f"dead letters {dead} | open alerts {alerts} | "
                  + " ".join(f"{k}={v}" for k, v in derived.items()) + f" | API {api_url}", flush=True)
    finally:
        await con.close()


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from wulian.local_stack import run_stack

    s = get_settings()
    run_stack("up", s)
    exe = [sys.executable, "-m", "wulian"]
    subprocess.run(exe + ["db", "migrate"], check=True)
    from wulian.core.streams_profiles import PROFILES

    for name in PROFILES:  # the shipped profiles as registry streams (exit 2 when already installed: kept)
        subprocess.run(exe + ["stream", "add", "--profile", name], stdout=subprocess.DEVNULL)
    start_wall = datetime.now(timezone.utc)
    env = child_env()
    # derived-data jobs run more often than in production so the demo shows results within a minute
    for var, val in {"WULIAN_TRAFFIC__INTERVAL_S": "30", "WULIAN_ENVIRONMENT__INTERVAL_S": "30",
                     "WULIAN_ENERGY__VEHICLES_INTERVAL_S": "30", "WULIAN_ENERGY__GRID_INTERVAL_S": "30",
                     "WULIAN_ENERGY__METERS_INTERVAL_S": "60"}.items():
        env.setdefault(var, val)
    quiet = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    procs = [subprocess.Popen(exe + ["ingest"], env=env), subprocess.Popen(exe + ["api"], env=env),
             # the notification sender: idle until channels and routes are configured (/v1/channels, /v1/routes)
             subprocess.Popen(exe + ["notify", "run"], env=env)]
    try:
        time.sleep(3.0)
        # History first: time-compressed scenarios stamped in the recent past (an exceedance, an AQI
        # episode, a river pulse, fatigue, a geofence breach, an outage, a leak, a tampered meter), and
        # then the Los-loop replay in its own region. The jobs start once the history is stored.
        print("[demo] publishing a day of history (environment, energy and transport scenarios) ...", flush=True)
        history = [subprocess.Popen(exe + ["simulate-env", "--hours", "24"], **quiet),
                   subprocess.Popen(exe + ["simulate-energy"], **quiet)]
        for p in history:
            p.wait()
        _wait_drained(s.ingest.metrics_port)
        procs.append(subprocess.Popen(exe + ["derive"], env=env))
        # the traffic job follows the newest observation of each region, so the replay may start now
        procs.append(subprocess.Popen(exe + ["simulate-traffic", "--region", "losloop", "--sensors", "40",
                                             *_traffic_replay_args()], **quiet))
        procs.append(subprocess.Popen(exe + ["simulate", "--rate", str(args.rate), "--scale", str(args.scale),
                                             "--duration", "0", "--bad-rate", "0.002"], **quiet))
        procs.append(subprocess.Popen(exe + ["simulate", "--rate", str(args.rate), "--scale", str(args.scale),
                                             "--duration", "0", "--seed", "8",  # its own MQTT client id
                                             "--profile", ",".join(PROFILES)], **quiet))
    except BaseException:
        _stop(procs)
        raise
    api_url = f"http://{s.api.host}:{s.api.port}"
    print(f"Wulian demo: ingest, API ({api_url}/docs), notification sender and simulators running; Ctrl-C to stop.",
          flush=True)
    try:
        asyncio.run(_summary_loop(start_wall, args.duration, args.every, s.ingest.metrics_port, api_url))
    except KeyboardInterrupt:
        pass
    finally:
        _stop(procs)
    return 0


def _traffic_replay_args(history_rows: int = 432, replay_rows: int = 150, step_s: int = 300) -> list[str]:
    """Los-loop stamped so that 1.5 days of history end 150 five-minute rows before now, replayed at one
    row a second: the forecaster fits on the history, forecasts and detects as the replay arrives, with
    an injected incident 40 rows in, and the last row lands just before now (never in the future)."""
    from datetime import datetime, timedelta

    from wulian.core.timebase import CHINA_TZ

    now = datetime.now(CHINA_TZ).replace(second=0, microsecond=0)
    now -= timedelta(minutes=now.minute % 5)
    start = now - timedelta(seconds=(history_rows + replay_rows + 1) * step_s)
    return ["--start", start.strftime("%Y-%m-%dT%H:%M"), "--rows", str(history_rows + replay_rows),
            "--history-days", f"{history_rows * step_s / 86400:g}", "--speedup", "1",
            "--incident", f"0@{history_rows + 40}"]


def _stop(procs: list[subprocess.Popen]) -> None:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGINT)
    for p in reversed(procs):
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()


def _wait_drained(metrics_port: int, quiet_s: float = 3.0, limit_s: float = 300.0) -> None:
    """Until ingest has acknowledged nothing new for ``quiet_s`` (the published history is stored)."""
    last, since, t0 = -1.0, time.monotonic(), time.monotonic()
    while time.monotonic() - t0 < limit_s:
        n = _scrape(metrics_port).get("wulian_ingest_messages_acked_total", 0.0)
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            return
        time.sleep(0.5)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole system with simulators and a live summary")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--every", type=float, default=5.0, help="summary interval, seconds")
    p.add_argument("--rate", type=float, default=1.0, help="messages per simulated device per second")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the simulated fleet size")
    p.set_defaults(func=run)
