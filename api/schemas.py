"""Response models of the API (``XPublic``; lists as ``{data, count}``)."""
from __future__ import annotations

from datetime import date, datetime
from typing import Any

from pydantic import BaseModel, Field

from wulian.api.paging import ListPage


class Health(BaseModel):
    status: str
    database: bool
    broker: bool


class DevicePublic(BaseModel):
    device_id: str
    region: str
    stream: str
    device_type: str | None = None
    name: str | None = None
    attrs: dict[str, Any] = {}
    auto_registered: bool
    created_at: datetime
    last_seen: datetime | None = None
    online: bool


class DevicesPublic(ListPage):
    data: list[DevicePublic]
class LatestValue(BaseModel):
    metric: str
    time: datetime
    value: float
    flag: str


class LatestPublic(BaseModel):
    device_id: str
    stream: str
    values: list[LatestValue] = []
    position: dict[str, Any] | None = None
    traffic: dict[str, Any] | None = None


class DeviceEventPublic(BaseModel):
    time: datetime
    kind: str
    code: str | None = None
    detail: dict[str, Any]


class DeviceEventsPublic(ListPage):
    device_id: str
    data: list[DeviceEventPublic]


class ReadingBucket(BaseModel):
    time: datetime
    avg: float
    min: float
    max: float
    count: int


class ReadingsPublic(ListPage):
    device_id: str
    metric: str
    bucket: str
    data: list[ReadingBucket]
class AlertPublic(BaseModel):
    id: int
    rule_id: int
    device_id: str
    region: str
    stream: str
    metric: str
    severity: str
    state: str
    title: str
    raised_at: datetime
    last_seen: datetime
    first_value: float | None = None
    last_value: float | None = None
    peak_value: float | None = None
    count: int
    acknowledged_at: datetime | None = None
    acknowledged_by: str | None = None
    ack_comment: str | None = None
    cleared_at: datetime | None = None
    closed_at: datetime | None = None
    closed_by: str | None = None
    close_comment: str | None = None


class AlertsPublic(ListPage):
    data: list[AlertPublic]


class AlertEventPublic(BaseModel):
    time: datetime
    event: str
    actor: str
    comment: str | None = None
    value: float | None = None
    event_time: datetime | None = None


class AlertDetail(AlertPublic):
    history: list[AlertEventPublic]


class AlertAction(BaseModel):
    comment: str | None = None


class RulePublic(BaseModel):
    id: int
    enabled: bool
    definition: dict[str, Any]
    updated_at: datetime
    updated_by: str | None = None


class RulesPublic(ListPage):
    data: list[RulePublic]


class AlertStatPublic(BaseModel):
    """One group of alerts: the dimensions asked for (others null), counts, and time to acknowledge / to
    clear from ``raised_at`` in seconds (percentiles over the alerts that reached that state)."""

    region: str | None = None
    stream: str | None = None
    severity: str | None = None
    rule_id: int | None = None
    day: date | None = None
    alerts: int
    open: int
    acknowledged: int
    cleared: int
    tta_p50_s: float | None = None
    tta_p90_s: float | None = None
    ttc_p50_s: float | None = None
    ttc_p90_s: float | None = None


class AlertStatsPublic(ListPage):
    by: list[str]
    data: list[AlertStatPublic]


class AuditEntryPublic(BaseModel):
    id: int
    time: datetime
    actor: str
    key_id: str | None = None
    source: str
    action: str
    object_type: str
    object_id: str | None = None
    region: str | None = None
    before: Any = None
    after: Any = None


class AuditPublic(ListPage):
    data: list[AuditEntryPublic]


class ApiKeyPublic(BaseModel):
    """An API key without its secret (only a hash is stored; the key is shown once at creation)."""

    key_id: str
    name: str
    role: str
    regions: list[str]
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None
    active: bool


class ApiKeysPublic(ListPage):
    data: list[ApiKeyPublic]


class DeadLetterPublic(BaseModel):
    id: int
    time: datetime
    topic: str
    device_id: str | None = None
    kind: str | None = None
    reason: str
    detail: str | None = None
    payload_size: int
    payload_preview: str | None = None
    replayed_at: datetime | None = None
    replay_result: str | None = None


class DeadLettersPublic(ListPage):
    data: list[DeadLetterPublic]


class ReplayRequest(BaseModel):
    ids: list[int] = Field(min_length=1, max_length=500, description="dead-letter ids to run through decode and "
                                                                      "write again")


class ReplayOutcome(BaseModel):
    id: int
    result: str = Field(description="ok, or the reason it was refused again (e.g. unknown_device)")
    records: int = 0


class ReplayPublic(BaseModel):
    replayed: int
    ok: int
    failed: int
    results: list[ReplayOutcome]
