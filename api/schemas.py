"""Response models of the API (``XPublic``; lists as ``{data, count}``)."""
from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel


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


class DevicesPublic(BaseModel):
    data: list[DevicePublic]
    count: int


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


class DeviceEventsPublic(BaseModel):
    device_id: str
    data: list[DeviceEventPublic]
    count: int
    next_cursor: str | None = None


class ReadingBucket(BaseModel):
    time: datetime
    avg: float
    min: float
    max: float
    count: int


class ReadingsPublic(BaseModel):
    device_id: str
    metric: str
    bucket: str
    data: list[ReadingBucket]
    count: int


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


class AlertsPublic(BaseModel):
    data: list[AlertPublic]
    count: int
    next_cursor: int | None = None


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


class RulesPublic(BaseModel):
    data: list[RulePublic]
    count: int
