"""The faults a chaos run injects, in turn, while the sources publish. Each is a small object with a
``name`` and ``inject(env)``; the gateway restart acts on whatever gateways the run started."""
from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Callable, Protocol

from wulian.ingest.chaos.field import GatewayStartError
from wulian.ingest.chaos.stack import ChaosStack, IngestProcess


@dataclass
class ChaosEnv:
    """What faults act on: the throwaway stack, the ingest process, and any restartable gateways."""

    stack: ChaosStack
    ingest: IngestProcess
    gateways: dict[str, object] = field(default_factory=dict)  # name -> GatewayProcess (stop/start/wait_ready)
    progress: Callable[[str], None] = lambda msg: None
    front_door: Callable[[str], object] | None = None  # client id -> MqttParams of devices (default: Mosquitto)

    def device_params(self, client_id: str):
        return self.front_door(client_id) if self.front_door else self.stack.mqtt_params(client_id)


class Fault(Protocol):
    name: str

    async def inject(self, env: ChaosEnv) -> None: ...


@dataclass
class KillIngest:
    """kill -9 of ingest and a restart, ``times`` times ``every_s`` apart: what it held unacknowledged is
    redelivered to its session; its alarm engine resumes from a snapshot older than the data."""

    down_s: float = 1.0
    times: int = 3
    every_s: float = 4.0
    name: str = "kill_ingest"

    async def inject(self, env: ChaosEnv) -> None:
        for k in range(self.times):
            if k:
                await asyncio.sleep(self.every_s)
            env.ingest.kill9()
            env.progress("ingest killed (SIGKILL)")
            await asyncio.sleep(self.down_s)
            env.ingest.start()
            env.progress("ingest restarted")


async def _outage(env: "ChaosEnv", stop, start, down_s: float, what: str) -> None:
    """Stop a server (blocking call, off the loop), keep it down ``down_s``, start it again."""
    await asyncio.to_thread(stop)
    env.progress(f"{what} stopped for {down_s:.0f}s")
    await asyncio.sleep(down_s)
    await asyncio.to_thread(start)
    env.progress(f"{what} started")


@dataclass
class RestartBroker:
    """Graceful Mosquitto restart with persistence on; publishers and ingest reconnect to their sessions."""

    down_s: float = 2.0
    name: str = "restart_broker"

    async def inject(self, env: ChaosEnv) -> None:
        await _outage(env, env.stack.stop_broker, env.stack.start_broker, self.down_s, "mosquitto")


@dataclass
class KillBrokerQueued:
    """kill -9 of the MQTT front door while it holds a queue: the consumer (ingest, or the routers) is
    stopped for ``queue_s`` while devices keep publishing, so the broker PUBACKs messages it only holds
    for the consumer's session; then SIGKILL (no shutdown save), ``down_s`` down, restart, consumer back.
    Whatever the broker acknowledged but had not yet persisted is lost here: the fault measures it."""

    queue_s: float = 3.0
    down_s: float = 1.0
    name: str = "kill_broker_queued"

    async def inject(self, env: ChaosEnv) -> None:
        await asyncio.to_thread(env.ingest.stop_intake)
        env.progress(f"consumer stopped; the broker queues for {self.queue_s:.0f}s")
        await asyncio.sleep(self.queue_s)
        await asyncio.to_thread(env.stack.kill_broker)
        env.progress("mosquitto killed (SIGKILL) with a queue")
        await asyncio.sleep(self.down_s)
        await asyncio.to_thread(env.stack.start_broker)
        env.progress("mosquitto started")
        await asyncio.to_thread(env.ingest.start)


@dataclass
class StopDatabase:
    """PostgreSQL stopped (fast shutdown) for ``down_s`` and started again; ingest holds its acks."""

    down_s: float = 60.0
    name: str = "stop_database"

    async def inject(self, env: ChaosEnv) -> None:
        await _outage(env, env.stack.stop_pg, env.stack.start_pg, self.down_s, "postgresql")


@dataclass
class RestartGateway:
    """kill -9 of every TCP gateway and a restart; devices reconnect and resend what was never answered."""

    down_s: float = 2.0
    name: str = "restart_gateway"

    async def inject(self, env: ChaosEnv) -> None:
        for name, gw in env.gateways.items():
            gw.stop()
            env.progress(f"gateway {name} killed (SIGKILL)")
        await asyncio.sleep(self.down_s)
        for name, gw in env.gateways.items():
            gw.start()
            try:
                await gw.wait_ready()
            except GatewayStartError as exc:  # a supervisor (systemd Restart=on-failure) starts it again
                env.progress(f"gateway {name} failed to start, starting it again: {exc}")
                gw.start()
                await gw.wait_ready()
            env.progress(f"gateway {name} restarted")


def standard_faults(quick: bool, db_down_s: float | None = None, gateways: bool = True) -> list[Fault]:
    faults: list[Fault] = [KillIngest(), RestartBroker(), KillBrokerQueued(),
                           StopDatabase(db_down_s if db_down_s is not None else (5.0 if quick else 60.0))]
    if gateways:
        faults.append(RestartGateway())
    return faults
