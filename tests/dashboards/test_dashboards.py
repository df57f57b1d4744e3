"""Static checks of dashboards/, deploy/ and docker-compose.yml (no services started).

- The Grafana JSON is what dashboards/build.py generates, with the structure Grafana 11.6 loads (schemaVersion
  41, unique dashboard uids and panel ids, every panel with a datasource, targets with `expr` and refId, a
  gridPos inside the 24-column grid, no overlapping panels), and every field survives parsing into the typed
  Grafana 11.6 model of grafana-foundation-sdk (an unknown or misspelt field would be dropped).
- Every metric a dashboard or alert selects is exported by the engine (engine/metrics.py, prometheus-client's
  process metrics, or Prometheus's own `up`). test_live_promql.py checks they really carry data.
- The Experiments dashboard reads ClickHouse (SQL through the ClickHouse plugin); its SQL runs on chDB in
  tests/experiments/test_queries.py.
- Provisioning files point at what compose mounts (the compose file itself: tests/deploy/test_compose.py).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from prometheus_client import REGISTRY

import engine.metrics  # noqa: F401  (registers every Nudge metric)

from .queries import ROOT, alert_queries, dashboard_files, dashboard_queries, metric_names, panels

GRAFANA_SCHEMA_VERSION = 41  # Grafana 11.6, as named in docs/operations.md
CLICKHOUSE_PLUGIN = "grafana-clickhouse-datasource"
CLICKHOUSE_DASHBOARDS = {"nudge-experiments.json"}
PROMETHEUS_OWN = {"up"}


def exported_names() -> set[str]:
    """Sample names the default registry can expose (also for labelled metrics that have no child yet)."""
    suffixes = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_sum", "_count", "_created"),
                "summary": ("_sum", "_count", "_created", ""), "gauge": ("",), "info": ("_info",)}
    names = set()
    for family in REGISTRY.collect():
        names.update(family.name + s for s in suffixes.get(family.type, ("",)))
        names.update(sample.name for sample in family.samples)
    return names


@pytest.fixture(scope="module")
def models() -> dict[str, dict]:
    return {path.name: json.loads(path.read_text()) for path in dashboard_files()}


def test_the_dashboards_exist(models: dict[str, dict]) -> None:
    assert set(models) == {"nudge-overview.json", "nudge-rules-actions.json", "nudge-pipeline-health.json",
                           "nudge-experiments.json"}


def test_json_is_what_build_py_generates() -> None:
    pytest.importorskip("grafana_foundation_sdk", reason="dev extra grafana-foundation-sdk not installed")
    result = subprocess.run([sys.executable, str(ROOT / "dashboards" / "build.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def lost_fields(ours: object, parsed: object, path: str = "") -> list[str]:
    """Paths present in `ours` but missing or different after parsing (defaults the model adds are fine)."""
    if isinstance(ours, dict) and isinstance(parsed, dict):
        return [p for k, v in ours.items() if v is not None
                for p in (lost_fields(v, parsed[k], f"{path}/{k}") if k in parsed else [f"{path}/{k}"])]
    if isinstance(ours, list) and isinstance(parsed, list) and len(ours) == len(parsed):
        pairs = enumerate(zip(ours, parsed, strict=True))
        return [p for i, (a, b) in pairs for p in lost_fields(a, b, f"{path}[{i}]")]
    return [] if ours == parsed else [f"{path}: {ours!r} became {parsed!r}"]


def test_every_field_is_known_to_the_grafana_11_6_schema(models: dict[str, dict]) -> None:
    """Parse each dashboard with the SDK's typed Grafana 11.6 model: unknown fields would be lost."""
    pytest.importorskip("grafana_foundation_sdk", reason="dev extra grafana-foundation-sdk not installed")
    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import Dashboard

    plugins.register_default_plugins()  # panel options and Prometheus queries parse into their own types
    for name, model in models.items():
        parsed = json.loads(json.dumps(Dashboard.from_json(model), cls=JSONEncoder))
        assert not lost_fields(model, parsed), f"{name}: {lost_fields(model, parsed)[:5]}"


