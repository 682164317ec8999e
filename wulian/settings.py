"""The one settings object: every knob is an environment variable with the ``WULIAN_`` prefix.

Nested sections use ``__``: ``WULIAN_DB__DSN``, ``WULIAN_MQTT__PORT``, ``WULIAN_INGEST__BATCH_SIZE``.
Entry points build it once (``get_settings()``) and pass plain values down; ``core/`` never sees it.
The README lists every field.
"""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import BaseModel, Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

ROOT = Path(__file__).resolve().parent.parent


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
        }
    )
    retention_interval_s: float = 3600.0


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


class IngestSettings(BaseModel):
    batch_size: int = 5000  # messages per database transaction (at most)
    batch_delay_ms: float = 50.0  # how long to wait for a batch to fill
    auto_register: bool = True  # unknown device ids from topics get a registry row
    max_payload_bytes: int = 256 * 1024
    future_tolerance_s: float = 600.0  # readings further in the future are dead-lettered
    past_limit_days: float = 3650.0  # readings older than this are dead-lettered
    metrics_port: int = 9108


class AlarmSettings(BaseModel):
    tick_interval_s: float = 5.0  # timer pass for missing-data rules
    save_interval_s: float = 30.0  # engine state snapshot
    rules_poll_s: float = 10.0  # how soon rule changes made through the API take effect


class ApiSettings(BaseModel):
    host: str = "127.0.0.1"
    port: int = 8080
    max_rows: int = 10000


class SimSettings(BaseModel):
    region: str = "shantou"
    rate_hz: float = 1.0  # messages per device per second
    duration_s: float = 0.0  # 0: until stopped


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="WULIAN_", env_nested_delimiter="__", extra="ignore")

    log_level: str = "INFO"
    stack: StackSettings = Field(default_factory=StackSettings)
    db: DbSettings = Field(default_factory=DbSettings)
    mqtt: MqttSettings = Field(default_factory=MqttSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    alarms: AlarmSettings = Field(default_factory=AlarmSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    sim: SimSettings = Field(default_factory=SimSettings)

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
