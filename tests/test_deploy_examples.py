"""Issue 14's deployment examples: the Prometheus alerts (deploy/prometheus/alerts.yml), the scrape config
of the compose setup (deploy/prometheus/prometheus.yml), the Grafana dashboard (deploy/grafana/) and the
compose file's listener and healthcheck.

Every PromQL expression may name only what the daemon exports: the sample names are derived from the
registry of :class:`notifier.ops.metrics.Metrics` (family type → sample suffixes), and checked against a
scrape of a running daemon. ``promtool`` (Debian's ``prometheus`` package) checks the rules' syntax and
runs them on made-up series to say what fires when; without it those tests are skipped.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from notifier.config.load import load_config, parse_config
from notifier.devtools.simulator import Simulator
from notifier.devtools.simulator.scenario import default_demo_scenario
from notifier.devtools.standins.webhook import WebhookReceiver
from notifier.ops.metrics import Metrics
from notifier.ops.service import Service
from tests.conftest import AK, ORDERS, PROJECT_ID, SESSIONS, SK, WEBHOOK_SECRET
from tests.support.daemons import serving
from tests.support.wait import until_async

ROOT = Path(__file__).resolve().parents[1]
ALERTS = ROOT / "deploy" / "prometheus" / "alerts.yml"
PROMETHEUS = ROOT / "deploy" / "prometheus" / "prometheus.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "dcs-notifier.json"
COMPOSE = ROOT / "docker-compose.yml"
DEMO_CONFIG = ROOT / "deploy" / "compose" / "demo.yaml"
PROMTOOL = shutil.which("promtool")
NEEDS_PROMTOOL = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool not found: install Debian's prometheus package (`apt-get install prometheus`), "
    "or take promtool from a release on https://prometheus.io/download/",
)
#: What the expressions may name beside the daemon's own metrics: Prometheus's per-target series.
PROMETHEUS_OWN = {"up"}
#: The scrape job the alerts are written for.
JOB = "dcs-notifier"

# -- the names the daemon exports --------------------------------------------------------------------

#: Sample names per family type, as prometheus-client writes them (``*_created`` is turned off in
#: notifier.ops.metrics). An unknown type is a KeyError: decide its samples here before using it.
SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "summary": ("", "_count", "_sum"),
    "info": ("_info",),
}


def exported_samples() -> set[str]:
    """Every sample name the daemon's registry can write, from each family's name and type."""
    return {
        family.name + suffix for family in Metrics().registry.collect() for suffix in SUFFIXES[family.type]
    }


EXPORTED = exported_samples()

# -- the names an expression uses --------------------------------------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GRAFANA_VARIABLE = re.compile(r"\$(?:\{[^}]*\}|\w+)")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w.])[A-Za-z_:][\w:]*(?![\w(])(?!\s*\()")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
_KEYWORDS |= {"group_left", "group_right", "inf", "nan"}
_DAEMON_NAME = re.compile(r"dcs_notifier_[a-z_]+")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names, functions, keywords, strings, ranges
    and Grafana's ``$variables`` are not metric names)."""
    text = _STRING.sub(" ", expr)
    text = _GRAFANA_VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {m for m in _IDENTIFIER.findall(text) if m.lower() not in _KEYWORDS}


def unknown_names(expr: str) -> set[str]:
    """What an expression names that the daemon (or Prometheus, for ``up``) does not export."""
    unknown = {name for name in _DAEMON_NAME.findall(expr) if name not in EXPORTED}
    return unknown | (metric_names(expr) - EXPORTED - PROMETHEUS_OWN)


