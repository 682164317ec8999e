"""The dashboards' own typed model: what a panel shows, which SQL feeds it and which tables it reads.

Grafana's JSON is produced from these records by ``render.py`` (grafana-foundation-sdk builders). The
model exists because the SDK has no PostgreSQL target and no notion of "tables read": every ``Query``
declares its tables, so the read-only role's grants (``build.readonly_tables``) come from the dashboards
themselves, and ``verify`` runs as that role, so an undeclared table fails loudly.

Adding a panel for a new derived table is a few lines in the stream's module:

    Panel("Hourly SO2 vs permit", "timeseries",
          Query("SELECT $__timeGroupAlias(hour, 1h), ... FROM source_hourly WHERE $__timeFilter(hour) ...",
                tables=("source_hourly", "devices")), unit="conmgm3")
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PanelKind = Literal["timeseries", "table", "stat", "geomap", "statetimeline", "barchart", "bargauge"]
QueryFormat = Literal["time_series", "table"]

DATASOURCE_TYPE = "grafana-postgresql-datasource"  # the PostgreSQL plugin id since Grafana 10.3
DATASOURCE_UID = "wulian-timescale"  # fixed by deploy/grafana/provisioning/datasources/wulian.yaml


@dataclass(frozen=True, slots=True)
class Query:
    """One SQL target. ``tables`` are the relations it reads (granted to the read-only role)."""

    sql: str
    tables: tuple[str, ...]
    format: QueryFormat = "time_series"
    ref_id: str = "A"


@dataclass(frozen=True, slots=True)
class Threshold:
    """Colour from ``value`` upwards (``None``: the base step)."""

    value: float | None
    color: str


@dataclass(frozen=True, slots=True)
class ValueText:
    """Show number ``value`` as ``text`` in ``color`` (value mapping)."""

    value: float
    text: str
    color: str


@dataclass(frozen=True, slots=True)
class Override:
    """A field-config property for the fields whose name matches (``regex``: a JS regex such as
    ``/ limit$/``)."""

    match: str
    prop: str
    value: object
    regex: bool = False


@dataclass(frozen=True, slots=True)
class Panel:
    """A visualisation fed by ``queries``.

    ``fields`` names the columns the panel needs beyond what its kind implies (tables: the columns shown,
    in order; geomaps always need ``latitude`` and ``longitude``). ``verify`` checks them.
    """

    title: str
    kind: PanelKind
    queries: tuple[Query, ...]
    description: str = ""
    unit: str = ""
    width: int = 12
    height: int = 8
    fields: tuple[str, ...] = ()
    thresholds: tuple[Threshold, ...] = ()
    mappings: tuple[ValueText, ...] = ()
    mapped_field: str = ""  # apply ``mappings`` to this column only (default: every field)
    no_data: str = ""  # what an empty result means here ("No open alerts"): verify calls it quiet, not empty
    colors: tuple[tuple[str, str], ...] = ()  # (series or column name, colour) fixed per series
    overrides: tuple[Override, ...] = ()
    stacked: bool = False
    decimals: int | None = None
    min: float | None = None
    max: float | None = None
    interval: str = ""  # lower bound on $__interval for this panel ("1h" for hourly data)
    max_data_points: int | None = None
    layer: str = "markers"  # geomap data layer: markers, or route (a track through the points in row order)

    @property
    def tables(self) -> frozenset[str]:
        return frozenset(t for q in self.queries for t in q.tables)


@dataclass(frozen=True, slots=True)
class Variable:
    """A query template variable; ``sql`` may use earlier variables and the time macros."""

    name: str
    label: str
    sql: str
    tables: tuple[str, ...]
    multi: bool = True
    include_all: bool = True
    refresh_on_time_change: bool = False


@dataclass(frozen=True, slots=True)
class Dashboard:
    """One dashboard; ``folder`` is the Grafana folder it is pushed into (one per stream)."""

    uid: str
    title: str
    folder: str
    description: str
    variables: tuple[Variable, ...]
    panels: tuple[Panel, ...]
    tags: tuple[str, ...] = field(default=())
    time_from: str = "now-6h"
    refresh: str = "1m"

    @property
    def tables(self) -> frozenset[str]:
        out = {t for v in self.variables for t in v.tables}
        for p in self.panels:
            out |= p.tables
        return frozenset(out)
