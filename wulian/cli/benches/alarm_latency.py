"""``wulian bench alarm-latency``: publish -> alert visible in the API, while a background load flows.

Ingest and the API run as their own processes (``wulian ingest``, ``wulian api``) against a throwaway
database on the local stack; a load process publishes ``--load`` readings/s (10 per message) of normal
values, and the probe publishes one over-threshold reading for a fresh device every ``--every`` s,
then polls ``GET /v1/alerts?device=...`` until the alert is there. Latency = first successful poll -
publish time (poll interval 5 ms).
"""
from __future__ import annotations

import argparse
import dataclasses
import asyncio
import json
import multiprocessing as mp
import os
import subprocess
import sys
import time
import uuid

import asyncpg
import httpx
import numpy as np
import orjson

from wulian.ingest.migrations import migrate
from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.ingest.service import mqtt_params
from wulian.settings import child_env, get_settings


def _progress(msg: str) -> None:
    print(f"[bench alarm-latency] {msg}", file=sys.stderr, flush=True)


def _load(params: MqttParams, rate: float, seconds: float, stop) -> None:
    """Background publisher: ``rate`` readings/s in messages of 10, normal values (no alerts)."""
    per_msg = 10
    msgs_per_s = rate / per_msg
    with MqttPublisher(dataclasses.replace(params, client_id=f"bench-load-{os.getpid()}"), max_inflight=5000) as pub:
        t0 = time.monotonic()
        k = 0
        while not stop.is_set() and time.monotonic() - t0 < seconds:
            due = int((time.monotonic() - t0) * msgs_per_s)
            ts = time.time_ns() // 1_000_000
            while k < due:
                vals = {f"m{j}": 20.0 + (k + j) % 10 for j in range(per_msg)}
                pub.publish(f"wl/bench/grid/L{k % 500:04d}/telemetry", orjson.dumps({"ts": ts, "values": vals}))
                k += 1
            time.sleep(0.005)


async def bench(args: argparse.Namespace) -> dict:
    s = get_settings()
    admin_dsn = s.db.dsn.rsplit("/", 1)[0] + "/postgres"
    db = "wulian_bench_alarms"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    con = await asyncpg.connect(dsn)
    await migrate(con)
    from wulian.api.auth import create_key

    key = await create_key(con, name="bench", role="admin", regions=[])
    await con.execute(
        "INSERT INTO rules (definition) VALUES ($1::jsonb)",
        orjson.dumps({"id": 0, "name": "bench trigger", "kind": "upper", "metric": "trigger", "threshold": 100.0,
                      "severity": "major"}).decode())
    await con.close()
    api_port = args.api_port
    env = child_env(WULIAN_DB__DSN=dsn, WULIAN_API__PORT=str(api_port),
                    WULIAN_MQTT__CLIENT_ID=f"bench-ingest-{uuid.uuid4().hex[:6]}", WULIAN_INGEST__METRICS_PORT="0",
                    WULIAN_LOG_LEVEL="WARNING",
                    WULIAN_API__RATE_LIMIT_PER_S="0")  # the probe polls every 5 ms: measure the pipeline, not 429s
    exe = [sys.executable, "-m", "wulian"]
    procs = [subprocess.Popen(exe + ["ingest"], env=env), subprocess.Popen(exe + ["api"], env=env)]
    stop = mp.Event()
    loader = mp.Process(target=_load, args=(mqtt_params(s), args.load, args.seconds + 30, stop))
    latencies: list[float] = []
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api_port}", timeout=5,
                                     headers={"Authorization": f"Bearer {key}"}) as client:
            for _ in range(200):
                try:
                    if (await client.get("/healthz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                await asyncio.sleep(0.1)
            await asyncio.sleep(3.0)  # ingest connected and warmed up
            loader.start()
            t_load = time.monotonic()
            await asyncio.sleep(2.0)
            _progress(f"load running at {args.load:,.0f} readings/s; probing every {args.every}s")
            pub = MqttPublisher(mqtt_params(s, client_id=f"bench-probe-{uuid.uuid4().hex[:6]}"))
            pub.connect()
            t_end = time.monotonic() + args.seconds
            n = 0
            while time.monotonic() < t_end:
                dev = f"P{n:05d}"
                n += 1
                t0 = time.perf_counter()
                pub.publish(f"wl/bench/grid/{dev}/telemetry",
                            orjson.dumps({"ts": time.time_ns() // 1_000_000, "values": {"trigger": 500.0}}))
                while True:
                    r = await client.get("/v1/alerts", params={"device": dev})
                    if r.status_code == 200 and r.json()["count"]:
                        latencies.append((time.perf_counter() - t0) * 1000)
                        break
                    if time.perf_counter() - t0 > 30:
                        latencies.append(float("inf"))
                        break
                    await asyncio.sleep(0.005)
                await asyncio.sleep(max(0.0, args.every - (time.perf_counter() - t0)))
            pub.close()
            stop.set()
            loader.join(30)
            load_s = time.monotonic() - t_load
            await asyncio.sleep(2.0)  # the last batches commit
            con = await asyncpg.connect(dsn)
            flowed = await con.fetchval(
                "SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device WHERE d.device_id LIKE 'L%'")
            await con.close()
    finally:
        stop.set()
        if loader.is_alive():
            loader.join(10)
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    lat = np.array(latencies)
    return {
        "probes": len(latencies),
        "alarm_latency_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "alarm_latency_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "alarm_latency_max_ms": round(float(lat.max()), 1),
        "background_readings_per_s_target": args.load,
        "background_readings_per_s_stored": round(flowed / load_s, 1),
    }


def run_latency(args: argparse.Namespace) -> dict:
    return asyncio.run(bench(args))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--load", type=float, default=50_000, help="background readings/s")
    p.add_argument("--seconds", type=float, default=30.0, help="probing time")
    p.add_argument("--every", type=float, default=0.25, help="seconds between probes")
    p.add_argument("--api-port", type=int, default=18080)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("alarm-latency", help="publish -> alert in the API latency under load")
    p.add_argument("--json", action="store_true")
    add_arguments(p)
    p.set_defaults(func=lambda a: print(json.dumps(run_latency(a))) or 0)