# -- the files ------------------------------------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def panels(board: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """Every panel, rows' collapsed panels included."""
    for panel in board["panels"]:
        yield panel
        yield from panel.get("panels", [])


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) of every panel target and every query variable (``label_values(selector, label)``:
    its selector)."""
    board = dashboard()
    queries = [
        (f"panel {panel['title']!r} {target['refId']}", target["expr"])
        for panel in panels(board)
        for target in panel.get("targets", [])
    ]
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        m = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
        assert m, f"variable {variable['name']}: expected label_values(selector, label), got {query!r}"
        queries.append((f"variable {variable['name']}", m.group(1)))
    return queries


ALERT_IDS = [rule["alert"] for rule in alert_rules()]


# -- the checks themselves --------------------------------------------------------------------------------


def test_sample_names_follow_the_family_types() -> None:
    # Counters are written with _total, histograms as three series, gauges as they are.
    assert {
        "dcs_notifier_polls_total",
        "dcs_notifier_api_throttled_total",
        "dcs_notifier_api_request_duration_seconds_bucket",
        "dcs_notifier_api_request_duration_seconds_count",
        "dcs_notifier_delivery_latency_seconds_sum",
        "dcs_notifier_outbox_pending",
        "dcs_notifier_last_successful_poll_timestamp_seconds",
        "dcs_notifier_build_info",
    } <= EXPORTED
    # ... and the family names of counters and histograms are not sample names.
    assert "dcs_notifier_polls" not in EXPORTED
    assert "dcs_notifier_api_request_duration_seconds" not in EXPORTED
    assert not any(name.endswith("_created") for name in EXPORTED)


def test_metric_names_are_told_from_functions_labels_strings_and_variables() -> None:
    expr = (
        'sum by (job, source) (rate(dcs_notifier_polls_total{outcome="failed", reason=~"auth|up"}[10m]))'
        " / ignoring (reason) group_left sum without (le) (rate(other_metric:ratio5m[$__rate_interval]))"
        ' > bool 0.2 and on () absent(up{job="x"} offset 5m) or vector(1e3) unless'
        ' histogram_quantile(0.99, dcs_notifier_api_request_duration_seconds_bucket{instance=~"$instance"})'
    )
    assert metric_names(expr) == {
        "dcs_notifier_polls_total",
        "other_metric:ratio5m",
        "up",
        "dcs_notifier_api_request_duration_seconds_bucket",
    }


@pytest.mark.parametrize(
    ("expr", "unknown"),
    [
        ("rate(dcs_notifier_polls[5m])", {"dcs_notifier_polls"}),  # a counter's family name
        ("dcs_notifier_api_request_duration_seconds > 1", {"dcs_notifier_api_request_duration_seconds"}),
        ("dcs_notifier_outbox_pending_total", {"dcs_notifier_outbox_pending_total"}),  # a gauge's
        ("rate(process_cpu_seconds_total[5m])", {"process_cpu_seconds_total"}),  # not registered
        ('absent(up{job="dcs-notifier"} == 1)', set()),
        ("sum(rate(dcs_notifier_redis_errors_total[5m]))", set()),
    ],
)
def test_the_check_refuses_what_the_daemon_does_not_export(expr: str, unknown: set[str]) -> None:
    assert unknown_names(expr) == unknown


@pytest.mark.parametrize("rule", alert_rules(), ids=ALERT_IDS)
def test_alert_expressions_name_only_exported_metrics(rule: dict[str, Any]) -> None:
    expr = rule["expr"]
    assert metric_names(expr), f"{rule['alert']}: no metric found in {expr!r}"
    assert unknown_names(expr) == set(), f"{rule['alert']}: {expr}"


def test_every_alert_waits_has_a_severity_and_tells_the_person_on_call_what_it_means() -> None:
    rules = alert_rules()
    assert len(set(ALERT_IDS)) == len(rules)
    for rule in rules:
        name = rule["alert"]
        assert name.startswith("DcsNotifier"), name
        assert re.fullmatch(r"\d+[smh]", rule["for"]), f"{name}: for: {rule.get('for')}"
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert set(annotations) == {"summary", "description"}, name
        assert 10 < len(annotations["summary"]) <= 120, f"{name}: the summary is one line"
        assert len(annotations["description"]) > 150, f"{name}: the description says what to do"
    # The asked-for situations are all covered.
    exprs = " ".join(rule["expr"] for rule in rules)
    for needle in (
        f'up{{job="{JOB}"}} == 0',
        'dcs_notifier_polls_total{outcome="failed"}',
        "dcs_notifier_outbox_pending",
        "dcs_notifier_outbox_oldest_age_seconds",
        "dcs_notifier_dead_letters",
        "dcs_notifier_leases_held",
        "time() - max by (job) (dcs_notifier_last_successful_poll_timestamp_seconds)",
    ):
        assert needle in exprs, needle


@pytest.mark.parametrize(("where", "expr"), dashboard_queries(), ids=lambda v: str(v)[:60])
def test_dashboard_expressions_name_only_exported_metrics(where: str, expr: str) -> None:
    assert metric_names(expr), f"{where}: no metric found in {expr!r}"
    assert unknown_names(expr) == set(), f"{where}: {expr}"


def test_dashboard_parses_has_panels_and_takes_its_datasource_from_a_variable() -> None:
    board = dashboard()
    assert board["title"] == "dcs-notifier"
    every = list(panels(board))
    graphs = [p for p in every if p["type"] != "row"]
    assert len(graphs) >= 13
    assert len({p["id"] for p in every}) == len(every), "panel ids are unique"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    for panel in graphs:
        title = panel["title"]
        assert panel["targets"], f"{title}: no query"
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, title
        assert all(t["datasource"] == panel["datasource"] for t in panel["targets"]), title
        assert len({t["refId"] for t in panel["targets"]}) == len(panel["targets"]), title
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0, title
        assert panel.get("description"), f"{title}: say what the panel shows"
    # Every family the daemon exports is on the dashboard (a new metric needs a panel, or a reason).
    used = " ".join(expr for _, expr in dashboard_queries())
    families = {family.name for family in Metrics().registry.collect()}
    assert {f for f in families if not re.search(rf"\b{f}(_total|_bucket|_count|_sum)?\b", used)} == set()
    # Latency panels read the histograms' p50 and p99.
    for histogram in ("dcs_notifier_api_request_duration_seconds", "dcs_notifier_delivery_latency_seconds"):
        for q in ("0.5", "0.99"):
            assert re.search(rf"histogram_quantile\({q}, [^;]*{histogram}_bucket", used), (histogram, q)


# -- promtool -----------------------------------------------------------------------------------------------


def promtool(*args: str | Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@NEEDS_PROMTOOL
def test_promtool_checks_the_rules() -> None:
    result = promtool("check", "rules", ALERTS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(ALERT_IDS)} rules found" in result.stdout


@NEEDS_PROMTOOL
def test_promtool_checks_the_compose_scrape_config_and_the_rules_it_loads() -> None:
    result = promtool("check", "config", PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout


@NEEDS_PROMTOOL
def test_promtool_refuses_a_broken_rule(tmp_path: Path) -> None:
    # The check above can fail: a rule with a syntax error is refused.
    broken = {"groups": [{"name": "x", "rules": [{"alert": "X", "expr": "sum by (job (up)"}]}]}
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    assert promtool("check", "rules", tmp_path / "broken.yml").returncode != 0


#: Grafana's variables, replaced by what Prometheus would see, to check the dashboard's queries parse.
GRAFANA_VALUES = {"$__rate_interval": "1m", "$__interval": "30s", "$__range": "1h", "$job": JOB}
GRAFANA_VALUES["$instance"] = ".*"


@NEEDS_PROMTOOL
def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    rules = []
    for i, (where, expr) in enumerate(dashboard_queries()):
        for variable, value in GRAFANA_VALUES.items():
            expr = expr.replace(variable, value)
        assert "$" not in expr, f"{where}: a Grafana variable left: {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    (tmp_path / "dashboard.yml").write_text(yaml.safe_dump({"groups": [{"name": "d", "rules": rules}]}))
    result = promtool("check", "rules", tmp_path / "dashboard.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def series(name: str, values: str, **labels: str) -> dict[str, str]:
    """An input series of a promtool test, on job dcs-notifier unless told."""
    labels = {"job": JOB, **labels}
    return {"series": name + "{" + ", ".join(f'{k}="{v}"' for k, v in labels.items()) + "}", "values": values}


def both(name: str, values: str, **labels: str) -> list[dict[str, str]]:
    """The same series from two replicas (what every replica reads from the shared Redis)."""
    return [series(name, values, instance=f"n{i}:9464", **labels) for i in (1, 2)]


def fires(at: str, alert: str, *labelsets: dict[str, str]) -> dict[str, Any]:
    """At ``at``, ``alert`` fires with exactly these label sets (beside alertname); none given: silent."""
    return {"eval_time": at, "alertname": alert, "exp_alerts": [{"exp_labels": ls} for ls in labelsets]}


WARNING = {"severity": "warning", "job": JOB}
CRITICAL = {"severity": "critical", "job": JOB}
INSTANCES = "dcs_notifier_instances"
POLLS = "dcs_notifier_polls_total"
LAST_POLL = "dcs_notifier_last_successful_poll_timestamp_seconds"

#: (what, input series, expectations): promtool evaluates the rules every minute on the series.
Scenario = tuple[str, list[dict[str, str]], list[dict[str, Any]]]
SCENARIOS: list[Scenario] = [
    (
        "a replica stops answering scrapes at 2m",
        [series("up", "1 1 0x20", instance="n1:9464")],
        [
            fires("6m", "DcsNotifierDown"),
            fires("8m", "DcsNotifierDown", {**WARNING, "instance": "n1:9464"}),
            fires("1m", "DcsNotifierAbsent"),
            fires("8m", "DcsNotifierAbsent", {"severity": "critical"}),
        ],
    ),
    (
        "a replica answers every scrape",
        [series("up", "1x30", instance="n1:9464")],
        [fires("20m", "DcsNotifierDown"), fires("20m", "DcsNotifierAbsent")],
    ),
    (
        "no target of the job at all",
        [series("up", "1x20", job="something-else", instance="x:1")],
        [fires("4m", "DcsNotifierAbsent"), fires("6m", "DcsNotifierAbsent", {"severity": "critical"})],
    ),
    (
        "a third of the task polls fail from 10m; a tenth of the discovery polls always",
        [
            series(POLLS, "0+10x60", instance="n1:9464", source="tasks", outcome="ok"),
            series(POLLS, "0x10 5+5x50", instance="n1:9464", source="tasks", outcome="failed", reason="auth"),
            series(POLLS, "0+10x60", instance="n1:9464", source="discovery", outcome="ok"),
            series(
                POLLS, "0+1x60", instance="n1:9464", source="discovery", outcome="failed", reason="timeout"
            ),
        ],
        [
            fires("20m", "DcsNotifierPollsFailing"),
            fires("40m", "DcsNotifierPollsFailing", {**WARNING, "source": "tasks"}),
        ],
    ),
    (
        "polls stop succeeding at 10m",
        [
            series(LAST_POLL, "0+60x10 600x40", instance="n1:9464"),
            series(INSTANCES, "2x50", instance="n1:9464", state="watched"),
        ],
        [
            fires("19m", "DcsNotifierNoRecentPoll"),
            fires("30m", "DcsNotifierNoRecentPoll", CRITICAL),
            fires("30m", "DcsNotifierNeverPolled"),
        ],
    ),
    (
        "one replica polls, the other owns nothing and never polled lately",
        [
            series(LAST_POLL, "0+60x40", instance="n1:9464"),
            series(LAST_POLL, "0x40", instance="n2:9464"),
        ],
        [fires("30m", "DcsNotifierNoRecentPoll")],
    ),
    (
        "instances watched, no poll ever succeeded",
        [series(INSTANCES, "3x30", instance="n1:9464", state="watched")],
        [
            fires("10m", "DcsNotifierNeverPolled"),
            fires("20m", "DcsNotifierNeverPolled", CRITICAL),
            fires("20m", "DcsNotifierNoRecentPoll"),
        ],
    ),
    (
        "scaling: two replicas, no lease held",
        [
            *both(INSTANCES, "5x30", state="watched"),
            *both(INSTANCES, "0x30", state="owned"),
            *both("dcs_notifier_leases_held", "0x30"),
        ],
        [
            fires("3m", "DcsNotifierNoShardsOwned"),
            fires("6m", "DcsNotifierNoShardsOwned", CRITICAL),
            fires("16m", "DcsNotifierInstancesUnowned", WARNING),
        ],
    ),
    (
        "no scaling: no lease, every instance owned",
        [
            series(INSTANCES, "5x30", instance="n1:9464", state="watched"),
            series(INSTANCES, "5x30", instance="n1:9464", state="owned"),
            series("dcs_notifier_leases_held", "0x30", instance="n1:9464"),
        ],
        [fires("20m", "DcsNotifierNoShardsOwned"), fires("20m", "DcsNotifierInstancesUnowned")],
    ),
    (
        "scaling: one of five instances owned by no replica",
        [
            *both(INSTANCES, "5x30", state="watched"),
            *both(INSTANCES, "2x30", state="owned"),
            *both("dcs_notifier_leases_held", "128x30"),
        ],
        [
            fires("10m", "DcsNotifierInstancesUnowned"),
            fires("20m", "DcsNotifierInstancesUnowned", WARNING),
            fires("20m", "DcsNotifierNoShardsOwned"),
        ],
    ),
    (
        "scaling: every instance owned by one replica or the other",
        [
            series(INSTANCES, "5x30", instance="n1:9464", state="watched"),
            series(INSTANCES, "5x30", instance="n2:9464", state="watched"),
            series(INSTANCES, "3x30", instance="n1:9464", state="owned"),
            series(INSTANCES, "2x30", instance="n2:9464", state="owned"),
        ],
        [fires("20m", "DcsNotifierInstancesUnowned")],
    ),
    (
        "oncall's outbox grows and its oldest entry ages; audit's is large but steady",
        [
            *both("dcs_notifier_outbox_oldest_age_seconds", "0+60x40", channel="oncall"),
            *both("dcs_notifier_outbox_oldest_age_seconds", "30x40", channel="audit"),
            *both("dcs_notifier_outbox_pending", "50+10x60", channel="oncall"),
            *both("dcs_notifier_outbox_pending", "500x60", channel="audit"),
        ],
        [
            fires("15m", "DcsNotifierOutboxStuck"),
            fires("25m", "DcsNotifierOutboxStuck", {**WARNING, "channel": "oncall"}),
            fires("15m", "DcsNotifierOutboxGrowing"),
            fires("25m", "DcsNotifierOutboxGrowing", {**WARNING, "channel": "oncall"}),
        ],
    ),
    (
        "two dead letters in oncall from 6m, told by both replicas",
        [
            *both("dcs_notifier_dead_letters", "0x5 2x10", channel="oncall"),
            *both("dcs_notifier_dead_letters", "0x15", channel="audit"),
        ],
        [
            fires("6m", "DcsNotifierDeadLetters"),
            fires("8m", "DcsNotifierDeadLetters", {**WARNING, "channel": "oncall"}),
        ],
    ),
    (
        "one replica's Redis operations fail from 6m",
        [
            series("dcs_notifier_redis_errors_total", "0x5 1+1x30", instance="n1:9464", op="xadd"),
            series("dcs_notifier_redis_errors_total", "0x35", instance="n2:9464", op="xadd"),
        ],
        [
            fires("10m", "DcsNotifierRedisErrors"),
            fires("20m", "DcsNotifierRedisErrors", {**WARNING, "instance": "n1:9464"}),
        ],
    ),
]


def test_every_alert_is_shown_firing_by_a_scenario() -> None:
    shown = {e["alertname"] for _, _, expected in SCENARIOS for e in expected if e["exp_alerts"]}
    assert shown == set(ALERT_IDS)


def run_scenarios(tmp_path: Path, scenarios: list[Scenario]) -> str:
    """promtool test rules on a copy of the alerts without their annotations (only labels are compared):
    its output, or an AssertionError with it."""
    doc = yaml.safe_load(ALERTS.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            rule.pop("annotations", None)
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(doc))
    tests = [
        {"name": what, "interval": "1m", "input_series": inputs, "alert_rule_test": expected}
        for what, inputs, expected in scenarios
    ]
    spec = {"rule_files": ["alerts.yml"], "evaluation_interval": "1m", "tests": tests}
    (tmp_path / "alerts_test.yml").write_text(yaml.safe_dump(spec, sort_keys=False))
    result = promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@NEEDS_PROMTOOL
def test_the_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    assert "SUCCESS" in run_scenarios(tmp_path, SCENARIOS)


@NEEDS_PROMTOOL
def test_a_wrong_expectation_fails_the_scenarios(tmp_path: Path) -> None:
    # The scenarios can fail: dead letters present, expected silent.
    what, inputs, _ = SCENARIOS[-2]
    with pytest.raises(AssertionError, match="DcsNotifierDeadLetters"):
        run_scenarios(tmp_path, [(what, inputs, [fires("8m", "DcsNotifierDeadLetters")])])


# -- compose ----------------------------------------------------------------------------------------------


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def env_example() -> dict[str, str]:
    lines = (ROOT / ".env.example").read_text().splitlines()
    pairs = [line.split("=", 1) for line in lines if line and not line.startswith("#")]
    return {k: v for k, v in pairs}


def test_compose_publishes_the_listener_on_loopback_only_and_checks_health_through_it() -> None:
    notifier = compose()["services"]["notifier"]
    env = {**env_example(), **notifier["environment"]}
    # The config of `cp config.example.yaml config.yaml`, read inside the container.
    config = load_config(ROOT / "config.example.yaml", env)
    assert config.http.address is not None
    host, port = config.http.address
    assert host == "0.0.0.0"  # noqa: S104 - inside the container; published on the host's loopback below
    (published,) = notifier["ports"]
    bind, host_port, container_port = published.split(":")
    assert bind == "127.0.0.1"
    assert host_port == "${DCS_NOTIFIER_METRICS_PORT-9464}"
    assert int(container_port) == port
    assert notifier["healthcheck"]["test"] == ["CMD", "dcs-notifier", "health"]
    # Outside compose the example opens no listener.
    outside = load_config(ROOT / "config.example.yaml", env_example())
    assert outside.http.address is None
    # Every port compose publishes is on the loopback.
    for name, service in compose()["services"].items():
        for mapping in service.get("ports", []):
            assert mapping.startswith("127.0.0.1:"), (name, mapping)


def test_compose_prometheus_scrapes_the_listener_with_the_alerts_job() -> None:
    doc = yaml.safe_load(PROMETHEUS.read_text())
    (job,) = doc["scrape_configs"]
    assert job["job_name"] == JOB
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["notifier"]
    listen = compose()["services"]["notifier"]["environment"]["DCS_NOTIFIER_LISTEN"]
    assert sd["port"] == int(listen.rsplit(":", 1)[1])
    assert doc["rule_files"] == ["alerts.yml"]
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert "./deploy/prometheus/alerts.yml:/etc/prometheus/alerts.yml:ro" in mounts
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


def test_the_compose_demo_config_polls_the_simulator_of_the_demo_profile() -> None:
    services = compose()["services"]
    env = {**env_example(), **services["notifier"]["environment"]}
    config = load_config(DEMO_CONFIG, env)
    command = services["simulator"]["command"]
    port = command[command.index("--port") + 1]
    project = command[command.index("--project-id") + 1]
    assert [spec.endpoint for spec in config.projects()] == [f"http://simulator:{port}"]
    assert [spec.project_id for spec in config.projects()] == [project]
    scenario = {(i.instance_id, i.name) for i in default_demo_scenario().instances}
    assert {(i.id, i.name) for i in config.instances} == scenario
    assert config.http.address == ("0.0.0.0", 9464)  # noqa: S104 - inside the container
    assert config.redis.url.get_secret_value() == "redis://redis:6379/0"


# -- a running daemon ---------------------------------------------------------------------------------------

DAEMON_CONFIG = f"""
cloud: {{endpoint: "${{SIM_URL}}", project_id: "{PROJECT_ID}", ak: {AK}, sk: {SK}}}
instances:
  - {{id: "{ORDERS}", name: orders-cache}}
  - {{id: "{SESSIONS}", name: sessions-cache}}
