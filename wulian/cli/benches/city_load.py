"""``wulian loadtest``: a city's device mix at its real rates, time-compressed step by step until ingest
lags; the highest factor it sustains is the deployment's headroom.

Method. A throwaway database on the configured PostgreSQL, every simulated device provisioned, one
never-firing rule per scalar stream (so every reading passes the alarm engine, as in production) and
the probe rule; ``wulian ingest`` as its own process on a topic tree of its own (``wlload/...``), so a
running ingest on the same broker never sees the load. Paced publisher processes (``simulators.paced``,
``--publishers`` of them sharing the devices) send the mix (``simulators.city_mix``) with simulated time
running ``factor`` times faster than the wall clock. Factors 1, 2, 4, ... are each held ``step_s``; the first step that
lags ends the climb (if factor 1 lags, 1/2, 1/4, ... are tried down to ``min_factor``). Between steps
nothing is queued: a lagging step's backlog is drained first.

A step is *sustained* when messages stored (committed and acknowledged by ingest, read from its
Prometheus counter) reach ``LOAD_REACHED`` (95 %) of the offered rate and the backlog (accepted by the
broker, not yet stored) grew by less than 5 % of the step's offered messages. The headroom is the last
sustained factor, never one the run did not reach. Per step: offered and stored messages/s and rows/s,
the alarm latency (publish -> alert event, ``alarm_latency.AlertProbe``; p99 counts only on a sustained
step), bytes added to the hypertables per simulated day, and CPU seconds per stage (ingest, PostgreSQL,
broker, publisher) from /proc. At the end every stored row is counted against what was published: lost
must be 0.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import multiprocessing as mp
import subprocess
import sys
import time
import urllib.request
import uuid
from dataclasses import dataclass

import asyncpg
import numpy as np
import orjson

from wulian.cli.benches.alarm_latency import LOAD_REACHED, PROBE_RULE, AlertProbe
from wulian.cli.benches.ingest import PUBLISH_WINDOW
from wulian.cli.benches.machine import CpuWindow, stack_pids
from wulian.core.const import SCALAR_STREAMS, Stream
from wulian.ingest import device_store
from wulian.ingest.chaos.stack import free_port
from wulian.ingest.codecs.contract import PayloadLimits
from wulian.ingest.codecs.registry import decode_message
from wulian.ingest.migrations import migrate
from wulian.ingest.service import mqtt_params
from wulian.settings import Settings, child_env
from wulian.simulators.city_mix import CityMix, PayloadSource, device_ids
from wulian.simulators.paced import SharedCounters, run_paced

PREFIX = "wlload"  # the load's own topic tree: another ingest on the same broker never consumes it
DATABASE_PREFIX = "wulian_loadtest_"  # + a run id: two runs on one server never share a database
BACKLOG_GROWTH = 1.0 - LOAD_REACHED  # of a step's offered messages: more backlog growth is lagging
# ...or this many seconds of offered messages, if more: what is in flight in a pipeline that keeps up
# (batch delay, a commit taking a second on a loaded machine) is not a growing backlog
IN_FLIGHT_S = 2.0
ROW_TABLES = ("readings", "vehicle_positions", "traffic_observations")
PROBE_STREAM = Stream.AIR
_SIM_MARGIN_S = 120.0  # the simulated clock ends this far behind the wall clock at the latest


def _progress(msg: str) -> None:
    print(f"[loadtest] {msg}", file=sys.stderr, flush=True)


# -- what a step was ------------------------------------------------------------------------------

def judge_step(offered_msgs: float, stored_msgs: float, backlog_start: int, backlog_end: int,
               wall_s: float) -> tuple[bool, str]:
    """(sustained, why): stored >= ``LOAD_REACHED`` of offered, and the backlog did not grow by more
    than ``BACKLOG_GROWTH`` of the offered messages (or ``IN_FLIGHT_S`` of them, if more)."""
    if offered_msgs <= 0:
        return False, "nothing offered"
    ratio = stored_msgs / offered_msgs
    growth = backlog_end - backlog_start
    allowed = max(BACKLOG_GROWTH * offered_msgs, IN_FLIGHT_S * offered_msgs / wall_s)
    if ratio < LOAD_REACHED:
        return False, f"stored {ratio:.1%} of offered (< {LOAD_REACHED:.0%})"
    if growth > allowed:
        return False, f"backlog grew by {growth:,} messages (> {allowed:,.0f} allowed of {offered_msgs:,.0f} offered)"
    return True, f"stored {ratio:.1%} of offered, backlog {backlog_start:,} -> {backlog_end:,}"


def latency_summary(latencies_ms: list[float | None], counts: bool) -> dict:
    """Probe latencies of one step; a timed-out probe is ``None``. The p99 counts only on a sustained
    step (``counts``): a latency under a load the machine did not carry says nothing (issue 14)."""
    got = np.array([x for x in latencies_ms if x is not None])
    timeouts = sum(x is None for x in latencies_ms)
    out = {"probes": len(latencies_ms), "timeouts": timeouts, "counts": counts}
    if not len(got):
        return {**out, "p50_ms": None, "p99_ms": None, "max_ms": None}
    p99 = None if timeouts else round(float(np.percentile(got, 99)), 1)  # a timeout is above any p99 we saw
    out.update({"p50_ms": round(float(np.percentile(got, 50)), 1), "max_ms": round(float(got.max()), 1)})
    if counts:
        out["p99_ms"] = p99
    else:
        out.update({"p99_ms": None, "p99_ms_under_unsustained_load": p99})
    return out


def factor_plan(max_factor: float, min_factor: float) -> tuple[list[float], list[float]]:
    """(climb, descent): 1, 2, 4, ... <= max_factor; and 1/2, 1/4, ... >= min_factor if 1 lags."""
    up = [1.0]
    while up[-1] * 2 <= max_factor + 1e-9:
        up.append(up[-1] * 2)
    down = []
    while (f := (down[-1] if down else 1.0) / 2) >= min_factor - 1e-9:
        down.append(f)
    return up, down


def mix_table(mix: CityMix, rows_per_msg: dict[str, int]) -> list[dict]:
    return [{"key": c.key, "name": c.name, "stream": c.stream.value, "codec": c.codec, "devices": c.devices,
             "period_s": c.period_s, "simulated_devices": c.simulated_devices, "represents": round(c.represents, 2),
             "simulated_period_s": round(c.simulated_period_s, 3), "msgs_per_s_at_factor_1": round(c.msgs_per_s, 2),
             "rows_per_msg": rows_per_msg[c.key],
             "rows_per_s_at_factor_1": round(c.msgs_per_s * rows_per_msg[c.key], 1)} for c in mix.classes]


def rows_per_message(mix: CityMix) -> dict[str, int]:
    """Rows one message of each class becomes (readings, positions, observations), by decoding a sample
    with ingest's own codecs."""
    now = time.time_ns()
    out = {}
    for c in mix.classes:
        d = decode_message(c.stream, c.kind, PayloadSource(c, [0]).payload(0, now - 60 * 10**9), now, PayloadLimits())
        out[c.key] = len(d.readings) + len(d.positions) + len(d.traffic)
    return out


