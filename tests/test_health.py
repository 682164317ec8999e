"""Health endpoints: /livez and /readyz on the API, and next to /metrics of the other services."""
import asyncio

import httpx

from wulian.api.app import create_app
from wulian.ingest.health import Health, db_probe, serve_metrics
from tests.services import free_port


async def test_api_livez_and_readyz(settings, pool):
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://api") as c:
            assert (await c.get("/livez")).json() == {"status": "ok"}
            r = await c.get("/readyz")
            assert r.status_code == 200 and r.json() == {"status": "ok", "database": True, "broker": True}
            settings.mqtt.port = free_port()  # the broker goes away: not ready, still live
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["broker"] is False
            assert (await c.get("/livez")).status_code == 200


async def test_service_health_follows_its_probes_and_heartbeat(pool):
    broker_up = {"v": True}
    health = Health({"database": lambda: db_probe(pool), "broker": lambda: broker_up["v"]}, interval_s=0.05)
    server = serve_metrics("127.0.0.1", 0, health)
    base = f"http://127.0.0.1:{server.server_port}"
    try:
        async with httpx.AsyncClient(base_url=base) as c:
            assert (await c.get("/readyz")).status_code == 503  # no probe has run yet
            await health.check()
            r = await c.get("/readyz")
            assert r.status_code == 200 and r.json()["checks"] == {"database": True, "broker": True}
            broker_up["v"] = False
            await health.check()
            r = await c.get("/readyz")
            assert r.status_code == 503 and r.json()["checks"]["broker"] is False
            assert (await c.get("/livez")).status_code == 200
            health.last_beat -= health.stale_after_s + 1  # the loop stopped beating: not live
            assert (await c.get("/livez")).status_code == 503
            assert "python_info" in (await c.get("/metrics")).text  # Prometheus as before
    finally:
        server.shutdown()


async def test_a_probe_that_raises_or_hangs_means_not_ready():
    async def hangs():
        await asyncio.sleep(10)

    def raises():
        raise OSError("db down")

    health = Health({"hangs": hangs, "raises": raises}, interval_s=0.05)
    await health.check()
    assert health.results == {"hangs": False, "raises": False} and not health.ready() and health.live()


def test_metrics_listen_address_is_a_setting():
    from wulian.settings import Settings

    s = Settings(_env_file=None)
    hosts = {s.ingest.metrics_host, s.gateway.metrics_host, s.derive.metrics_host, s.notify.metrics_host,
             s.forward.metrics_host}
    assert hosts == {"127.0.0.1"}
    server = serve_metrics("0.0.0.0", 0)
    try:
        assert server.server_address[0] == "0.0.0.0"
    finally:
        server.shutdown()


async def test_a_stop_signal_ends_the_heartbeat_through_the_stop_event():
    """The services stop on SIGINT/SIGTERM by an event their loops check, not by cancelling the main task
    (on 3.11 a cancel landing in a finishing wait_for is swallowed: CI saw the service outlive its stop
    timeout); the first signal sets the event and gives the signals back their default action."""
    import os
    import signal

    from wulian.cli.stop_signal import STOP_SIGNALS, stop_event_on_signals

    health = Health({"ok": lambda: True}, interval_s=30.0)
    stop = stop_event_on_signals()
    beat = asyncio.create_task(health.run(stop))
    await asyncio.sleep(0.05)
    assert not beat.done() and health.ready()
    os.kill(os.getpid(), signal.SIGTERM)
    await asyncio.wait_for(beat, 2.0)  # well inside the 30 s interval: the event ended it, not a timeout
    assert stop.is_set()
    loop = asyncio.get_running_loop()
    assert all(not loop.remove_signal_handler(sig) for sig in STOP_SIGNALS)  # none left installed
