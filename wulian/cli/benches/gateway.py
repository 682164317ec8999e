"""``wulian bench gateway``: 10,000 concurrent JT/T 808 terminals reporting every 10 s through one
gateway process, into the database.

Three processes on loopback: the gateway (``wulian.cli.benches.gateway serve``, the production gateway
class with its own MQTT publisher and database pool), the terminals (``... terminals``: one asyncio
process, each terminal connects, authenticates with the code provisioned for it, then sends a 0x0200
with 3 additional items every ``--interval`` s, spread evenly, resending unanswered reports), and this
process, which provisions the terminals in a scratch database, runs ingest, samples the gateway's RSS
and finally checks every answered report against ``vehicle_positions``.

Figures: ``connections`` (peak open at the gateway), ``reports_per_s`` (answered), ``p99_answer_ms``
(terminal-side: report written -> 0x8001 read, which includes the broker's PUBACK), ``rss_mb`` (peak
of the gateway process), ``lost`` (answered reports missing from the database after ingest drained).
The broker is a throwaway Mosquitto started from the stack's own config template
(deploy/local/mosquitto.conf: persistence, autosave every 30 s) on a free port, so that the figures
are the gateway's and not those of whatever the shared stack broker holds: a broker whose persistence
file has grown to hundreds of MB (queues of persistent sessions left by other runs) stalls every client
for seconds while it autosaves, which would be the p99 here. ``--stack-broker`` measures against the
stack's broker instead. ``slow_seconds`` lists the seconds of the run with answers slower than the
target, to tell such stalls from steady slowness.

Baseline in the same run: the same terminals against the same gateway whose publisher acknowledges
at once without a broker (``bare_*``): the cost of TCP + codec + asyncio alone; ``p99_vs_bare`` is
the price of waiting for the broker.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from wulian.cli.benches import with_machine
from wulian.settings import child_env

TARGET_P99_MS = 100.0
REGION = "benchgw"


def _progress(msg: str) -> None:
    print(f"[bench gateway] {msg}", file=sys.stderr, flush=True)


def _raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _auth_code(phone: str) -> str:
    return f"bench{phone[-6:]}"


def _percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return sorted_values[k]


# --- the gateway process ---------------------------------------------------------------------------

class _AutoAck:
    """Baseline publisher: acknowledged at once, no broker."""

    def publish_async(self, topic, payload, qos=1):
        fut = asyncio.get_running_loop().create_future()
        fut.set_result(True)
        return fut


async def _serve(args: argparse.Namespace) -> None:
    import asyncpg

    from wulian.ingest.gateways.registry import DeadLetterSink, DeviceRegistry
    from wulian.ingest.gateways.service import gateway_config, running_gateway
    from wulian.settings import get_settings

    s = get_settings()
    s.db.dsn = args.dsn
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    async with asyncpg.create_pool(args.dsn, min_size=1, max_size=4) as pool:
        if args.bare:
            from wulian.ingest.gateways.jt808_gateway import Jt808Gateway

            sink = DeadLetterSink(pool)
            await sink.start()
            gw = Jt808Gateway(DeviceRegistry(pool), _AutoAck(), sink, gateway_config(s))
            await gw.start("127.0.0.1", args.port)
            ctx = None
        else:
            ctx = running_gateway(s, "jt808", pool, port=args.port, client_id=f"bench-gw-{uuid.uuid4().hex[:6]}")
            gw = await ctx.__aenter__()
        latencies: list[float] = []
        gw.on_answer = latencies.append
        gc_pauses = _gc_pauses()
        print(json.dumps({"ready": True}), flush=True)
        try:
            while not stop.is_set():
                st = gw.stats
                print(json.dumps({"connections": st.connections, "published": st.published,
                                  "answered": st.answered, "publish_failures": st.publish_failures,
                                  "dead_letters": st.dead_letters}), flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), 0.5)
                except TimeoutError:
                    pass
            latencies.sort()
            print(json.dumps({"gateway_p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
                              "gateway_max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
                              "gc_max_pause_ms": round(max(gc_pauses, default=0.0) * 1000, 1)}), flush=True)
        finally:
            if ctx is not None:
                await ctx.__aexit__(None, None, None)
            else:
                await gw.stop()
                await sink.stop()


def _gc_pauses() -> list[float]:
    """Durations of the collector's passes from now on (appended by a gc callback)."""
    import gc

    pauses: list[float] = []
    started = [0.0]

    def cb(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            pauses.append(time.perf_counter() - started[0])

    gc.callbacks.append(cb)
    return pauses


# --- the terminals process -------------------------------------------------------------------------

async def _terminals(args: argparse.Namespace) -> dict:
    from wulian.simulators.field_devices import Jt808Terminal, terminal_phones

    phones = terminal_phones(args.n, args.seed)
    sem = asyncio.Semaphore(args.login_concurrency)
    logged_in = 0
    all_in = asyncio.Event()
    go = asyncio.Event()  # set once start_at/end_at are known
    stop = asyncio.Event()
    latencies: list[float] = []
    answered: list[tuple[str, int]] = []
    counts = {"failed_logins": 0, "sent": 0, "resent": 0, "unanswered": 0, "refused": 0}
    first_report: list[float] = []
    last_answer = [0.0]
    writers = []
    reporting = [0]  # terminals still in their report loop
    slow: dict[int, int] = {}  # second of the run -> answers slower than the p99 target

    async def one(i: int, phone: str) -> None:
        nonlocal logged_in
        term = Jt808Terminal(phone, auth_code=_auth_code(phone), seed=i, answer_timeout_s=args.answer_timeout)
        async with sem:
            for _ in range(3):
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", args.port)
                    buf = bytearray()
                    if await term.login(reader, writer, buf):
                        break
                    writer.close()
                except (OSError, TimeoutError):
                    await asyncio.sleep(0.5)
            else:
                counts["failed_logins"] += 1
                return
        writers.append(writer)
        logged_in += 1
        if logged_in + counts["failed_logins"] == len(phones):
            all_in.set()
        await go.wait()
        reporting[0] += 1
        loop = asyncio.get_running_loop()
        next_t = start_at[0] + i * args.interval / len(phones)
        while next_t < end_at[0]:
            await asyncio.sleep(max(0.0, next_t - loop.time()))
            ts = (time.time_ns() // 1_000_000_000) * 1_000_000_000
            frame, serial = term._frame(0x0200, term.location(ts))
            if not first_report:
                first_report.append(loop.time())
            for attempt in range(args.retries + 1):
                counts["sent"] += 1
                counts["resent"] += attempt > 0
                t0 = time.perf_counter()
                try:
                    ans = await term._request(reader, writer, buf, frame, serial, 0x8001)
                except (TimeoutError, ConnectionError, OSError):
                    continue
                if ans.result == 0:
                    latency = time.perf_counter() - t0
                    latencies.append(latency)
                    if latency > TARGET_P99_MS / 1000:
                        slow[int(loop.time() - start_at[0])] = slow.get(int(loop.time() - start_at[0]), 0) + 1
                    answered.append((phone, ts // 1_000_000_000))
                    last_answer[0] = loop.time()
                else:
                    counts["refused"] += 1
                break
            else:
                counts["unanswered"] += 1
            next_t += args.interval
        reporting[0] -= 1
        await stop.wait()

    start_at, end_at = [0.0], [0.0]
    loop = asyncio.get_running_loop()
    t_login = loop.time()
    tasks = [asyncio.create_task(one(i, p)) for i, p in enumerate(phones)]
    try:
        await asyncio.wait_for(all_in.wait(), args.login_timeout)
    except TimeoutError:
        all_in.set()
    login_s = loop.time() - t_login
    start_at[0] = loop.time() + 0.5
    end_at[0] = start_at[0] + args.duration
    go.set()
    print(json.dumps({"logged_in": logged_in, "login_s": round(login_s, 2)}), file=sys.stderr, flush=True)
    await asyncio.sleep(end_at[0] - loop.time() + args.interval / len(phones))
    # let the last reports get their answers, then hang up together
    deadline = loop.time() + args.answer_timeout * (args.retries + 1)
    while loop.time() < deadline and reporting[0] > 0:
        await asyncio.sleep(0.2)
    peak = logged_in
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    for w in writers:
        w.close()
    Path(args.out).write_text("\n".join(f"{p},{t}" for p, t in answered))
    latencies.sort()
    span = (last_answer[0] - first_report[0]) if first_report and last_answer[0] else 0.0
    return {"terminals": len(phones), "logged_in": peak, "login_s": round(login_s, 2),
            "answered": len(answered), "span_s": round(span, 2),
            "p50_ms": round(_percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(_percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round(latencies[-1] * 1000, 2) if latencies else None,
            "slow_seconds": sorted(slow.items()), **counts}


# --- the benchmark -------------------------------------------------------------------------------

def _rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


@contextlib.contextmanager
def _private_broker():
    """A throwaway Mosquitto from the stack's config template on a free port; yields the port."""
    from wulian.ingest.chaos.stack import free_port
    from wulian.settings import ROOT

    port = free_port()
    d = Path(tempfile.mkdtemp(prefix="wulian-bench-mq-"))
    (d / "data").mkdir()
    conf = (ROOT / "deploy" / "local" / "mosquitto.conf").read_text()
    for key, value in {"@PORT@": str(port), "@DATA@": f"{d}/data/", "@PID@": str(d / "pid"),
                       "@LOG@": str(d / "log")}.items():
        conf = conf.replace(key, value)
    if os.geteuid() == 0:
        conf += "\nuser root\n"
    (d / "mosquitto.conf").write_text(conf)
    proc = subprocess.Popen([shutil.which("mosquitto") or "/usr/sbin/mosquitto", "-c", str(d / "mosquitto.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"private mosquitto did not start: {(d / 'log').read_text()[-500:]}")
            time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


async def _run_pair(args: argparse.Namespace, dsn: str, bare: bool, duration: float, seed: int,
                    mqtt_port: int | None = None) -> dict:
    """Start a gateway process, run the terminals process against it, return both sides' figures."""
    from wulian.ingest.chaos.stack import free_port

    port = free_port()
    exe = [sys.executable, "-m", "wulian.cli.benches.gateway"]
    env = child_env()
    if mqtt_port is not None:
        env["WULIAN_MQTT__PORT"] = str(mqtt_port)
    gw = await asyncio.create_subprocess_exec(
        *exe, "serve", "--port", str(port), "--dsn", dsn, *(["--bare"] if bare else []),
        stdout=asyncio.subprocess.PIPE, env=env)
    status: dict = {}
    peak = {"connections": 0, "rss_mb": 0.0}
    line = await asyncio.wait_for(gw.stdout.readline(), 60)
    if not line.startswith(b'{"ready"'):
        raise RuntimeError(f"gateway did not start: {line!r}")

    async def watch() -> None:
        while True:
            line = await gw.stdout.readline()
            if not line:
                return
            status.update(json.loads(line))
            peak["connections"] = max(peak["connections"], status.get("connections", 0))
            peak["rss_mb"] = max(peak["rss_mb"], _rss_mb(gw.pid))

    watcher = asyncio.create_task(watch())
    out_file = tempfile.NamedTemporaryFile(prefix="wulian-bench-gw-", suffix=".csv", delete=False).name
    term = await asyncio.create_subprocess_exec(
        *exe, "terminals", "--port", str(port), "--n", str(args.terminals), "--interval", str(args.interval),
        "--duration", str(duration), "--seed", str(seed), "--out", out_file, stdout=asyncio.subprocess.PIPE)
    stdout, _ = await term.communicate()
    result = json.loads(stdout.decode().strip().splitlines()[-1])
    result["answered_file"] = out_file
    result["gateway"] = status
    result["connections"] = peak["connections"]
    result["rss_mb"] = round(peak["rss_mb"], 1)
    result["gateway_proc"] = gw
    result["watcher"] = watcher
    return result


async def _stop_gateway(res: dict) -> None:
    gw = res.pop("gateway_proc")
    watcher = res.pop("watcher")
    gw.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(gw.wait(), 30)
    except TimeoutError:
        gw.kill()
    await asyncio.gather(watcher, return_exceptions=True)


async def _with_ingest(args: argparse.Namespace, s, dsn: str, seed: int, mqtt_port: int | None) -> dict:
    """The measured run: ingest in this process, gateway and terminals in theirs; returns once ingest
    has taken every message the gateway published."""
    import asyncpg

    from wulian.ingest.batch_writer import init_connection
    from wulian.ingest.service import running_ingestor

    async with asyncpg.create_pool(dsn, min_size=2, max_size=4, init=init_connection) as pool:
        async with running_ingestor(s, pool) as ing:
            where = f"private broker :{mqtt_port}" if mqtt_port else "stack broker"
            _progress(f"gateway + {where} + ingest: {args.terminals} terminals, {args.duration:.0f}s")
            res = await _run_pair(args, dsn, False, args.duration, seed, mqtt_port)
            # every answered report was acknowledged by the broker, so ingest must get at least those
            target = max(res["answered"], res["gateway"].get("published", 0))
            _progress(f"terminals done: {res['answered']} answered; waiting for ingest ({target} messages)")
            deadline = time.monotonic() + 120
            while ing.stats.messages < target and time.monotonic() < deadline:
                ing.committed.clear()
                try:
                    await asyncio.wait_for(ing.committed.wait(), 2.0)
                except TimeoutError:
                    pass
            await _stop_gateway(res)
    return res


async def bench(args: argparse.Namespace) -> dict:
    import asyncpg

    from wulian.ingest.migrations import migrate
    from wulian.ingest.device_secrets import JT808_AUTH
    from wulian.ingest.device_store import DeviceSpec, upsert_many
    from wulian.simulators.field_devices import terminal_phones
    from wulian.settings import get_settings

    _raise_nofile()
    s = get_settings()
    admin_dsn = s.db.dsn.rsplit("/", 1)[0] + "/postgres"
    db = "wulian_bench_gateway"
    admin = await asyncpg.connect(admin_dsn)
    await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{db}"')
    dsn = admin_dsn.rsplit("/", 1)[0] + f"/{db}"
    s = s.model_copy(update={
        "db": s.db.model_copy(update={"dsn": dsn}),
        "mqtt": s.mqtt.model_copy(update={"client_id": f"bench-gw-ingest-{uuid.uuid4().hex[:6]}",
                                          "session_expiry_s": 60}),
        "ingest": s.ingest.model_copy(update={"metrics_port": 0}),
    })
    out: dict = {"terminals": args.terminals, "interval_s": args.interval, "duration_s": args.duration,
                 "broker": "stack" if args.stack_broker else "private"}
    try:
        con = await asyncpg.connect(dsn)
        await migrate(con)
        seeds = (1, 2)
        specs = [DeviceSpec(p, REGION, "vehicle", "jt808", secrets={JT808_AUTH: _auth_code(p)})
                 for seed in seeds for p in terminal_phones(args.terminals, seed)]
        t0 = time.perf_counter()
        await upsert_many(con, specs)
        await con.close()
        _progress(f"provisioned {len(specs)} terminals in {time.perf_counter() - t0:.1f}s")
        if args.baseline_duration > 0:
            _progress(f"baseline: {args.terminals} terminals, gateway without broker, {args.baseline_duration:.0f}s")
            bare = await _run_pair(args, dsn, True, args.baseline_duration, seeds[0])
            await _stop_gateway(bare)
            os.unlink(bare["answered_file"])
            _progress(f"baseline: {bare['answered'] / max(bare['span_s'], 1e-9):.0f} reports/s, "
                      f"p99 {bare['p99_ms']} ms")
        else:
            bare = None
        broker = contextlib.nullcontext(None) if args.stack_broker else _private_broker()
        with broker as mqtt_port:
            if mqtt_port is not None:
                s.mqtt.port = mqtt_port
            res = await _with_ingest(args, s, dsn, seeds[1], mqtt_port)
        async with asyncpg.create_pool(dsn, min_size=1, max_size=2) as pool:
            async with pool.acquire() as con:
                rows = await con.fetch(
                    "SELECT d.device_id, extract(epoch FROM p.time)::bigint AS t FROM vehicle_positions p "
                    "JOIN devices d ON d.id = p.device")
        stored = {(r["device_id"], int(r["t"])) for r in rows}
        answered_lines = Path(res["answered_file"]).read_text().splitlines()
        os.unlink(res["answered_file"])
        answered = {(p, int(t)) for p, t in (x.split(",") for x in answered_lines if x)}
        lost = len(answered - stored)
        rate = res["answered"] / res["span_s"] if res["span_s"] else 0.0
        out.update({
            "connections": res["connections"],
            "reports_per_s": round(rate, 1),
            "p99_answer_ms": res["p99_ms"],
            "p50_answer_ms": res["p50_ms"],
            "max_answer_ms": res["max_ms"],
            "slow_seconds": res["slow_seconds"],  # [second of the run, answers over the target]
            "gateway_p99_ms": res["gateway"].get("gateway_p99_ms"),  # frame in -> answer out, in the gateway
            "gateway_gc_max_pause_ms": res["gateway"].get("gc_max_pause_ms"),
            "rss_mb": res["rss_mb"],
            "lost": lost,
            "answered": res["answered"],
            "stored": len(stored),
            "unanswered": res["unanswered"],
            "resent": res["resent"],
            "failed_logins": res["failed_logins"],
            "login_s": res["login_s"],
            "p99_target_ms": TARGET_P99_MS,
            "p99_ok": res["p99_ms"] < TARGET_P99_MS,
        })
        if bare is not None:
            bare_rate = bare["answered"] / bare["span_s"] if bare["span_s"] else 0.0
            out.update({
                "bare_note": "bare = the same gateway and terminals, publisher acknowledging at once (no broker)",
                "bare_reports_per_s": round(bare_rate, 1),
                "bare_p99_answer_ms": bare["p99_ms"],
                "bare_rss_mb": bare["rss_mb"],
                "bare_duration_s": args.baseline_duration,
                "p99_vs_bare": round(res["p99_ms"] / bare["p99_ms"], 2) if bare["p99_ms"] else None,
            })
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        await admin.close()
    return out


def run(args: argparse.Namespace) -> int:
    if args.quick:
        args.terminals, args.duration, args.baseline_duration = min(args.terminals, 1000), 20.0, 10.0
    out = with_machine(asyncio.run(bench(args)))
    print(json.dumps(out, indent=None if args.json else 2))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("gateway", help="JT/T 808 terminals through one gateway process into the database")
    p.add_argument("--json", action="store_true")
    p.add_argument("--terminals", type=int, default=10_000)
    p.add_argument("--interval", type=float, default=10.0, help="seconds between reports per terminal")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of reporting (after all logged in)")
    p.add_argument("--baseline-duration", type=float, default=30.0, help="0: skip the broker-less baseline")
    p.add_argument("--quick", action="store_true", help="1,000 terminals, 20 s (baseline 10 s)")
    p.add_argument("--stack-broker", action="store_true",
                   help="publish through the local stack's broker instead of a throwaway one (same config)")
    p.set_defaults(func=run)


def _main() -> None:
    """Child processes: ``serve`` (the gateway) and ``terminals``."""
    ap = argparse.ArgumentParser(prog="python -m wulian.cli.benches.gateway")
    sub = ap.add_subparsers(dest="role", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--port", type=int, required=True)
    sv.add_argument("--dsn", required=True)
    sv.add_argument("--bare", action="store_true")
    tm = sub.add_parser("terminals")
    tm.add_argument("--port", type=int, required=True)
    tm.add_argument("--n", type=int, required=True)
    tm.add_argument("--interval", type=float, default=10.0)
    tm.add_argument("--duration", type=float, default=60.0)
    tm.add_argument("--seed", type=int, default=1)
    tm.add_argument("--out", required=True)
    tm.add_argument("--answer-timeout", type=float, default=10.0)
    tm.add_argument("--retries", type=int, default=3)
    tm.add_argument("--login-concurrency", type=int, default=200)
    tm.add_argument("--login-timeout", type=float, default=300.0)
    args = ap.parse_args()
    _raise_nofile()
    import logging

    logging.basicConfig(level=logging.WARNING)
    from wulian.ingest.service import tune_gc

    tune_gc()  # both processes hold 10,000 connections' worth of objects for the whole run
    if args.role == "serve":
        asyncio.run(_serve(args))
    else:
        print(json.dumps(asyncio.run(_terminals(args))), flush=True)


if __name__ == "__main__":
    _main()
