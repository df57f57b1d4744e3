"""Typed panel builders for Nudge's Grafana dashboards (used by dashboards/build.py).

Contract: every helper returns a `grafana-foundation-sdk` builder (Grafana 11.6 schema) bound to the
dashboard's `$datasource` variable (the Experiments dashboard's: `$clickhouse`, SQL on the ClickHouse views; see
`ClickHouseQuery`). Queries are PromQL; counters are read with `rate` over `$__rate_interval`
and histograms with `histogram_quantile` over the rate of their `_bucket` series. No I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TypeVar

from grafana_foundation_sdk.builders import common as cb
from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import heatmap, prometheus, stat, statetimeline, table, timeseries
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.runtime import UnknownDataquery
from grafana_foundation_sdk.models import common as cm
from grafana_foundation_sdk.models import dashboard as dm
from grafana_foundation_sdk.models import heatmap as hm
from grafana_foundation_sdk.models import prometheus as pm

DATASOURCE = dm.DataSourceRef(type_val="prometheus", uid="${datasource}")
RATE = "$__rate_interval"

Target = tuple[str, str]  # (PromQL expression, legend format)
PanelT = TypeVar("PanelT", timeseries.Panel, stat.Panel, statetimeline.Panel, table.Panel, heatmap.Panel)


def query(
    expr: str, legend: str = "", *, instant: bool = False, fmt: pm.PromQueryFormat | None = None
) -> prometheus.Dataquery:
    """One Prometheus target in code mode: a range query unless `instant`."""
    target = prometheus.Dataquery().expr(expr).datasource(DATASOURCE).editor_mode(pm.QueryEditorMode.CODE)
    if legend:
        target = target.legend_format(legend)
    target = target.instant() if instant else target.range()
    if fmt is not None:
        target = target.format(fmt)
    return target


def thresholds(*steps: tuple[float | None, str]) -> db.ThresholdsConfig:
    """Absolute thresholds; the first step's value is None (Grafana's -Infinity)."""
    return (
        db.ThresholdsConfig()
        .mode(dm.ThresholdsMode.ABSOLUTE)
        .steps([dm.Threshold(value=v, color=c) for v, c in steps])
    )


def quantiles(
    metric: str, by: str = "", qs: Sequence[float] = (0.5, 0.95, 0.99), where: str = ""
) -> list[Target]:
    """p50/p95/p99 (or `qs`) of a histogram, optionally split by the labels in `by`."""
    labels = f"le, {by}" if by else "le"
    selector = f"{metric}_bucket{{{where}}}" if where else f"{metric}_bucket"
    out = []
    for q in qs:
        expr = f"histogram_quantile({q}, sum by ({labels}) (rate({selector}[{RATE}])))"
        legend = f"p{round(q * 100)}" + (
            " " + " ".join(f"{{{{{b.strip()}}}}}" for b in by.split(",")) if by else ""
        )
        out.append((expr, legend))
    return out


def framed(panel: PanelT, title: str, description: str, w: int, h: int, unit: str | None = None) -> PanelT:
    """What every panel of ours has: title, description, the Prometheus datasource, width, height (and unit)."""
    panel = panel.title(title).description(description).datasource(DATASOURCE).span(w).height(h)
    return panel if unit is None else panel.unit(unit)


def ts(
    title: str,
    description: str,
    targets: Iterable[Target],
    unit: str,
    *,
    w: int = 12,
    h: int = 8,
    stack: bool = False,
    limits: db.ThresholdsConfig | None = None,
) -> timeseries.Panel:
    """A time series of `targets` (expression, legend); `limits` draws threshold lines."""
    panel = (
        framed(timeseries.Panel(), title, description, w, h, unit)
        .line_width(1)
        .fill_opacity(10)
        .show_points(cm.VisibilityMode.NEVER)
        .legend(
            cb.VizLegendOptions()
            .display_mode(cm.LegendDisplayMode.LIST)
            .placement(cm.LegendPlacement.BOTTOM)
            .show_legend(True)
        )
        .tooltip(cb.VizTooltipOptions().mode(cm.TooltipDisplayMode.MULTI).sort(cm.SortOrder.DESCENDING))
    )
    if stack:
        panel = panel.stacking(cb.StackingConfig().mode(cm.StackingMode.NORMAL))
    if limits is not None:
        panel = panel.thresholds(limits).thresholds_style(
            cb.GraphThresholdsStyleConfig().mode(cm.GraphThresholdsStyleMode.LINE)
        )
    for expr, legend in targets:
        panel = panel.with_target(query(expr, legend))
    return panel


def single(
    title: str,
    description: str,
    expr: str,
    unit: str,
    limits: db.ThresholdsConfig,
    *,
    w: int = 4,
    h: int = 4,
) -> stat.Panel:
    """A stat panel showing the latest value of one expression, coloured by `limits`."""
    return (
        framed(stat.Panel(), title, description, w, h, unit)
        .thresholds(limits)
        .color_mode(cm.BigValueColorMode.VALUE)
        .graph_mode(cm.BigValueGraphMode.AREA)
        .reduce_options(cb.ReduceDataOptions().calcs(["lastNotNull"]).values(False))
        .with_target(query(expr))
    )


def query_variable(name: str, label: str, metric: str, label_name: str) -> db.QueryVariable:
    """A multi-select variable listing the values of `label_name` on `metric`; "All" matches every value."""
    return (
        db.QueryVariable(name)
        .label(label)
        .datasource(DATASOURCE)
        .query(f"label_values({metric}, {label_name})")
        .refresh(dm.VariableRefresh.ON_TIME_RANGE_CHANGED)
        .sort(dm.VariableSort.ALPHABETICAL_ASC)
        .multi(True)
        .include_all(True)
        .all_value(".*")
    )


def dashboard(uid: str, title: str, description: str) -> db.Dashboard:
    return (
        db.Dashboard(title)
        .uid(uid)
        .description(description)
        .tags(["nudge"])
        .timezone("utc")
        .refresh("10s")
        .time("now-1h", "now")
        .tooltip(dm.DashboardCursorSync.CROSSHAIR)
        .editable()
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .link(
            db.DashboardLink("Nudge dashboards")
            .type(dm.DashboardLinkType.DASHBOARDS)
            .tags(["nudge"])
            .as_dropdown(True)
            .include_vars(True)
            .keep_time(True)
        )
    )


def state_timeline(title: str, description: str, expr: str, legend: str, states: Sequence[tuple[str, str]]):
    """Discrete states over time; `states[i]` = (text, colour) for the value i."""
    mapping = dm.ValueMap(
        options={str(i): dm.ValueMappingResult(text=t, color=c, index=i) for i, (t, c) in enumerate(states)}
    )
    return (
        framed(statetimeline.Panel(), title, description, 12, 8)
        .mappings([mapping])
        .thresholds(thresholds((None, states[0][1]), *((i, c) for i, (_, c) in enumerate(states) if i)))
        .with_target(query(expr, legend))
    )


def instant_table(title: str, description: str, expr: str, *, w: int = 12, h: int = 8) -> table.Panel:
    """One instant query shown as a table, without the Time column."""
    return (
        framed(table.Panel(), title, description, w, h)
        .with_target(query(expr, instant=True, fmt=pm.PromQueryFormat.TABLE))
        .with_override(
            dm.MatcherConfig(id_val="byName", options="Time"),
            [dm.DynamicConfigValue(id_val="custom.hidden", value=True)],
        )
    )


def bucket_heatmap(title: str, description: str, metric: str, unit: str, *, w: int = 12, h: int = 8):
    """Observations per histogram bucket over time (the histogram's `_bucket` series, pre-bucketed)."""
    return (
        framed(heatmap.Panel(), title, description, w, h)
        .calculate(False)
        .y_axis(heatmap.YAxisConfig().unit(unit))
        .color(heatmap.HeatmapColorOptions().mode(hm.HeatmapColorMode.SCHEME).scheme("Oranges"))
        .with_target(query(
            f"sum by (le) (increase({metric}_bucket[{RATE}]))", "{{le}}", fmt=pm.PromQueryFormat.HEATMAP
        ))
    )


# The Experiments dashboard reads ClickHouse (the migration-5 views) through Grafana's ClickHouse data source
# plugin (grafana-clickhouse-datasource; provisioning/datasources/clickhouse.yml). The SDK has no builder for its
# queries, so `ClickHouseQuery` builds the plugin's query model as a plain dict (kept as is by the SDK's
# UnknownDataquery when Grafana's JSON is parsed back).
CLICKHOUSE = dm.DataSourceRef(type_val="grafana-clickhouse-datasource", uid="${clickhouse}")
CLICKHOUSE_TABLE, CLICKHOUSE_TIME_SERIES = 1, 0  # the plugin's `format`


class ClickHouseQuery(cogbuilder.Builder[cogvariants.Dataquery]):
    """One SQL query of the ClickHouse plugin (SQL editor; `$__timeFilter(column)` is the plugin's macro)."""

    def __init__(self, sql: str, fmt: int = CLICKHOUSE_TABLE) -> None:
        self._internal = UnknownDataquery({
            "datasource": {"type": CLICKHOUSE.type_val, "uid": CLICKHOUSE.uid},
            "editorType": "sql",
            "format": fmt,
            "queryType": "table" if fmt == CLICKHOUSE_TABLE else "timeseries",
            "rawSql": sql.strip(),
        })

    def build(self) -> cogvariants.Dataquery:
        return self._internal


def clickhouse_framed(panel: PanelT, title: str, description: str, w: int, h: int, sql: str, fmt: int) -> PanelT:
    """A panel on the `$clickhouse` data source with one SQL query."""
    return (
        panel.title(title).description(description).datasource(CLICKHOUSE).span(w).height(h)
        .with_target(ClickHouseQuery(sql, fmt))
    )  # fmt: skip
