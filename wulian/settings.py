"""The one settings object: every knob is an environment variable with the ``WULIAN_`` prefix.

Nested sections use ``__``: ``WULIAN_DB__DSN``, ``WULIAN_MQTT__PORT``, ``WULIAN_INGEST__BATCH_SIZE``.
Entry points (``wulian/cli/``) build it once (``get_settings()``) and pass it, or the section a module
needs, down; nothing else calls ``get_settings()`` and ``core/`` never sees it. This module is also the
only one that reads the process environment (:func:`child_env`, :func:`debug_requested`;
tests/test_import_rules.py checks both). The README lists every field.
"""
from __future__ import annotations

import os
from functools import lru_cache
from typing import Literal
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from wulian.core.grid.limits import KV35_DEFAULT_BAND, check_kv35_band
from wulian.core.timebase import CHINA_OFFSET_S

ROOT = Path(__file__).resolve().parent.parent
# Service-account passwords written by ``wulian stack up`` (deploy/local/stack.sh); read as an env file,
# so variables set in the environment win.
SECRETS_FILE = Path(os.environ.get("WULIAN_STACK__DIR") or ROOT / ".stack") / "secrets.env"


class StackSettings(BaseModel):
    """Project-local PostgreSQL + Mosquitto started by ``wulian stack up``."""

    dir: Path = ROOT / ".stack"
    pg_port: int = 55432
    mqtt_port: int = 51883
    pg_major: int = 15
    os_user: str = "wulian"  # PostgreSQL refuses to run as root: the stack runs it as this user


class DbSettings(BaseModel):
    dsn: str | None = None  # default: the local stack's database
    pool_min: int = 2
    pool_max: int = 8
    retention_days: dict[str, int] = Field(
        default_factory=lambda: {
            "readings": 400,
            "vehicle_positions": 180,
            "traffic_observations": 400,
            "dead_letters": 90,
            "device_events": 400,
        }
    )
    retention_interval_s: float = 3600.0
    compress_after_days: int = 7  # chunks older than this are compressed (Community edition only)


class MqttSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int | None = None  # default: the local stack's broker
    username: str | None = None
    password: str | None = None
    client_id: str = "wulian-ingest-1"
    topic_prefix: str = "wl"
    keepalive: int = 30
    session_expiry_s: int = 86400
    receive_maximum: int = 20000
    tls: bool = False
    ca_file: Path | None = None
    # Device accounts over the dynamic-security control topic (ingest/broker_accounts.py) as this
    # administrator; without a password `wulian device add` writes the local stack's password file.
    dynsec_username: str = "wulian-admin"
    dynsec_password: str | None = None


class IngestSettings(BaseModel):
    batch_size: int = 5000  # messages per database transaction (at most)
    batch_delay_ms: float = 50.0  # how long to wait for a batch to fill
    commit_inflight: int = 2  # batches committing at once, each on its own connection (acks stay in order)
    auto_register: bool = True  # unknown device ids from topics get a registry row
    max_payload_bytes: int = 256 * 1024
    future_tolerance_s: float = 600.0  # readings further in the future are dead-lettered
    past_limit_days: float = 3650.0  # readings older than this are dead-lettered
    metrics_port: int = 9108  # /metrics, /livez, /readyz (ingest/health.py; 0: off)
    metrics_host: str = "127.0.0.1"  # listen address of that endpoint (0.0.0.0: for a remote Prometheus)


class AlarmSettings(BaseModel):
    tick_interval_s: float = 5.0  # timer pass for missing-data rules
    save_interval_s: float = 30.0  # engine state snapshot
    rules_poll_s: float = 10.0  # how soon rule changes made through the API take effect


