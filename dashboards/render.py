"""Model -> Grafana dashboard JSON, through grafana-foundation-sdk's typed builders.

The SDK has no builder for PostgreSQL targets, so ``_SqlTarget`` supplies one (the JSON the PostgreSQL
query editor writes in code mode). Layout (gridPos) is the SDK's: panels flow left to right by width.
"""
from __future__ import annotations

import json
import re
from typing import Any

from grafana_foundation_sdk.builders import bargauge, barchart, common as common_b
from grafana_foundation_sdk.builders import dashboard as dash_b
from grafana_foundation_sdk.builders import geomap, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common as common_m
from grafana_foundation_sdk.models import dashboard as dash_m
from grafana_foundation_sdk.models import geomap as geomap_m

from wulian.dashboards.model import DATASOURCE_TYPE, DATASOURCE_UID, Dashboard, Panel, Query, Variable
from wulian.settings import DashboardSettings

DEFAULTS = DashboardSettings()  # the model's defaults (no environment read here)

DATASOURCE = dash_m.DataSourceRef(type_val=DATASOURCE_TYPE, uid=DATASOURCE_UID)

# ``col IN ($var)`` as written in dashboards/ (readable), rendered so that an empty selection (a variable
# with no options, e.g. a region without such devices) is no filter instead of the syntax error ``IN ()``:
# Grafana joins the quoted values with commas, so ``ARRAY[$var]::text[]`` is ``ARRAY[]::text[]`` then.
_IN_VAR = re.compile(r"([\w.\->'()]+?)\s+IN\s+\(\$(\w+)\)")


def empty_safe(sql: str) -> str:
    """Rewrite every ``expr IN ($var)`` into a form valid (and unfiltered) for an empty selection."""
    return _IN_VAR.sub(lambda m: f"(cardinality(ARRAY[${m.group(2)}]::text[]) = 0"
                                 f" OR {m.group(1)} = ANY(ARRAY[${m.group(2)}]::text[]))", sql)


def basemap(s: DashboardSettings = DEFAULTS) -> dict[str, Any]:
    """The geomaps' base layer: XYZ tiles from the configured (self-hosted) server, never an online default."""
    return {"type": "xyz", "name": "Basemap", "config": {"url": s.tile_url, "attribution": s.tile_attribution}}

_BUILDERS = {
    "timeseries": timeseries.Panel,
    "table": table.Panel,
    "stat": stat.Panel,
    "geomap": geomap.Panel,
    "statetimeline": statetimeline.Panel,
    "barchart": barchart.Panel,
    "bargauge": bargauge.Panel,
}


class _SqlQuery(cogvariants.Dataquery):
    def __init__(self, query: Query) -> None:
        self.query = query

    def to_json(self) -> dict[str, object]:
        return {
            "refId": self.query.ref_id,
            "datasource": {"type": DATASOURCE_TYPE, "uid": DATASOURCE_UID},
            "editorMode": "code",
            "format": self.query.format,
            "rawQuery": True,
            "rawSql": empty_safe(self.query.sql.strip()),
        }


class _SqlTarget(cogbuilder.Builder[_SqlQuery]):
    def __init__(self, query: Query) -> None:
        self._query = _SqlQuery(query)

    def build(self) -> _SqlQuery:
        return self._query


def _variable(v: Variable) -> dash_b.QueryVariable:
    b = (
        dash_b.QueryVariable(v.name)
        .label(v.label)
        .query(empty_safe(v.sql.strip()))
        .datasource(DATASOURCE)
        .multi(v.multi)
        .include_all(v.include_all)
        .sort(dash_m.VariableSort.ALPHABETICAL_ASC)
        .refresh(
            dash_m.VariableRefresh.ON_TIME_RANGE_CHANGED
            if v.refresh_on_time_change
            else dash_m.VariableRefresh.ON_DASHBOARD_LOAD
        )
    )
    if v.include_all:
        b = b.current(dash_m.VariableOption(selected=True, text=["All"], value=["$__all"]))
    return b


def _geomap_options(b: geomap.Panel, p: Panel, s: DashboardSettings) -> geomap.Panel:
    markers = (
        common_b.MapLayerOptions()
        .type(p.layer)
        .name(p.title)
        .location(common_b.FrameGeometrySource().mode(common_m.FrameGeometrySourceMode.COORDS)
                  .latitude("latitude").longitude("longitude"))
        .config({
            "showLegend": True,
            "style": {
                "size": {"fixed": 6},
                "color": {"field": p.fields[0] if p.fields else "value", "fixed": "dark-green"},
                "opacity": 0.8,
                "text": {"field": "name", "mode": "field"} if "name" in p.fields else {"mode": "fixed"},
            },
        })
        .tooltip(True)
    )
    view = geomap.MapViewConfig().id("fit").all_layers(True).zoom(10)  # fit to the markers
    base = basemap(s)
    return (b.view(view).basemap(common_b.MapLayerOptions().type(base["type"]).name(base["name"]).config(base["config"]))
            .layers([markers]).tooltip(geomap.TooltipOptions().mode(geomap_m.TooltipMode.DETAILS)))


