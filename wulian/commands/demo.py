"""``wulian demo``: stack up, migrate, start ingest + API + simulators, print a live summary.

Runs until Ctrl-C or ``--duration`` seconds, then stops what it started (the stack keeps running;
``wulian stack down`` stops it).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request

from wulian.settings import get_settings

_SUMMARY_SQL = """
SELECT d.stream, count(*) FROM (
    SELECT device FROM readings WHERE time >= $1
    UNION ALL SELECT device FROM vehicle_positions WHERE time >= $1
    UNION ALL SELECT device FROM traffic_observations WHERE time >= $1) x
JOIN devices d ON d.id = x.device GROUP BY 1 ORDER BY 1"""


def _scrape(port: int) -> dict[str, float]:
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for line in text.splitlines():
        m = re.match(r"^(wulian_ingest_\w+?)(?:\{[^}]*\})? ([0-9.e+-]+)$", line)
        if m:
            out[m.group(1)] = out.get(m.group(1), 0.0) + float(m.group(2))
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
            streams = " ".join(f"{r['stream']}={r['count']}" for r in per_stream)
            print(f"[{time.strftime('%H:%M:%S')}] {rate:8.0f} records/s | totals {streams} | "
                  f"dead letters {dead} | acked msgs {m.get('wulian_ingest_messages_acked_total', 0):.0f} | "
                  f"API {api_url}", flush=True)
    finally:
        await con.close()


def run(args: argparse.Namespace) -> int:
    from datetime import datetime, timezone

    from wulian.commands.stack import run_stack

    s = get_settings()
    run_stack("up", s)
    exe = [sys.executable, "-m", "wulian"]
    subprocess.run(exe + ["db", "migrate"], check=True)
    start_wall = datetime.now(timezone.utc)
    env = dict(os.environ)
    procs = [
        subprocess.Popen(exe + ["ingest"], env=env),
        subprocess.Popen(exe + ["api"], env=env),
        subprocess.Popen(exe + ["derive"], env=env),
    ]
    time.sleep(2.0)
    procs.append(subprocess.Popen(exe + ["simulate", "--rate", str(args.rate), "--scale", str(args.scale),
                                         "--duration", "0"], env=env, stderr=subprocess.DEVNULL))
    api_url = f"http://{s.api.host}:{s.api.port}"
    print(f"Wulian demo: ingest, API ({api_url}/docs) and simulators running; Ctrl-C to stop.", flush=True)
    try:
        asyncio.run(_summary_loop(start_wall, args.duration, args.every, s.ingest.metrics_port, api_url))
    except KeyboardInterrupt:
        pass
    finally:
        for p in reversed(procs):
            p.send_signal(signal.SIGINT)
        for p in reversed(procs):
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="run the whole system with simulators and a live summary")
    p.add_argument("--duration", type=float, default=0.0, help="seconds (0: until Ctrl-C)")
    p.add_argument("--every", type=float, default=5.0, help="summary interval, seconds")
    p.add_argument("--rate", type=float, default=1.0, help="messages per simulated device per second")
    p.add_argument("--scale", type=float, default=1.0, help="multiply the simulated fleet size")
    p.set_defaults(func=run)
