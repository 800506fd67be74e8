"""
docs/monitoring: the Grafana dashboard's expressions are PromQL that Prometheus's own promtool
accepts, and every series it (and any rule file next to it) names is one a real router exports.
"""

from __future__ import annotations

import glob
import json
import os
import re
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.trial.unittest import TestCase

from privllm.protocol import errors
from privllm.protocol.life import ERROR_CODES
from privllm.test.stack import shared
from privllm.web.metrics import BREAKER_STATES

from .docclient import DocClient
from .prometheus import check_rules, sample
from .test_e2e import ROUTER, user

MONITORING = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "monitoring")
DASHBOARD = os.path.join(MONITORING, "dashboard.json")
ALERTS = os.path.join(MONITORING, "alerts.yml")
# What Grafana puts in place of its variables, so promtool sees plain PromQL.
GRAFANA_VARIABLES = {
    "${node}": ".*",
    "$node": ".*",
    "$__rate_interval": "1m",
    "$__range": "1h",
}
# The values the router can give each label an expression may match on.
EMITTED = {
    "outcome": {r.code for r in vars(errors).values() if isinstance(r, errors.Rejection)}
    | ERROR_CODES
    | {"ok", "client_gone"},
    "reason": set(errors.REFUSAL_REASONS),
    "state": set(BREAKER_STATES),
    "kind": {"prompt", "completion"},
}
# A matcher on one of those labels: `label="v"`, `label!="v"`, `label=~"a|b"`, `label!~"a|b"`.
MATCHER = re.compile(r'\b(outcome|reason|state|kind)\s*(=~|!~|!=|=)\s*"([^"]*)"')
# A privllm series name, not part of a recording rule's name (those have colons).
SERIES = re.compile(r"(?<![\w:])privllm_\w+(?![\w:])")
RECORDED = re.compile(r"^\s*-?\s*record:\s*['\"]?([\w:]+)", re.M)
# Every family of docs/metrics-spec the on-call panels need, as Prometheus names its series.
REQUIRED = {
    "privllm_chat_requests_total",
    "privllm_refusals_total",
    "privllm_tokens_total",
    "privllm_time_to_first_token_seconds_bucket",
    "privllm_answer_seconds_bucket",
    "privllm_upstream_first_byte_seconds_bucket",
    "privllm_inter_chunk_seconds_bucket",
    "privllm_tokens_per_second_bucket",
    "privllm_active_streams",
    "privllm_queued_streams",
    "privllm_node_healthy",
    "privllm_breaker_state",
    "privllm_pow_difficulty",
    "privllm_replay_entries",
    "privllm_replay_capacity",
    "privllm_key_age_seconds",
    "privllm_key_rotation_due_seconds",
}


def dashboard() -> dict[str, Any]:
    with open(DASHBOARD) as f:
        return dict(json.load(f))