# -- the running pieces ---------------------------------------------------------------------------

@dataclass
class Publishers:
    """The paced publisher processes and their shared counters."""

    procs: list
    counters: list[SharedCounters]

    @classmethod
    def start(cls, mix: CityMix, s: Settings, n: int, sim_start_ns: int) -> "Publishers":
        ctx = mp.get_context("spawn")  # no copy of this process's event loop, threads or connections
        k = len(mix.classes)
        counters = [SharedCounters(factor=ctx.Value("d", 0.0, lock=False), due=ctx.Array("q", k, lock=False),
                                   published=ctx.Array("q", k, lock=False), acked=ctx.Value("q", 0, lock=False),
                                   refused=ctx.Value("q", 0, lock=False), sim_s=ctx.Value("d", 0.0, lock=False),
                                   ready=ctx.Event(), stop=ctx.Event(), error=ctx.Array("c", 200, lock=False))
                    for _ in range(n)]
        run = uuid.uuid4().hex[:6]
        procs = [ctx.Process(target=run_paced, name=f"loadtest-publisher-{i}", daemon=True,
                             args=(mix, mqtt_params(s, client_id=f"loadtest-pub-{run}-{i}"), PREFIX, sim_start_ns,
                                   counters[i], i, n, PUBLISH_WINDOW))
                 for i in range(n)]
        for p in procs:
            p.start()
        return cls(procs, counters)

    async def ready(self, timeout_s: float = 300.0) -> None:
        for c in self.counters:
            if not await asyncio.to_thread(c.ready.wait, timeout_s):
                raise RuntimeError("the publisher did not start")
        self.check()

    def check(self) -> None:
        for c, p in zip(self.counters, self.procs):
            if c.error.value:
                raise RuntimeError(f"publisher failed: {c.error.value.decode()}")
            if not p.is_alive() and not c.stop.is_set():
                raise RuntimeError(f"publisher exited with code {p.exitcode}")

    def set_factor(self, f: float) -> None:
        for c in self.counters:
            c.factor.value = f

    def published(self) -> list[int]:
        """Messages published per class (all processes)."""
        return [sum(c.published[i] for c in self.counters) for i in range(len(self.counters[0].published))]

    def due(self) -> int:
        return sum(sum(c.due[:]) for c in self.counters)

    def sim_s(self) -> float:
        return max(c.sim_s.value for c in self.counters)

    @property
    def pids(self) -> dict[str, int]:
        return {("publisher" if i == 0 else f"publisher{i + 1}"): p.pid for i, p in enumerate(self.procs)}

    def stop(self) -> None:
        for c in self.counters:
            c.stop.set()
        for p in self.procs:
            p.join(90)
            if p.is_alive():
                p.kill()
                p.join(10)