poll: {{interval: 0.3, baseline_grace: 900}}
redis: {{url: "${{REDIS_URL}}", key_prefix: deploy}}
http: {{listen: "127.0.0.1:0"}}
channels:
  audit: {{type: webhook, url: "${{AUDIT_URL}}", secret: "{WEBHOOK_SECRET}"}}
delivery: {{backoff_initial: 0.05, backoff_max: 0.2}}
"""


async def scrape(port: int) -> dict[str, float]:
    """Sample name → the sum of its values, from the daemon's /metrics."""
    async with aiohttp.ClientSession() as s, s.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[sample.name] = out.get(sample.name, 0.0) + sample.value
    return out


async def test_a_running_daemon_serves_the_names_derived_from_its_registry(
    sim: Simulator, redis_url: str, audit: WebhookReceiver
) -> None:
    env = {"SIM_URL": str(sim.base_url), "REDIS_URL": redis_url, "AUDIT_URL": audit.url}
    config = parse_config(DAEMON_CONFIG, "deploy.yaml", env)
    service = Service(config, lambda: config)
    async with serving(service) as port:
        sim.start_task(ORDERS, "masterStandbySwapJob")
        await audit.wait_for(1, timeout=10)

        async def everything_counted() -> bool:
            names = await scrape(port)
            return names.get("dcs_notifier_delivery_latency_seconds_count", 0) > 0 and bool(
                names.get("dcs_notifier_last_successful_poll_timestamp_seconds")
            )

        await until_async(everything_counted, 10, "a delivery and a successful poll in the metrics")
        served = set(await scrape(port))
    daemon_names = {name for name in served if name.startswith("dcs_notifier_")}
    assert daemon_names <= EXPORTED, daemon_names - EXPORTED
    # Everything but the Redis errors (none happened) was served: the derivation is not too wide.
    # (Counters with labels have no series before their first increment: Redis errors, throttling.)
    assert EXPORTED - daemon_names == {"dcs_notifier_redis_errors_total", "dcs_notifier_api_throttled_total"}