def panels(board: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, rows and the panels inside collapsed rows too."""
    found = []
    for panel in board["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def rule_files() -> list[str]:
    """The alert rules, their tests, and whatever other rule file sits next to the dashboard."""
    return sorted(glob.glob(os.path.join(MONITORING, "*.yml")) + glob.glob(os.path.join(MONITORING, "*.yaml")))


def targets(board: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    return [(panel, target) for panel in panels(board) for target in panel.get("targets", [])]


def concrete(expr: str) -> str:
    for variable, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(variable, value)
    return expr


def faults(text: str) -> set[str]:
    """The outcomes of the first `outcome=~"a|b"` matcher in `text`."""
    match = re.search(r'outcome=~"([\w|]+)"', text)
    assert match, text[:200]
    return set(match.group(1).split("|"))


def unknown_label_values(text: str) -> list[str]:
    """Each matcher in `text` on an EMITTED label whose value the router never gives that label; a
    regular expression must be a plain `a|b` list, anything else is reported too."""
    unknown = []
    for label, op, value in MATCHER.findall(text):
        values = value.split("|") if "~" in op else [value]
        if not all(re.fullmatch(r"\w+", v) and v in EMITTED[label] for v in values):
            unknown.append(f'{label}{op}"{value}"')
    return unknown


def series_names(text: str) -> set[str]:
    return set(SERIES.findall(text)) - set(RECORDED.findall(text))


def exported(metrics_text: str) -> set[str]:
    """The series names a scrape yields, by family type: a family is listed (HELP and TYPE) even
    while a labelled one has no sample yet, so this does not depend on what traffic happened."""
    names = set()
    for family in text_string_to_metric_families(metrics_text):
        if family.type == "counter":
            names.add(family.name + "_total")
        elif family.type == "histogram":
            names.update(family.name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(family.name)
    return names


class Expressions(TestCase):
    def test_promtool_names_the_bad_expression(self) -> None:
        """The check itself can fail, and says which expression is wrong."""
        bad = check_rules({"dashboard:good": "sum(up)", "dashboard:bad": "sum(rate(up[1m])"})
        self.assertEqual(set(bad), {"dashboard:bad"})
        self.assertIn("sum(rate(up[1m])", bad["dashboard:bad"])

    def test_names_a_leftover_variable(self) -> None:
        self.assertEqual(concrete('rate(x{node=~"$node"}[$__rate_interval])'), 'rate(x{node=~".*"}[1m])')
        self.assertIn("$", concrete("rate(x[$__interval])"))  # not one the dashboard may use

    def test_every_expression_is_promql(self) -> None:
        exprs = {}
        for panel, target in targets(dashboard()):
            expr = concrete(target["expr"])
            self.assertNotIn("$", expr, f"panel {panel['title']!r}: a Grafana variable this test does not know")
            exprs[f"dashboard:panel{panel['id']}_{target['refId']}"] = expr
        self.assertGreater(len(exprs), 15)
        bad = check_rules(exprs)
        self.assertEqual(bad, {}, "promtool check rules refused:\n" + "\n".join(f"{k}: {v}" for k, v in bad.items()))

    def test_covers_what_on_call_needs(self) -> None:
        used = series_names(json.dumps(dashboard()))
        self.assertEqual(REQUIRED - used, set())
        self.assertTrue(any('up{job="privllm"}' in t["expr"] for _, t in targets(dashboard())))

    def test_server_faults_as_the_alerts_count_them(self) -> None:
        """The error ratio panel and the SLO's alert count the same outcomes as faults."""
        with open(ALERTS) as f:
            alerts = f.read()
        panel = [t["expr"] for p, t in targets(dashboard()) if p["title"] == "Server-fault error ratio"]
        self.assertEqual(len(panel), 1)
        self.assertEqual(faults(panel[0]), faults(alerts.split("record: privllm:chat_server_faults:rate5m")[1]))
        self.assertIn("upstream_failed", faults(panel[0]))

    def test_label_values_the_router_emits(self) -> None:
        """Every outcome, reason, breaker state and token kind an expression matches on is one the
        router can emit: a misspelt value matches nothing, and the panel or alert says nothing."""
        texts = {f"dashboard.json {p['title']} {t['refId']}": t["expr"] for p, t in targets(dashboard())}
        for path in rule_files():
            with open(path) as f:
                texts[os.path.basename(path)] = f.read()
        seen = {label for text in texts.values() for label, _, _ in MATCHER.findall(text)}
        self.assertEqual(seen, set(EMITTED), "every label checked is used, so the pattern reads these files")
        bad = {name: unknown for name, text in texts.items() if (unknown := unknown_label_values(text))}
        self.assertFalse(bad, f"values the router never emits: {bad}")

    def test_label_values_checked(self) -> None:
        """The check fails on a value the router never emits, in any matcher form."""
        self.assertEqual(unknown_label_values('x{outcome="ok", state="open", kind="prompt"}'), [])
        self.assertEqual(unknown_label_values('x{outcome="done"}'), ['outcome="done"'])
        self.assertEqual(unknown_label_values('x{outcome=~"ok|done"}'), ['outcome=~"ok|done"'])
        self.assertEqual(unknown_label_values('x{reason!="stream_caps"}'), ['reason!="stream_caps"'])
        self.assertEqual(unknown_label_values('x{state!~"open|.*"}'), ['state!~"open|.*"'])
        self.assertEqual(unknown_label_values('x{kind = "tokens"}'), ['kind="tokens"'])
        self.assertIn("overloaded", EMITTED["outcome"])
        self.assertIn("unsupported_media_type", EMITTED["outcome"])

    def test_series_names_ignore_recorded_rules(self) -> None:
        text = "groups:\n- rules:\n  - record: privllm_slo_errors\n    expr: sum(privllm_x_total) / privllm:y\n"
        self.assertEqual(series_names(text), {"privllm_x_total"})


class Names(TestCase):
    def test_exported_names_are_what_prometheus_stores(self) -> None:
        """A labelled family with no sample yet still counts; a counter without _total does not."""
        registry = CollectorRegistry()
        Counter("privllm_a", "", ["reason"], registry=registry)
        Histogram("privllm_b_seconds", "", ["node"], registry=registry)
        Gauge("privllm_c", "", registry=registry)
        names = exported(generate_latest(registry).decode())
        self.assertLessEqual({"privllm_a_total", "privllm_b_seconds_bucket", "privllm_b_seconds_count"}, names)
        self.assertIn("privllm_c", names)
        self.assertNotIn("privllm_a", names)
        self.assertNotIn("privllm_b_seconds", names)


class Panels(TestCase):
    def test_unique_ids_and_titles(self) -> None:
        all_panels = panels(dashboard())
        ids = [p["id"] for p in all_panels]
        titles = [p["title"] for p in all_panels]
        self.assertEqual(len(ids), len(set(ids)), ids)
        self.assertEqual(len(titles), len(set(titles)), titles)
        self.assertTrue(all(title.strip() for title in titles))

    def test_datasource_variable(self) -> None:
        board = dashboard()
        variables = {v["name"]: v for v in board["templating"]["list"]}
        self.assertEqual(
            (variables["datasource"]["type"], variables["datasource"]["query"]), ("datasource", "prometheus")
        )
        self.assertEqual(variables["node"]["query"]["query"], "label_values(privllm_node_healthy, node)")
        self.assertEqual(variables["node"]["datasource"]["uid"], "${datasource}")
        self.assertGreaterEqual(board["schemaVersion"], 39)
        for panel, target in targets(board):
            self.assertEqual(panel["datasource"], {"type": "prometheus", "uid": "${datasource}"}, panel["title"])
            self.assertEqual(target["datasource"], panel["datasource"], panel["title"])

    def test_panels_inside_the_grid(self) -> None:
        for panel in panels(dashboard()):
            pos = panel["gridPos"]
            self.assertLessEqual(pos["x"] + pos["w"], 24, panel["title"])


class ExportedByARealRouter(TestCase):
    """The names must be the router's own: scraped from a real one after a real chat."""

    timeout = 300

    def test_every_name_used_is_exported(self) -> None:
        daemon = shared(*ROUTER)
        chunks = DocClient(daemon.port, daemon.ssl_context(), daemon.pin()).chat(user("hi"))
        self.assertEqual(chunks[-1]["type"], "done")
        status, _, body = daemon.get("/metrics", tls=False)
        self.assertEqual(status, 200)
        text = body.decode()
        names = exported(text)
        self.assertGreaterEqual(sample(text, "privllm_chat_requests_total", {"outcome": "ok"}), 1)
        self.assertGreaterEqual(sample(text, "privllm_time_to_first_token_seconds_count"), 1)
        # The dashboard, and whatever rule files sit next to it (the alert rules, when present).
        missing = {}
        for path in [DASHBOARD, *rule_files()]:
            with open(path) as f:
                unknown = series_names(f.read()) - names
            if unknown:
                missing[os.path.basename(path)] = sorted(unknown)
        self.assertEqual(missing, {}, f"not exported by the router; it exports {sorted(names)}")