class ClusterSettings(BaseModel):
    """Cluster mode (``wulian cluster|router|worker``): NATS JetStream between routers and workers."""

    nats_urls: list[str] = Field(default_factory=list)  # default: the local cluster (``wulian cluster up``)
    partitions: int = 64  # fixed when the stream is created
    replicas: int = 3
    router_batch: int = 2000
    worker_batch: int = 2000
    takeover_delay_s: float = 1.0  # a partition seen free this long is taken
    rebalance_delay_s: float = 10.0  # membership stable this long before a worker gives partitions away
    ack_wait_s: float = 60.0
    # "nats": devices publish MQTT 3.1.1 to the NATS nodes' MQTT listeners, which store QoS 1 in JetStream
    # before the PUBACK, each device under its own account (ingest/nats_accounts.py); "mosquitto": routers
    # take a $share of the broker's topics, which loses what it PUBACKed in the last 1-2 s before a kill -9
    # (docs/cluster.md)
    front_door: Literal["mosquitto", "nats"] = "nats"
    # The NATS service account of routers and workers; default: the local cluster's (``wulian cluster up``
    # writes it to <stack dir>/nats/accounts.json). Set both for a cluster on other machines.
    nats_username: str | None = None
    nats_password: str | None = None


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_rows: int = 10000
    rate_limit_per_s: float = 20.0  # per API key, sustained (0: off)
    rate_limit_burst: float = 100.0
    tls_certfile: Path | None = None  # serve HTTPS when both are set
    tls_keyfile: Path | None = None
    sse_replay_window_s: float = 3600.0  # Last-Event-ID: events this recent are replayed (issue 17)
    sse_replay_max: int = 5000  # at most this many replayed events per reconnection


class SimSettings(BaseModel):
    region: str = "shantou"
    rate_hz: float = 1.0  # messages per device per second
    duration_s: float = 0.0  # 0: until stopped


class GatewaySettings(BaseModel):
    """TCP gateways for field devices (``wulian gateway hj212|jt808``)."""

    host: str = "127.0.0.1"
    hj212_port: int = 9212
    jt808_port: int = 9808
    region: str = "shantou"  # region of auto-provisioned devices
    auto_provision: bool = False  # unknown devices are refused unless this is on
    max_connections: int = 20000
    idle_timeout_s: float = 300.0  # no bytes for this long: the connection is closed
    max_frame_bytes: int = 4096
    answer_timeout_s: float = 10.0  # no PUBACK in time: the device gets no answer and resends
    auth_fail_limit: int = 5  # auth failures per IP within the window before it is refused outright
    auth_fail_window_s: float = 60.0
    hj212_metrics_port: int = 9109  # Prometheus /metrics (0: off)
    jt808_metrics_port: int = 9110
    metrics_host: str = "127.0.0.1"  # listen address of both gateways' metrics + health endpoints
    mqtt_username: str | None = None  # the gateway's service account (default: the mqtt section's)
    mqtt_password: str | None = None
    mqtt_client_id: str = "wulian-gateway"


class TrafficSettings(BaseModel):
    """Traffic forecasting and incident job (``ingest/jobs/traffic.py``); speeds in km/h."""

    interval_s: float = 300.0  # how often the job runs (one 5-minute bin)
    lag_s: int = 60  # a bin is processed this long after it ends, so late messages land first
    history_days: float = 7.0  # training window of a refit
    min_fit_bins: int = 288  # 5-minute bins of history needed before the first fit
    refit_every_h: float = 24.0  # data time between refits
    backfill_bins: int = 36  # bins forecast on a region's first run
    utc_offset_h: float = CHINA_OFFSET_S / 3600  # local time of the roads (time-of-day profile)
    min_drop_kmh: float = 24.0  # an incident needs the speed at least this far below the forecast
    # hidden units of the speed forecaster's residual net (unset: the forecaster's default, 64 units x 3
    # members; 0 = off: 45-minute errors about 22 % below persistence instead of 25 %, at half the fit CPU;
    # README, traffic)
    net_hidden: int | None = Field(default=None, ge=0)
    data_dir: Path | None = None  # Los-loop replay data (None: the week packaged in simulators/data/los_loop)


