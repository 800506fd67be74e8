"""The Prometheus alert rules (docs/monitoring) load, pass their promtool unit tests, and every alert is
tested, labelled with a severity and linked to its runbook in docs/operations.md.

PyYAML is not one of the project's packages, so the rule and test files are read line by line here; promtool
parses them properly, and the line patterns fail loudly (not silently) when the files are written another way.
"""

from __future__ import annotations

import os
import re
import subprocess

from twisted.trial.unittest import TestCase

DOCS = os.path.join(os.path.dirname(__file__), "..", "docs")
RULES = os.path.join(DOCS, "monitoring", "alerts.yml")
RULE_TESTS = os.path.join(DOCS, "monitoring", "alerts_test.yml")
OPERATIONS = os.path.join(DOCS, "operations.md")
SEVERITIES = {"page", "ticket", "info"}


def promtool(*args: str) -> tuple[int, str]:
    done = subprocess.run(["promtool", *args], capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


def read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def blocks(text: str, start: str) -> list[str]:
    """The text cut before each line that starts a list item `- <start>`, first piece (the header) dropped."""
    return re.split(rf"^(?=\s*- {start})", text, flags=re.M)[1:]


def alert_rules() -> dict[str, str]:
    """Each alert's name and the text of its rule."""
    rules = {}
    for block in blocks(read(RULES), "(?:alert|record):"):
        match = re.match(r"\s*- alert: (\w+)\n", block)
        if match:
            rules[match.group(1)] = block
    return rules


def alert_cases() -> list[tuple[str, bool]]:
    """Each alert_rule_test case as (alertname, whether it expects the alert to fire)."""
    cases = []
    for block in blocks(read(RULE_TESTS), "eval_time:"):
        name = re.search(r"^\s*alertname: (\w+)$", block, flags=re.M)
        assert name, block
        cases.append((name.group(1), "exp_labels:" in block))
    return cases


def anchors(markdown: str) -> set[str]:
    """The anchors GitHub gives the headings: lower case, punctuation dropped, spaces as hyphens."""
    found = set()
    fenced = False
    for line in markdown.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and (heading := re.match(r"#{1,6} (.+)", line)):
            found.add(re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-"))
    return found


class Promtool(TestCase):
    def test_rules_load(self) -> None:
        status, out = promtool("check", "rules", RULES)
        self.assertEqual(status, 0, out)
        self.assertIn("SUCCESS", out)

    def test_rule_unit_tests(self) -> None:
        status, out = promtool("test", "rules", RULE_TESTS)
        self.assertEqual(status, 0, out)
        self.assertIn("SUCCESS", out)


class Coverage(TestCase):
    def test_files_read_as_expected(self) -> None:
        """Every `alert:` and `alertname:` line was seen by the patterns above, so none escapes the checks."""
        rules = alert_rules()
        self.assertEqual(len(rules), len(re.findall(r"\balert:", read(RULES))))
        self.assertGreaterEqual(len(rules), 9)
        self.assertEqual(len(alert_cases()), len(re.findall(r"\balertname:", read(RULE_TESTS))))

    def test_every_alert_fires_and_stays_quiet_in_a_test(self) -> None:
        cases = alert_cases()
        for name in alert_rules():
            self.assertIn((name, True), cases, f"{name}: no test where it fires")
            self.assertIn((name, False), cases, f"{name}: no test where it does not fire")

    def test_tests_name_real_alerts(self) -> None:
        """promtool accepts a test of a misspelled alert (it never fires); here it is an error."""
        rules = alert_rules()
        for name, _ in alert_cases():
            self.assertIn(name, rules)

    def test_severity_summary_runbook(self) -> None:
        known = anchors(read(OPERATIONS))
        for name, rule in alert_rules().items():
            severity = re.search(r"^\s+severity: (\w+)$", rule, flags=re.M)
            self.assertIn(severity and severity.group(1), SEVERITIES, name)
            self.assertRegex(rule, r"(?m)^\s+summary: \S", name)
            runbook = re.search(r"^\s+runbook: docs/operations\.md#(\S+)$", rule, flags=re.M)
            assert runbook, f"{name}: no runbook annotation"
            self.assertEqual(runbook.group(1), name.lower(), name)
            self.assertIn(runbook.group(1), known, f"{name}: no heading for #{runbook.group(1)} in operations.md")

    def test_anchors(self) -> None:
        self.assertEqual(
            anchors("# Alerts\n```\n# not a heading\n```\n### PrivllmDown\n## Reading the metrics (PromQL)\n"),
            {"alerts", "privllmdown", "reading-the-metrics-promql"},
        )
