"""What every ral_dist dashboard shares: the data source, the Ray cluster / session / job variables, panel helpers.

Variables follow Ray's own dashboards: ``Cluster`` (KubeRay's ``ray_io_cluster`` label; matches everything when
absent), ``SessionName`` (one Ray cluster's lifetime) and ``JobId`` (one ``ray job submit``), plus ``window``,
the averaging window of rates and per-step means (steps are seconds to minutes apart).
"""

from __future__ import annotations

from dataclasses import dataclass

from grafana_foundation_sdk.builders import common as gc
from grafana_foundation_sdk.builders import dashboard as gd
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.models import common as mc
from grafana_foundation_sdk.models import dashboard as md

from ral_dist.runtime.metrics import RUN_STEPS

DATASOURCE = md.DataSourceRef(type_val="prometheus", uid="${datasource}")
# Label filters: ral_dist's metrics carry JobId; Ray's node metrics only the session (and cluster, on KubeRay).
CLUSTER = 'ray_io_cluster=~"$Cluster"'
SESSION = f'SessionName=~"$SessionName",{CLUSTER}'
RUN = f'{SESSION},JobId=~"$JobId"'
WINDOW = "$window"


def variables() -> list:
    def query_var(name: str, query: str, description: str, all_value: str, multi: bool = False):
        return (gd.QueryVariable(name).label(name).description(description).datasource(DATASOURCE)
                .query(query).refresh(md.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(md.VariableSort.ALPHABETICAL_DESC)
                .include_all(True).all_value(all_value).multi(multi))

    return [
        gd.DatasourceVariable("datasource").label("Data source").type("prometheus"),
        query_var("Cluster", f"label_values({RUN_STEPS.series}, ray_io_cluster)",
                  "The Ray cluster (the ray_io_cluster label KubeRay sets; empty on a local cluster).", ".*"),
        query_var("SessionName", f"label_values({RUN_STEPS.series}{{{CLUSTER}}}, SessionName)",
                  "The Ray session: one start of the cluster.", ".+"),
        query_var("JobId", f"label_values({RUN_STEPS.series}{{{SESSION}}}, JobId)",
                  "The Ray job: one run of jobs/ral_grpo.py (a resumed run is a new job).", ".+", multi=True),
        gd.IntervalVariable("window").label("Window").description("Averaging window of rates and per-step means.")
        .values("1m,5m,15m,1h").current(md.VariableOption(selected=True, text="5m", value="5m")),
    ]


@dataclass
class Query:
    expr: str
    legend: str = ""


def _targets(queries: list[Query]) -> list:
    return [prometheus.Dataquery().expr(q.expr).legend_format(q.legend).ref_id(chr(ord("A") + i))
            .datasource(DATASOURCE) for i, q in enumerate(queries)]


def graph(title: str, description: str, unit: str, *queries: Query, stacked: bool = False, bars: bool = False,
          width: int = 12):
    panel = (timeseries.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
             .targets(_targets(list(queries))).span(width).height(8).line_width(1).fill_opacity(10)
             .show_points(mc.VisibilityMode.AUTO).span_nulls(True)
             .legend(gc.VizLegendOptions().show_legend(True).display_mode(mc.LegendDisplayMode.LIST)
                     .placement(mc.LegendPlacement.BOTTOM).calcs([]))
             .tooltip(gc.VizTooltipOptions().mode(mc.TooltipDisplayMode.MULTI).sort(mc.SortOrder.NONE)))
    if stacked:
        panel = panel.stacking(gc.StackingConfig().mode(mc.StackingMode.NORMAL)).fill_opacity(60)
    if bars:
        panel = panel.draw_style(mc.GraphDrawStyle.BARS)
    return panel


def single(title: str, description: str, unit: str, *queries: Query, width: int = 6):
    return (stat.Panel().title(title).description(description).unit(unit).datasource(DATASOURCE)
            .targets(_targets(list(queries))).span(width).height(4).graph_mode(mc.BigValueGraphMode.AREA)
            .reduce_options(gc.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))


def dashboard(uid: str, title: str, description: str, rows: list[tuple[str, list]]):
    board = (gd.Dashboard(title).uid(uid).description(description).tags(["ral_dist", "ray"]).editable()
             .time("now-1h", "now").refresh("30s").tooltip(md.DashboardCursorSync.CROSSHAIR)
             .variables(variables()))
    for row_title, panels in rows:
        board = board.with_row(gd.Row(row_title))
        for panel in panels:
            board = board.with_panel(panel)
    return board


# What each variable's "All" selects, and the window the tests use: the values that turn a panel's expression
# into plain PromQL.
ALL_VALUES = {"Cluster": ".*", "SessionName": ".+", "JobId": ".+", "window": "5m"}


def resolve(expr: str, **values: str) -> str:
    """A panel's expression as Grafana sends it, with its variables replaced (defaults: ALL_VALUES)."""
    for name, value in {**ALL_VALUES, **values}.items():
        expr = expr.replace(f"${name}", value)
    return expr


def mean_per_event(histogram: str, by: str, selector: str = RUN) -> str:
    """Mean observed value per event of a histogram over the window (e.g. seconds per phase)."""
    return (f"sum by ({by}) (rate({histogram}_sum{{{selector}}}[{WINDOW}])) / "
            f"sum by ({by}) (rate({histogram}_count{{{selector}}}[{WINDOW}]))")
