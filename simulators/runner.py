"""Publish a simulated city over MQTT (QoS 1) at a steady rate; prints progress on stderr."""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass

import orjson

from wulian.ingest.mqtt_client import MqttParams, MqttPublisher
from wulian.ingest.topics import topic_for
from wulian.simulators.city import DeviceSim

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunConfig:
    region: str = "shantou"
    rate_hz: float = 1.0  # messages per device per second
    duration_s: float = 0.0  # 0 = until interrupted
    prefix: str = "wl"
    progress_s: float = 5.0
    bad_rate: float = 0.0  # share of messages sent corrupted, as a faulty device in the field would


def run_fleet(fleet: list[DeviceSim], params: MqttParams, cfg: RunConfig) -> dict:
    """Publish one record per device per tick; returns published/acked counts."""
    topics = [topic_for(cfg.region, str(d.stream), d.device_id, "telemetry", cfg.prefix) for d in fleet]
    period = 1.0 / cfg.rate_hz
    start = time.monotonic()
    next_tick = start
    next_progress = start + cfg.progress_s
    with MqttPublisher(params, max_inflight=2000) as pub:
        try:
            while cfg.duration_s <= 0 or time.monotonic() - start < cfg.duration_s:
                ts = time.time_ns()
                for dev, topic in zip(fleet, topics):
                    payload = orjson.dumps(dev.sample(ts))
                    if cfg.bad_rate and dev.rng.random() < cfg.bad_rate:
                        payload = payload[: len(payload) // 2]  # cut short: lands in dead letters
                    pub.publish(topic, payload)
                next_tick += period
                now = time.monotonic()
                if now >= next_progress:
                    print(f"[simulate] published {pub.published} acked {pub.acked} ({len(fleet)} devices)",
                          file=sys.stderr, flush=True)
                    next_progress = now + cfg.progress_s
                if next_tick > now:
                    time.sleep(next_tick - now)
        except KeyboardInterrupt:
            pass
        pub.wait_acked(30.0)
        return {"published": pub.published, "acked": pub.acked, "refused": pub.refused}