def _panel(p: Panel, panel_id: int, s: DashboardSettings) -> cogbuilder.Builder[dash_m.Panel]:
    b = _BUILDERS[p.kind]().id(panel_id).title(p.title).datasource(DATASOURCE).height(p.height).span(p.width)
    for q in p.queries:
        b = b.with_target(_SqlTarget(q))
    if p.description:
        b = b.description(p.description)
    if p.unit:
        b = b.unit(p.unit)
    if p.no_data:
        b = b.no_value(p.no_data)
    if p.decimals is not None:
        b = b.decimals(p.decimals)
    if p.min is not None:
        b = b.min(p.min)
    if p.max is not None:
        b = b.max(p.max)
    if p.interval:
        b = b.interval(p.interval)
    if p.max_data_points:
        b = b.max_data_points(p.max_data_points)
    if p.thresholds:
        steps = [dash_m.Threshold(value=t.value, color=t.color) for t in p.thresholds]
        b = b.thresholds(dash_b.ThresholdsConfig().mode(dash_m.ThresholdsMode.ABSOLUTE).steps(steps))
        b = b.color_scheme(dash_b.FieldColor().mode(dash_m.FieldColorModeId.THRESHOLDS))
    if p.mappings:
        options = {str(int(m.value)) if float(m.value).is_integer() else str(m.value):
                   dash_m.ValueMappingResult(text=m.text, color=m.color, index=i)
                   for i, m in enumerate(p.mappings)}
        value_map = dash_m.ValueMap(options=options)
        if p.mapped_field:
            b = b.override_by_name(p.mapped_field, [
                dash_m.DynamicConfigValue(id_val="mappings", value=[value_map]),
                dash_m.DynamicConfigValue(id_val="custom.cellOptions", value={"type": "color-background"}),
            ])
        else:
            b = b.mappings([value_map])
        if not p.thresholds and not p.mapped_field:
            b = b.color_scheme(dash_b.FieldColor().mode(dash_m.FieldColorModeId.THRESHOLDS))
    for name, colour in p.colors:
        b = b.override_by_name(name, [dash_m.DynamicConfigValue(
            id_val="color", value={"mode": "fixed", "fixedColor": colour})])
    for o in p.overrides:
        props = [dash_m.DynamicConfigValue(id_val=o.prop, value=o.value)]
        b = b.override_by_regexp(o.match, props) if o.regex else b.override_by_name(o.match, props)
    if p.stacked and p.kind == "barchart":
        b = b.stacking(common_m.StackingMode.NORMAL)
    if p.stacked and p.kind == "timeseries":
        b = b.stacking(common_b.StackingConfig().mode(common_m.StackingMode.NORMAL))
    if p.kind in ("timeseries", "barchart", "statetimeline"):
        b = b.legend(common_b.VizLegendOptions().show_legend(True).display_mode(common_m.LegendDisplayMode.LIST)
                     .placement(common_m.LegendPlacement.BOTTOM))
    if p.kind == "timeseries":
        b = b.tooltip(common_b.VizTooltipOptions().mode(common_m.TooltipDisplayMode.MULTI)
                      .sort(common_m.SortOrder.DESCENDING))
    if p.kind == "geomap":
        b = _geomap_options(b, p, s)
    if p.kind == "stat":
        b = b.reduce_options(common_b.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
    if p.kind == "table" and p.fields:
        # Column order as declared; verify checks every declared field is returned.
        b = b.with_transformation(dash_m.DataTransformerConfig(
            id_val="organize", options={"indexByName": {f: i for i, f in enumerate(p.fields)}}))
    if p.kind == "statetimeline":
        b = b.merge_values(True).show_value(common_m.VisibilityMode.AUTO)
    if p.kind == "barchart" and p.fields:
        b = b.x_field(p.fields[0])
    return b


def render(d: Dashboard, s: DashboardSettings = DEFAULTS) -> dict[str, Any]:
    """The dashboard JSON Grafana imports (``uid``, ``templating``, ``panels`` with ids 1..n); ``s`` is the
    ``dashboards`` section of the entry point's settings (the defaults: the committed files)."""
    b = (
        dash_b.Dashboard(d.title)
        .uid(d.uid)
        .description(d.description)
        .tags(["wulian", *d.tags])
        .time(d.time_from, "now")
        .timezone("browser")
        .refresh(d.refresh)
        .editable()
        .tooltip(dash_m.DashboardCursorSync.CROSSHAIR)
    )
    for v in d.variables:
        b = b.with_variable(_variable(v))
    for i, p in enumerate(d.panels, start=1):
        b = b.with_panel(_panel(p, i, s))
    doc = json.loads(json.dumps(b.build(), cls=JSONEncoder))
    for var in doc.get("templating", {}).get("list", []):
        var.pop("id", None)  # the SDK writes a zero UUID; Grafana assigns its own
    doc["annotations"] = {"list": []}
    for panel in doc.get("panels", []):
        if panel.get("options") is None:
            panel["options"] = {}  # plugins' option migrations expect an object
    return doc


def to_json_text(doc: dict[str, Any]) -> str:
    """Stable text for committed files: sorted keys, two-space indent, trailing newline."""
    return json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=False) + "\n"