class EnvironmentSettings(BaseModel):
    """Environment jobs (issue 7): schedule and the configurable rule parameters."""

    interval_s: float = 300.0  # how often each environment job runs
    lag_s: float = 900.0  # an hour is processed this long after it ended (late data first)
    backfill_h: int = 48  # first run: start this far back (at a China midnight)
    max_span_h: int = 168  # most hours one run processes
    min_valid_rate: float = 0.9  # daily valid-data rate below which a completeness alert is raised
    exceedance_min_hours: int = 1  # consecutive exceeding hours that make an episode
    heavy_pollution_hours: int = 4  # hours of AQI >= 201 that raise the heavy-pollution warning
    below_target_hours: int = 6  # hours worse than the target class that raise an alert
    water_min_daily_hours: int = 6  # hourly means a daily water class needs
    pulse_items: list[str] = Field(default_factory=lambda: ["NH3_N", "CODMn", "TP"])
    pulse_step_min: int = 10  # grid step of pulse tracing
    pulse_threshold: float = 5.0  # robust z-score of a pulse
    pulse_lookback_h: int = 12  # history before the new periods (baseline and upstream arrivals)
    o2_ceiling: float | None = None  # cap on measured O2 before conversion, where a local rule sets one
    reference_o2: dict[str, float] = Field(default_factory=dict)  # per source type, overrides the defaults


class EnergySettings(BaseModel):
    """Energy and transport jobs (issue 6: ``ingest/jobs/{vehicles,grid,meters}.py``)."""

    vehicles_interval_s: float = 60.0
    grid_interval_s: float = 60.0
    meters_interval_s: float = 300.0
    lag_s: float = 120.0  # data this recent is left to the next run (late messages land first)
    backfill_h: float = 48.0  # first run: start this far back
    max_span_h: float = 24.0  # most data time one run advances
    vehicle_context_h: float = 25.0  # track history re-read before the watermark (fatigue, 24 h rule)
    # Stricter local vehicle rules (national scopes: core/vehicles/regulations.py). Classes added to a
    # coach rule's scope: {"night_fatigue" | "night_speed" | "fatigue_24h": ["hazmat", ...]}.
    vehicle_rule_classes: dict[str, list[str]] = Field(default_factory=dict)
    night_bans: dict[str, str] = Field(default_factory=dict)  # class -> China time "22:00-06:00": no driving
    outage_silence_min: float = 15.0  # a feeder with no live meter this long is out
    forecast_horizon_h: float = 6.0  # feeder load forecast ahead
    zero_consumption_days: int = 7  # consecutive zero-use days that raise an anomaly
    leak_threshold_m3_h: float = 0.02  # minimum night flow (02:00-04:00) above this is a leak night
    leak_nights: int = 3  # consecutive leak nights that raise the alert
    meter_slots_per_day: int = 96  # expected register readings a day (collection rate)
    # 35 kV and above supply voltage band, % of nominal: |upper| + |lower| <= 10 (GB/T 12325-2008 §4.1).
    kv35_upper_pct: float = KV35_DEFAULT_BAND[0]
    kv35_lower_pct: float = KV35_DEFAULT_BAND[1]

    @model_validator(mode="after")
    def _kv35_band(self) -> "EnergySettings":
        check_kv35_band(self.kv35_upper_pct, self.kv35_lower_pct)
        return self


class NotifySettings(BaseModel):
    """Notification sender (``wulian notify``, issue 17): outbox delivery, retries, escalation."""

    poll_s: float = 5.0  # outbox poll when no wake-up arrives
    batch: int = 100  # due notifications claimed per pass
    concurrency: int = 8  # deliveries in flight
    timeout_s: float = 10.0  # per HTTP request
    lease_s: float = 60.0  # a claimed notification comes due again after this (a killed sender's)
    backoff_base_s: float = 2.0  # first retry delay; doubles per attempt (with jitter)
    backoff_max_s: float = 600.0
    max_attempts: int = 20  # then 'failed' (GET /v1/notifications?state=failed; POST .../retry)
    rate_window_s: float = 60.0  # the window of a channel's rate_per_window
    escalation_poll_s: float = 5.0  # how often due escalations are looked for
    metrics_port: int = 9111  # Prometheus /metrics (0: off)
    metrics_host: str = "127.0.0.1"


class ForwardSettings(BaseModel):
    """HJ 212 upstream forwarder (``wulian forward hj212``, issue 17)."""

    client_id: str = "wulian-forward-hj212"  # persistent MQTT session: packets wait in the broker
    poll_s: float = 2.0  # outbox poll per upstream
    batch: int = 200  # outbox rows read per pass
    answer_timeout_s: float = 10.0  # no 9014 in time: reconnect and resend
    connect_timeout_s: float = 5.0
    backoff_base_s: float = 1.0  # reconnect delay after an upstream failure; doubles, capped
    backoff_max_s: float = 60.0
    mapping_refresh_s: float = 10.0  # how soon new forwarded stations are picked up
    metrics_port: int = 9112  # Prometheus /metrics (0: off)
    metrics_host: str = "127.0.0.1"


