"""The chaos run: sources publishing at load, faults in turn, then the count of what was lost.

Each fault gets its own devices, so its figures are its own: the sources publish for ``pre_s``, the
fault is injected (publishing goes on), they publish ``post_s`` more, stop, wait until the broker
acknowledged everything, and the run waits until ingest has stored it (or ``settle_s`` passes). Then
the database is compared with the acknowledgements and the alert reference.
"""
from __future__ import annotations

import asyncio
import sys
import time
import uuid
from dataclasses import dataclass, field

import asyncpg
import numpy as np
import orjson

from wulian.ingest.chaos import verify
from wulian.ingest.chaos.faults import ChaosEnv, Fault, standard_faults
from wulian.ingest.chaos.field import FieldFleet, GatewayProcess, stored_seconds
from wulian.ingest.chaos.sources import SAW_CLEAR, SAW_THRESHOLD, SeqSource, SourceSpec
from wulian.ingest.chaos.stack import ChaosStack, IngestProcess
from wulian.ingest.migrations import migrate
from wulian.ingest.mqtt_client import MqttPublisher

REGION = "chaos"
STEP_MS = 10  # event-time spacing of one device's messages
PENDING_STEPS = 5  # the second rule's pending_s in steps: its wait spans a fault when one lands in it


def progress_stderr(msg: str, what: str = "chaos") -> None:
    print(f"[{what} {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class ChaosConfig:
    rate_msgs: float = 1000.0  # messages/s over all devices of a fault phase
    devices: int = 50
    extra_values: int = 3
    pre_s: float = 10.0
    post_s: float = 20.0
    settle_s: float = 120.0
    faults: list[Fault] = field(default_factory=lambda: standard_faults(quick=False))
    field_devices: int = 30  # HJ 212 stations and as many JT/T 808 terminals through the gateways (0: none)
    # a second rule with a pending window: cluster mode keeps its wait across a failover (the snapshot is
    # in every commit); city mode's periodic snapshot does not yet (docs/cluster.md), so off there by default
    pending_rule: bool = False
    # alarm snapshots much more often than the default 30 s, so a kill lands between snapshots and batches
    ingest_env: dict[str, str] = field(default_factory=lambda: {
        "WULIAN_ALARMS__TICK_INTERVAL_S": "0.5", "WULIAN_ALARMS__SAVE_INTERVAL_S": "2"})

    @classmethod
    def quick(cls, **kw) -> "ChaosConfig":
        base = dict(rate_msgs=300.0, devices=10, pre_s=2.0, post_s=3.0, settle_s=45.0,
                    faults=standard_faults(quick=True), field_devices=8)
        return cls(**{**base, **kw})


async def create_rule(con: asyncpg.Connection, pending_steps: int = 0) -> int:
    rule = {"id": 0, "name": f"chaos sawtooth{' pending' if pending_steps else ''}", "kind": "upper",
            "stream": "grid", "metric": "saw", "threshold": SAW_THRESHOLD, "clear_threshold": SAW_CLEAR,
            "severity": "minor", "pending_s": pending_steps * STEP_MS / 1000}
    return await con.fetchval("INSERT INTO rules (definition) VALUES ($1::jsonb) RETURNING id",
                              orjson.dumps(rule).decode())


async def wait_ingest_ready(stack: ChaosStack, timeout: float = 90.0, params=None) -> float:
    """Publish a probe until ingest stores it (its session exists from then on); returns the seconds taken."""
    t0 = time.monotonic()
    dev = f"probe-{uuid.uuid4().hex[:6]}"
    con = await asyncpg.connect(stack.dsn)
    try:
        with MqttPublisher((params or stack.mqtt_params)(f"chaos-probe-{dev}")) as pub:
            while time.monotonic() - t0 < timeout:
                pub.publish(f"wl/{REGION}/air/{dev}/telemetry",
                            orjson.dumps({"ts": time.time_ns() // 1_000_000, "values": {"probe": 1}}))
                await asyncio.sleep(0.5)
                n = await con.fetchval("SELECT count(*) FROM readings r JOIN devices d ON d.id = r.device"
                                       " WHERE d.device_id = $1", dev)
                if n:
                    return time.monotonic() - t0
    finally:
        await con.close()
    raise TimeoutError("ingest did not store the probe message")


STALL_S = 45.0  # no new rows for this long: what is missing is lost


async def _stored_when_settled(dsn: str, devices: list[str], want: int, settle_s: float) -> int:
    """Poll until the stored count reaches ``want`` or stops growing for ``STALL_S`` (bounded by settle_s).
    The stall window covers an ingest restarted after kill -9 on a loaded machine (imports, numba cache
    load, broker session resume): 20 s was too short at load average 10+ and counted a pause as loss."""
    deadline = time.monotonic() + settle_s
    last, last_change = -1, time.monotonic()
    while True:
        try:
            con = await asyncpg.connect(dsn, timeout=5)
            try:
                n = await verify.stored_count(con, devices)
            finally:
                await con.close()
        except (OSError, asyncpg.PostgresError, asyncio.TimeoutError):
            n = last
        now = time.monotonic()
        if n != last:
            last, last_change = n, now
        if n >= want or now > deadline or (n >= 0 and now - last_change > min(STALL_S, settle_s)):
            return n
        await asyncio.sleep(0.5)


async def _field_results(env: ChaosEnv, fleet: FieldFleet, settle_s: float) -> dict:
    """Answered vs stored per protocol, once the stored counts reach the answered ones (or settle)."""
    answered = fleet.answered()
    out = {}
    for proto, by_dev in answered.items():
        if not by_dev:
            continue
        want = sum(len(v) for v in by_dev.values())
        deadline = time.monotonic() + settle_s
        while True:
            con = await asyncpg.connect(env.stack.dsn)
            try:
                stored = await stored_seconds(con, proto, list(by_dev))
            finally:
                await con.close()
            have = sum(len(np.intersect1d(v, stored[d])) for d, v in by_dev.items())
            if have >= want or time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        counts = verify.count_loss(by_dev, stored)
        out[proto] = {**counts, **{f"devices_{k}": v for k, v in fleet.stats()[proto].items()}}
    return out


async def create_rules(con: asyncpg.Connection, pending: bool = True) -> dict[int, int]:
    """The sawtooth rule, and (``pending``) one with a pending window: rule id -> pending steps."""
    return {await create_rule(con, p): p for p in ((0, PENDING_STEPS) if pending else (0,))}


async def run_fault(env: ChaosEnv, cfg: ChaosConfig, fault: Fault, rules: dict[int, int], phase: int = 0) -> dict:
    stack = env.stack
    devices = tuple(f"{fault.name.replace('_', '-')}-{i:03d}" for i in range(cfg.devices))
    step_ms = STEP_MS
    base_ms = time.time_ns() // 1_000_000 - 3_600_000
    spec = SourceSpec(REGION, "grid", devices, cfg.rate_msgs, cfg.extra_values, base_ms, step_ms)
    src = SeqSource(env.device_params(f"chaos-src-{fault.name}-{uuid.uuid4().hex[:4]}"), spec)
    fleet = None
    if env.gateways and cfg.field_devices:
        gw = env.gateways
        fleet = FieldFleet(f"{phase + 1:06d}", cfg.field_devices, cfg.field_devices,
                           gw["hj212"].port if "hj212" in gw else None, gw["jt808"].port if "jt808" in gw else None,
                           seed=phase * 1000)
    t_start = time.monotonic()
    src.start()
    if fleet is not None:
        fleet.start()
    await asyncio.sleep(cfg.pre_s)
    t_fault = time.monotonic()
    figures = await fault.inject(env) or {}  # e.g. takeover_s of a cluster fault
    fault_s = time.monotonic() - t_fault
    await asyncio.sleep(cfg.post_s)
    src.stop()
    if fleet is not None:
        await fleet.stop()
    unacked = await asyncio.to_thread(src.drain, cfg.settle_s)
    acked = {d: src.acked_seqs(i) for i, d in enumerate(devices)}
    n_acked = sum(len(a) for a in acked.values())
    env.progress(f"{fault.name}: {src.published} sent, {n_acked} acknowledged by the broker; waiting for ingest")
    t_wait = time.monotonic()
    await _stored_when_settled(stack.dsn, list(devices), n_acked, cfg.settle_s)
    settle_s = time.monotonic() - t_wait
    src.close()
    con = await asyncpg.connect(stack.dsn)
    try:
        stored = await verify.stored_seqs(con, list(devices))
        counts = verify.count_loss(acked, stored)
        counts["partial"] = await verify.check_partial(con, stored, 2 + cfg.extra_values)
        alerts: dict[str, int] = {}
        for rule_id, pending_steps in rules.items():
            alerts = verify.add_alert_counts(alerts, await verify.check_alerts(
                con, rule_id, stored, base_ms, step_ms, pending_steps))
    finally:
        await con.close()
    field_res = await _field_results(env, fleet, cfg.settle_s) if fleet is not None else {}
    exited = not env.ingest.alive()
    if exited:  # ingest must survive every fault but its own kill; note it and bring it back
        env.progress(f"{fault.name}: ingest exited ({env.ingest.exit_info()}); restarting it")
        env.ingest.start()
    return {
        "fault": fault.name, "sent": src.published, **counts, "never_acked": unacked,
        **verify.alert_summary(alerts), **figures,
        "alerts": alerts, "alerts_consistent": verify.alerts_consistent(alerts), "field": field_res,
        "ingest_exited": exited, "fault_s": round(fault_s, 1), "publish_s": round(time.monotonic() - t_start, 1),
        "stored_all_after_s": round(settle_s, 1),  # after the broker acked the last message
    }


async def run_faults(env: ChaosEnv, cfg: ChaosConfig, rules: dict[int, int]) -> dict:
    """``cfg.faults`` in turn on a running stack (city mode or cluster mode), the figures of each."""
    progress = env.progress
    faults = []
    for phase, fault in enumerate(cfg.faults):
        if fault.name == "restart_gateway" and not env.gateways:
            continue
        progress(f"fault {fault.name}: {cfg.rate_msgs:.0f} msg/s over {cfg.devices} devices"
                 + (f", {cfg.field_devices} HJ 212 stations and JT/T 808 terminals at 1/s" if env.gateways else ""))
        res = await run_fault(env, cfg, fault, rules, phase)
        progress(f"{fault.name}: published {res['published']} stored {res['stored']} lost {res['lost']}"
                 f" duplicates {res['duplicates']} alerts expected {res['alerts_expected']} raised twice"
                 f" {res['alerts_raised_twice']} missed {res['alerts_missed']}")
        for proto, f in res["field"].items():
            progress(f"{fault.name} via {proto} gateway: answered {f['published']} stored {f['stored']}"
                     f" lost {f['lost']} duplicates {f['duplicates']}")
        faults.append(res)
    return {
        "rate_msgs_per_s": cfg.rate_msgs, "devices_per_fault": cfg.devices,
        "values_per_msg": 2 + cfg.extra_values, "faults": faults,
        "field_devices_per_protocol": cfg.field_devices if env.gateways else 0,
        "ok": all(f["lost"] == 0 and f["duplicates"] == 0 and f["partial"] == 0 and f["alerts_consistent"]
                  and not f["ingest_exited"] and all(g["lost"] == 0 for g in f["field"].values())
                  for f in faults),
    }


async def run_chaos(cfg: ChaosConfig, progress=progress_stderr, keep_dir: bool = False) -> dict:
    """Bring up a throwaway stack and ingest, inject ``cfg.faults`` in turn, return the figures."""
    stack = ChaosStack.fresh()
    progress(f"stack in {stack.dir} (postgresql :{stack.pg_port}, mosquitto :{stack.mqtt_port})")
    await asyncio.to_thread(stack.up)
    ingest = IngestProcess(stack, f"chaos-ingest-{uuid.uuid4().hex[:6]}",
                           stack.dir / "ingest.log", dict(cfg.ingest_env))
    env = ChaosEnv(stack, ingest, progress=progress)
    gateways = [GatewayProcess(stack, proto, REGION, stack.dir / f"gateway-{proto}.log")
                for proto in (("hj212", "jt808") if cfg.field_devices else ())]
    try:
        con = await asyncpg.connect(stack.dsn)
        try:
            await migrate(con)
            rules = await create_rules(con, cfg.pending_rule)
        finally:
            await con.close()
        ingest.start()
        ready_s = await wait_ingest_ready(stack)
        progress(f"ingest ready after {ready_s:.1f}s")
        for gw in gateways:
            gw.start()
        for gw in gateways:
            await gw.wait_ready()
            env.gateways[gw.protocol] = gw
        return await run_faults(env, cfg, rules)
    finally:
        for gw in gateways:
            gw.stop()
        ingest.stop()
        await asyncio.to_thread(stack.down, not keep_dir)