def test_dashboard_structure(models: dict[str, dict]) -> None:
    uids = [m["uid"] for m in models.values()]
    assert len(uids) == len(set(uids)), f"dashboard uids must be unique: {uids}"
    for name, model in models.items():
        assert model["schemaVersion"] == GRAFANA_SCHEMA_VERSION, name
        assert model["title"].startswith("Nudge / "), name
        assert model.get("id") is None, f"{name}: provisioned dashboards must not carry a database id"
        assert model["templating"]["list"][0]["type"] == "datasource", name
        ids = [p["id"] for p in panels(model)]
        assert len(ids) == len(set(ids)), f"{name}: panel ids must be unique"
        occupied: dict[tuple[int, int], str] = {}
        for panel in panels(model):
            where = f"{name} / {panel.get('title')}"
            grid = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= grid.keys(), where
            inside = grid["x"] >= 0 and grid["w"] > 0 and grid["x"] + grid["w"] <= 24
            assert inside, f"{where}: outside the 24-column grid"
            for dx in range(grid["w"]):
                for dy in range(grid["h"]):
                    cell = (grid["x"] + dx, grid["y"] + dy)
                    assert cell not in occupied, f"{where} overlaps {occupied[cell]}"
                    occupied[cell] = where
            if panel["type"] == "row":
                continue
            assert panel.get("title") and panel.get("description"), f"{where}: needs a title and description"
            assert panel.get("targets"), f"{where}: no query"
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert all(ref_ids) and len(ref_ids) == len(set(ref_ids)), f"{where}: refIds {ref_ids}"
            if name in CLICKHOUSE_DASHBOARDS:  # SQL on the experiment views (tests/experiments runs it on chDB)
                assert panel["datasource"] == {"type": CLICKHOUSE_PLUGIN, "uid": "${clickhouse}"}, where
                for target in panel["targets"]:
                    assert target.get("rawSql", "").strip(), f"{where}: empty SQL"
                    assert target["datasource"]["type"] == CLICKHOUSE_PLUGIN, where
                continue
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, where
            for target in panel["targets"]:
                assert target.get("expr", "").strip(), f"{where}: empty expr"
                assert target["datasource"]["type"] == "prometheus", where


def test_every_query_names_only_exported_metrics() -> None:
    exported = exported_names() | PROMETHEUS_OWN
    queries = list(dashboard_queries()) + list(alert_queries())
    assert len(queries) > 40
    for query in queries:
        names = metric_names(query.expr)
        assert names, f"{query.where}: no metric in {query.expr!r}"
        unknown = names - exported
        assert not unknown, f"{query.where}: {sorted(unknown)} not exported by the engine ({query.expr})"


def test_every_nudge_metric_appears_on_some_dashboard() -> None:
    """A metric the engine exports but no panel shows is either dead code or a missing panel."""
    shown = set().union(*(metric_names(q.expr) for q in dashboard_queries()))
    families = {f.name for f in REGISTRY.collect() if f.name.startswith("nudge_")}
    missing = {f for f in families if not any(n == f or n.startswith(f + "_") for n in shown)}
    assert not missing, f"metrics with no panel: {sorted(missing)}; add one in dashboards/build.py and run it"


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (scripts/install-system.sh)")
def test_promtool_checks_and_unit_tests_the_alert_rules() -> None:
    check = subprocess.run(["promtool", "check", "rules", "dashboards/alerts.yml"],
                           cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    unit = subprocess.run(["promtool", "test", "rules", "dashboards/alerts.test.yml"],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert unit.returncode == 0, unit.stdout + unit.stderr


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed (scripts/install-system.sh)")
def test_compose_prometheus_config_is_valid(tmp_path: Path) -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/rules/alerts.yml"]  # where docker-compose.yml mounts it
    config["rule_files"] = [str(ROOT / "dashboards" / "alerts.yml")]
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    check = subprocess.run(["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"nudge-worker", "nudge-dispatcher", "nudge-sink", "nudge-collector"} <= jobs


def test_compose_mounts_what_provisioning_expects() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "redis", "clickhouse", "prometheus", "grafana", "collector", "worker", "dispatcher",
            "sink"} <= services.keys()
    grafana_mounts = {m.split(":")[1]: m.split(":")[0] for m in services["grafana"]["volumes"] if m[0] == "."}
    provider = yaml.safe_load((ROOT / "dashboards/provisioning/dashboards/nudge.yml").read_text())
    path = provider["providers"][0]["options"]["path"]
    assert grafana_mounts[path] == "./dashboards"
    datasource = yaml.safe_load((ROOT / "dashboards/provisioning/datasources/prometheus.yml").read_text())
    assert datasource["datasources"][0]["url"] == "http://prometheus:9090"
    prometheus_mounts = dict(m.split(":")[:2] for m in services["prometheus"]["volumes"] if m.startswith("."))
    assert prometheus_mounts["./dashboards/alerts.yml"] == "/etc/prometheus/rules/alerts.yml"
    for name in ("collector", "worker", "dispatcher", "sink"):
        service = services[name]
        assert service["healthcheck"]["test"], name
        assert service["environment"]["NUDGE_BROKER_PROFILE"] == "kafka", name
    assert services["sink"]["environment"]["NUDGE_CLICKHOUSE_DSN"].startswith("http://")


def test_compose_and_image_set_only_variables_nudge_reads() -> None:
    """A misspelt NUDGE_* variable in deployment files would be silently ignored: every one must be read by
    engine/config.py or referenced as ${VAR} by connectors.yaml."""
    known = set(re.findall(r"NUDGE_[A-Z_]+", (ROOT / "engine" / "config.py").read_text()))
    known |= set(re.findall(r"\$\{(NUDGE_[A-Z_]+)", (ROOT / "connectors.yaml").read_text()))
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    used = {name for service in compose["services"].values()
            for name in (service.get("environment") or {}) if name.startswith("NUDGE_")}
    used |= set(re.findall(r"\b(NUDGE_[A-Z_]+)=", (ROOT / "deploy" / "Dockerfile").read_text()))
    assert used, "no NUDGE_* variables found in docker-compose.yml / deploy/Dockerfile"
    assert used <= known, f"set but never read: {sorted(used - known)}"