def _scrape(port: int) -> dict[str, float]:
    """Ingest's Prometheus counters (the ones without labels) from its /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line.startswith("wulian_ingest_") and "{" not in line:
            name, _, val = line.partition(" ")
            out[name] = float(val)
    return out


async def ingest_acked(port: int) -> int:
    return int((await asyncio.to_thread(_scrape, port)).get("wulian_ingest_messages_acked_total", 0))


async def hypertable_bytes(con: asyncpg.Connection) -> dict[str, int]:
    rows = await con.fetch("SELECT hypertable_name AS t, hypertable_size(format('%I.%I', hypertable_schema,"
                           " hypertable_name)::regclass) AS b FROM timescaledb_information.hypertables")
    return {r["t"]: int(r["b"] or 0) for r in rows}


async def _count_rows(con: asyncpg.Connection) -> dict[str, int]:
    return {t: await con.fetchval(f"SELECT count(*) FROM {t}") for t in (*ROW_TABLES, "dead_letters")}


async def _prepare(con: asyncpg.Connection, mix: CityMix) -> int:
    await migrate(con)
    rules = [PROBE_RULE] + [
        {"id": 0, "name": f"loadtest ceiling {st}", "kind": "upper", "stream": st, "threshold": 1e12}
        for st in sorted({c.stream.value for c in mix.classes if c.stream in SCALAR_STREAMS})]
    for r in rules:
        await con.execute("INSERT INTO rules (definition) VALUES ($1::jsonb)", orjson.dumps(r).decode())
    specs = [device_store.DeviceSpec(dev, mix.region, c.stream.value, name=f"{c.key} {i}")
             for c in mix.classes for i, dev in enumerate(device_ids(c))]
    for k in range(0, len(specs), 20_000):
        await device_store.upsert_many(con, specs[k:k + 20_000], device_store.PROVISION)
    return len(specs)


async def _step(run: "Run", f: float) -> dict:
    _progress(f"factor {f:g}: offering {run.mix.msgs_per_s * f:,.0f} msgs/s for {run.opt.step_s:g} s")
    r = await run.step(f)
    _progress(f"factor {f:g}: stored {r['stored_msgs_per_s']:,.0f} of {r['offered_msgs_per_s']:,.0f} msgs/s "
              f"({r['stored_rows_per_s']:,.0f} rows/s), alarm p99 {r['alarm_latency']['p99_ms']} ms, "
              f"{'sustained' if r['sustained'] else 'LAGS'}: {r['judged']}")
    return r


def stop_reason(steps: list[dict], max_factor: float) -> str:
    last = steps[-1]
    if last["sustained"]:
        return (f"factor 1 lags; {last['factor']:g} sustained" if last["factor"] < 1
                else f"max factor {max_factor:g} reached and sustained" if last["factor"] * 2 > max_factor
                else f"stopped after factor {last['factor']:g} (backlog not drained in time)")
    return f"lags at factor {last['factor']:g}"


# -- the run --------------------------------------------------------------------------------------

@dataclass
class Options:
    step_s: float = 30.0
    max_factor: float = 16.0
    min_factor: float = 0.125
    probe_every_s: float = 0.5
    probe_timeout_s: float = 10.0
    drain_s: float = 300.0
    warmup_s: float = 5.0
    publishers: int = 2
    keep_db: bool = False


class Run:
    """One load test: database, ingest, publishers, probe; :meth:`step` measures one factor."""

    def __init__(self, s: Settings, mix: CityMix, opt: Options, dsn: str) -> None:
        self.s, self.mix, self.opt, self.dsn = s, mix, opt, dsn
        self.rows = rows_per_message(mix)
        self.metrics_port = free_port()
        self.ingest: subprocess.Popen | None = None
        self.pubs: Publishers | None = None
        self.probe: AlertProbe | None = None
        self.con: asyncpg.Connection | None = None
        self.warm = 0  # warm-up messages stored before the load (ingest's readiness check, one row each)

    async def backlog(self) -> tuple[int, int]:
        """(ingest acked, messages accepted but not yet stored) — counting the probes and the warm-up."""
        acked = await ingest_acked(self.metrics_port)
        return acked, sum(self.pubs.published()) + self.probe.sent + self.warm - acked

    def start_ingest(self) -> None:
        env = child_env(WULIAN_DB__DSN=self.dsn, WULIAN_MQTT__TOPIC_PREFIX=PREFIX,
                        WULIAN_MQTT__CLIENT_ID=f"loadtest-ingest-{uuid.uuid4().hex[:6]}",
                        WULIAN_MQTT__SESSION_EXPIRY_S="600",
                        WULIAN_INGEST__METRICS_PORT=str(self.metrics_port), WULIAN_LOG_LEVEL="WARNING")
        self.ingest = subprocess.Popen([sys.executable, "-m", "wulian", "ingest"], env=env)

    async def wait_ingest(self, timeout_s: float = 120.0) -> None:
        """Ingest is up when a warm-up reading is acknowledged (one every 2 s: those sent before its
        session subscribed reach nobody)."""
        deadline = time.monotonic() + timeout_s
        next_warm = 0.0
        while time.monotonic() < deadline:
            if self.ingest.poll() is not None:
                raise RuntimeError(f"ingest exited with code {self.ingest.returncode}")
            if time.monotonic() >= next_warm:
                self.probe.publisher.publish(f"{PREFIX}/{self.mix.region}/{PROBE_STREAM.value}/WARM0/telemetry",
                                             orjson.dumps({"ts": time.time_ns() // 1_000_000, "values": {"warm": 1.0}}))
                next_warm = time.monotonic() + 2.0
            with contextlib.suppress(OSError):  # its metrics endpoint is not up yet
                if await ingest_acked(self.metrics_port) >= 1:
                    await asyncio.sleep(3.0)  # a warm-up sent just before is stored too
                    self.warm = await ingest_acked(self.metrics_port)
                    return
            await asyncio.sleep(0.2)
        raise RuntimeError(f"ingest stored nothing in {timeout_s:.0f} s")

    async def drain(self, timeout_s: float) -> bool:
        """Pause the load and wait until the publisher has sent what was due and ingest stored it all."""
        self.pubs.set_factor(0.0)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.pubs.check()
            _, backlog = await self.backlog()
            if backlog <= 0 and sum(self.pubs.published()) >= self.pubs.due():
                return True
            await asyncio.sleep(0.5)
        return False

    async def _probe_loop(self, until: float, out: list) -> None:
        while time.monotonic() < until:
            t0 = time.monotonic()
            out.append(await self.probe.probe(self.opt.probe_timeout_s))
            await asyncio.sleep(max(0.0, self.opt.probe_every_s - (time.monotonic() - t0)))

    async def step(self, factor: float) -> dict:
        base_msgs = self.mix.msgs_per_s
        base_rows = sum(c.msgs_per_s * self.rows[c.key] for c in self.mix.classes)
        pub0 = self.pubs.published()
        acked0, backlog0 = await self.backlog()
        probes0 = self.probe.sent
        size0 = sum((await hypertable_bytes(self.con)).values())
        cpu = CpuWindow({"ingest": self.ingest.pid, **stack_pids(self.s), **self.pubs.pids})
        self.pubs.set_factor(factor)
        cpu.start()
        t0 = time.monotonic()
        latencies: list[float | None] = []
        prober = asyncio.create_task(self._probe_loop(t0 + self.opt.step_s, latencies))
        while (left := t0 + self.opt.step_s - time.monotonic()) > 0:
            await asyncio.sleep(min(1.0, left))
            self.pubs.check()
            if self.ingest.poll() is not None:
                raise RuntimeError(f"ingest exited with code {self.ingest.returncode}")
        wall = time.monotonic() - t0
        acked1, backlog1 = await self.backlog()
        pub1 = self.pubs.published()
        cpu.stop()
        size1 = sum((await hypertable_bytes(self.con)).values())
        await prober  # the last probe's answer (at most probe_timeout_s)
        load_probes = self.probe.sent - probes0
        offered = base_msgs * factor * wall
        published = sum(pub1) - sum(pub0)
        stored = acked1 - acked0 - load_probes
        stored_rows = stored / published * sum((b - a) * self.rows[c.key]
                                               for a, b, c in zip(pub0, pub1, self.mix.classes)) if published else 0
        sustained, why = judge_step(offered, stored, backlog0, backlog1, wall)
        if published < LOAD_REACHED * offered:
            why += f"; the publisher sent only {published / offered:.1%} of it (publisher-bound)"
        sim_s_stored = stored / base_msgs if base_msgs else 0.0
        res = cpu.result
        per_m_rows = {k: (round(v / stored_rows * 1e6, 1) if v is not None and stored_rows > 0 else None)
                      for k, v in res["cpu_s"].items()}
        return {
            "factor": factor,
            "wall_s": round(wall, 2),
            "offered_msgs_per_s": round(base_msgs * factor, 1),
            "offered_rows_per_s": round(base_rows * factor, 1),
            "published_msgs_per_s": round(published / wall, 1),
            "stored_msgs_per_s": round(stored / wall, 1),
            "stored_rows_per_s": round(stored_rows / wall, 1),
            "stored_vs_offered": round(stored / offered, 3) if offered else None,
            "backlog_start": backlog0,
            "backlog_end": backlog1,
            "sustained": sustained,
            "judged": why,
            "publisher_kept_up": published >= LOAD_REACHED * offered,
            "simulated_s_stored": round(sim_s_stored, 1),
            "bytes_added": size1 - size0,
            "bytes_per_simulated_day": round((size1 - size0) / sim_s_stored * 86400) if sim_s_stored > 0 else None,
            "alarm_latency": latency_summary(latencies, sustained),
            "cpu": res,
            "cores_per_stage": {k: (round(v / res["wall_s"], 2) if v is not None else None)
                                for k, v in res["cpu_s"].items()},
            # what a stage costs per stored row: transfers to another machine better than a rate does
            "cpu_s_per_million_rows": per_m_rows,
        }


async def run_loadtest(s: Settings, mix: CityMix, opt: Options) -> dict:
    up, down = factor_plan(opt.max_factor, opt.min_factor)
    admin_dsn = s.db.dsn.rsplit("/", 1)[0] + "/postgres"
    database = f"{DATABASE_PREFIX}{uuid.uuid4().hex[:8]}"
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{database}"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'CREATE DATABASE "{database}"')
    run = Run(s, mix, opt, dsn)
    steps: list[dict] = []
    try:
        run.con = await asyncpg.connect(dsn)
        t = time.monotonic()
        provisioned = await _prepare(run.con, mix)
        provision_s = time.monotonic() - t
        _progress(f"{mix.city}: {provisioned:,} simulated devices provisioned in {provision_s:.1f} s; "
                  f"factor 1 = {mix.msgs_per_s:,.1f} msgs/s")
        # simulated time starts in the past: the whole run's, at the largest factors, ends before now
        planned_sim_s = (opt.step_s + opt.probe_timeout_s + 5) * (sum(up) + sum(down)) * 1.1 + opt.warmup_s
        sim_start_ns = time.time_ns() - int((planned_sim_s + _SIM_MARGIN_S) * 1e9)
        run.probe = AlertProbe(dsn, mqtt_params(s, client_id=f"loadtest-probe-{uuid.uuid4().hex[:6]}"),
                               lambda dev: f"{PREFIX}/{mix.region}/{PROBE_STREAM.value}/{dev}/telemetry", "PROBE")
        await run.probe.start()
        run.start_ingest()
        await run.wait_ingest()  # before the publishers: what ingest stored until then is the warm-up only
        run.pubs = Publishers.start(mix, s, opt.publishers, sim_start_ns)
        await run.pubs.ready()
        t = time.monotonic()
        primed = await run.drain(opt.drain_s)  # every device's first message, sent at once
        first_contact_s = time.monotonic() - t
        _progress(f"first message of every device stored in {first_contact_s:.1f} s"
                  + ("" if primed else " (NOT all: drain timed out)"))
        if opt.warmup_s > 0:  # JIT compilation, caches: not part of any step
            run.pubs.set_factor(1.0)
            await asyncio.sleep(opt.warmup_s)
            await run.drain(opt.drain_s)
        size_start = await hypertable_bytes(run.con)
        published_start = run.pubs.published()
        for f in up:
            steps.append(await _step(run, f))
            if not steps[-1]["sustained"]:
                break
            if f != up[-1] and not await run.drain(opt.drain_s):
                break
        if not steps[0]["sustained"]:  # below real rate: how far below?
            for f in down:
                if not await run.drain(opt.drain_s):
                    break
                steps.append(await _step(run, f))
                if steps[-1]["sustained"]:
                    break
        drained = await run.drain(opt.drain_s)
        published = run.pubs.published()
        run.pubs.stop()
        await asyncio.sleep(1.0)
        acked, backlog = await run.backlog()
        counts = await _count_rows(run.con)
        size_end = await hypertable_bytes(run.con)
    finally:
        if run.pubs is not None:
            run.pubs.stop()
        if run.probe is not None:
            await run.probe.close()
        if run.ingest is not None:
            run.ingest.terminate()
            try:
                run.ingest.wait(30)
            except subprocess.TimeoutExpired:
                run.ingest.kill()
        if run.con is not None:
            await run.con.close()
        if not opt.keep_db:
            await admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await admin.close()
    end = {"drained": drained, "published": published, "published_start": published_start, "counts": counts,
           "backlog": backlog, "size_start": size_start, "size_end": size_end, "provisioned": provisioned,
           "provision_s": provision_s, "first_contact_s": first_contact_s, "primed": primed,
           "database": database if opt.keep_db else None}
    return summarise(mix, opt, run, steps, end)


def summarise(mix: CityMix, opt: Options, run: Run, steps: list[dict], end: dict) -> dict:
    sustained = [st["factor"] for st in steps if st["sustained"]]
    headroom = max(sustained) if sustained else None
    published, counts, drained = end["published"], end["counts"], end["drained"]
    expected_rows = sum(n * run.rows[c.key] for n, c in zip(published, mix.classes)) + run.probe.sent + run.warm
    stored_rows = sum(counts[t] for t in ROW_TABLES)
    # what the steps (and the drains between them) added: from after the first contact and warm-up on
    added = {t: end["size_end"].get(t, 0) - end["size_start"].get(t, 0) for t in end["size_end"]}
    measured = [b - a for a, b in zip(end["published_start"], published)]
    sim_s = sum(measured) / mix.msgs_per_s
    measured_rows = sum(n * run.rows[c.key] for n, c in zip(measured, mix.classes))
    base_rows = sum(c.msgs_per_s * run.rows[c.key] for c in mix.classes)
    return {
        "city": mix.city,
        "mix_file": mix.source,
        **({"database_kept": end["database"]} if end["database"] else {}),
        "mix": mix_table(mix, run.rows),
        "offered_at_factor_1": {"msgs_per_s": round(mix.msgs_per_s, 1), "rows_per_s": round(base_rows, 1)},
        "simulated_devices": end["provisioned"],
        "provision_s": round(end["provision_s"], 1),
        "first_contact_s": round(end["first_contact_s"], 1),
        "first_contact_note": "one message from every simulated device, sent at once before the steps, until all "
                              "were stored (registry lookups, alarm series created)"
                              + ("" if end["primed"] else "; NOT all stored within --drain-s"),
        "step_s": opt.step_s,
        "sustained_when": f"stored >= {LOAD_REACHED:.0%} of offered messages and backlog growth over the step "
                          f"<= {BACKLOG_GROWTH:.0%} of them (or {IN_FLIGHT_S:g} s of them, if more: in flight)",
        "headroom_factor": headroom,
        "headroom_below_1": headroom is None or headroom < 1,
        "headroom_note": (f"sustained {headroom:g}x the city's real rate" if headroom is not None
                          else f"not even factor {min(st['factor'] for st in steps):g} was sustained"),
        "stopped": stop_reason(steps, opt.max_factor),
        "steps": steps,
        "published_msgs": sum(published),
        "expected_rows": expected_rows,
        "stored_rows": stored_rows,
        "drained": drained,
        "backlog_at_end": end["backlog"],
        "lost": expected_rows - stored_rows if drained else None,
        "dead_letters": counts["dead_letters"],
        "simulated_s_in_steps": round(sim_s, 1),
        "bytes_added": sum(added.values()),
        "bytes_added_per_table": {t: b for t, b in added.items() if b},
        "bytes_per_simulated_day": round(sum(added.values()) / sim_s * 86400) if sim_s else None,
        "bytes_per_row": round(sum(added.values()) / measured_rows, 1) if measured_rows else None,
        "bytes_note": "hypertable_size() of every hypertable (tables, indexes, TOAST) before the first step and "
                      "after the last drain, per simulated second published, x 86,400; uncompressed (chunks are "
                      "compressed after db.compress_after_days)",
        "rules": "one never-firing rule per scalar stream and the probe rule: every reading passes the alarm engine",
        "not_measured": "gateways (JT/T 808 and HJ 212 frames are published as the gateways publish them), the "
                        "derive jobs and the API; the publishers run on the same machine and their CPU is shown",
        "cpu_note": "cpu_s: CPU seconds per stage over the step, from /proc (PostgreSQL: postmaster and "
                    "backends); machine_utilisation, machine_cores_busy: all CPUs, everyone's work (a shared "
                    "machine shows here: cores_busy_ours well below machine_cores_busy means other work took "
                    "the CPU and the rates are this machine's at that moment, not the software's limit)",
    }


def options_from(args: argparse.Namespace) -> Options:
    return Options(step_s=args.step_s, max_factor=args.max_factor, min_factor=args.min_factor,
                   probe_every_s=args.probe_every, probe_timeout_s=args.probe_timeout, drain_s=args.drain_s,
                   warmup_s=args.warmup_s, publishers=args.publishers, keep_db=args.keep_db)