class ProfileSettings(BaseModel):
    """Derive jobs of the shipped profiles (issue 19: ``ingest/jobs/{charging,coldchain,energy}.py``)."""

    interval_s: float = 300.0
    lag_s: float = 120.0  # data this recent is left to the next run (late messages land first)
    backfill_h: float = 48.0  # first run: start this far back
    max_span_h: float = 24.0  # most data time one run advances
    charger_max_hold_s: float = 900.0  # a charger's state holds this long at most (its offline rule: 15 min)
    coldchain_low_c: float = 2.0  # default band (GSP chilled goods); per device: attrs temp_low / temp_high
    coldchain_high_c: float = 8.0
    coldchain_max_hold_s: float = 300.0  # a temperature reading vouches for this long at most
    trip_context_h: float = 72.0  # longest trip: readings re-read this far before the watermark
    baseline_weeks: int = 4  # energy anomaly: same hour of the week, this many weeks back
    anomaly_k: float = 4.0  # high hour: above median + k x spread (MAD-based)
    anomaly_min_rel_spread: float = 0.05  # spread floor, share of the median
    anomaly_hours: int = 3  # consecutive high hours that make an anomaly


class DeriveSettings(BaseModel):
    """The derived-data service (``wulian derive``)."""

    metrics_port: int = 9113  # /metrics, /livez, /readyz (0: off)
    metrics_host: str = "127.0.0.1"


class DashboardSettings(BaseModel):
    """Grafana dashboards as built by ``wulian dashboards build`` (deploy/grafana/README.md)."""

    # XYZ tile URL template of the geomaps' base map. The default is a same-origin path, served by the
    # site's own tile server behind Grafana's reverse proxy: an isolated network never reaches the
    # internet for tiles (without that server the maps show markers on a blank background).
    tile_url: str = "/tiles/{z}/{x}/{y}.png"
    tile_attribution: str = ""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WULIAN_", env_nested_delimiter="__", extra="ignore",
                                      env_file=SECRETS_FILE if os.access(SECRETS_FILE, os.R_OK) else None)

    log_level: str = "INFO"
    log_format: str = "text"  # or "json": one object per line with device/topic context
    stack: StackSettings = Field(default_factory=StackSettings)
    db: DbSettings = Field(default_factory=DbSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sim: SimSettings = Field(default_factory=SimSettings)
    environment: EnvironmentSettings = Field(default_factory=EnvironmentSettings)
    traffic: TrafficSettings = Field(default_factory=TrafficSettings)
    gateway: GatewaySettings = Field(default_factory=GatewaySettings)
    energy: EnergySettings = Field(default_factory=EnergySettings)
    profiles: ProfileSettings = Field(default_factory=ProfileSettings)
    notify: NotifySettings = Field(default_factory=NotifySettings)
    forward: ForwardSettings = Field(default_factory=ForwardSettings)
    dashboards: DashboardSettings = Field(default_factory=DashboardSettings)
    derive: DeriveSettings = Field(default_factory=DeriveSettings)

    @model_validator(mode="after")
    def _default_to_local_stack(self) -> "Settings":
        if self.db.dsn is None:
            self.db.dsn = f"postgresql://wulian@127.0.0.1:{self.stack.pg_port}/wulian"
        if self.mqtt.port is None:
            self.mqtt.port = self.stack.mqtt_port
        return self


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()


def child_env(**overrides: str) -> dict[str, str]:
    """The environment for a child process of ours (``wulian ingest`` run by the demo, a chaos gateway):
    this process's own, with ``overrides`` (``WULIAN_...`` settings of the child) on top."""
    return {**os.environ, **overrides}


def debug_requested(var: str = "WULIAN_DEBUG") -> bool:
    """``WULIAN_DEBUG=1``: read before the settings are built, so that bad settings can show a traceback."""
    return os.environ.get(var, "").strip().lower() not in ("", "0", "false", "no", "off")
