"""The PromQL we ship (`docs/prometheus-rules.yaml`'s alerts, `docs/RUNBOOK.md`'s queries) names
only series and labels a real server's `/metrics` exposes: a renamed metric or label would
leave an alert that never fires, and promtool cannot tell (it does not know our names)."""

from __future__ import annotations

import re

import httpx2
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .fake_gateway import FakeGateway
from .live_server import PROJECT_ROOT, run_server

Exposed = dict[str, set[str]]  # sample name -> its label names
RULES = PROJECT_ROOT / "docs" / "prometheus-rules.yaml"
RUNBOOK = PROJECT_ROOT / "docs" / "RUNBOOK.md"
# What PromQL spells like a metric name but is not one.
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring"}
KEYWORDS |= {"group_left", "group_right", "inf", "nan"}
GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
MATCHERS = re.compile(r"\{([^}]*)\}")
MATCHED_LABEL = re.compile(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)")
IDENTIFIER = re.compile(r"(?<![\w:.])[A-Za-z_:][\w:]*\b(?!\s*\()")  # a function is followed by (


@pytest.fixture(scope="module")
def exposed(gateway: FakeGateway, tmp_path_factory: pytest.TempPathFactory) -> Exposed:
    """What a scrape shows after traffic that makes every series exist: answers (a stream
    among them), a failure, a retry and a fallback, a refusal."""
    env = {"ALLTKN_MAX_RETRIES": "1", "ALLTKN_FALLBACK_MODELS": "gpt-4o-mini"}
    with run_server(gateway, tmp_path_factory.mktemp("rules"), **env) as server:
        assert server.post("/v1/chat", {"prompt": "hi"}).status_code == 200
        with server.stream({"prompt": "hi"}) as streamed:
            assert streamed.status_code == 200
            streamed.read()
        # Retried once, then answered by the fallback model.
        for model, status in ("fake-error-500", 200), ("fake-error-401", 502):
            assert server.post("/v1/chat", {"prompt": "hi", "model": model}).status_code == status
        assert server.post("/v1/chat", {"prompt": 5}).status_code == 422
        scrape = httpx2.get(server.url + "/metrics")
    assert scrape.status_code == 200
    found: Exposed = {}
    for family in text_string_to_metric_families(scrape.text):
        for sample in family.samples:
            found.setdefault(sample.name, set()).update(sample.labels)
    return found


def names_used(expression: str) -> tuple[set[str], set[str]]:
    """The metric names and the label names (matchers, `by (...)` and the like) of a PromQL
    expression."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # no string's text read as a name
    labels = {label for found in MATCHERS.findall(text) for label in MATCHED_LABEL.findall(found)}
    for grouped in GROUPING.findall(text):
        labels |= {name.strip() for name in grouped.split(",")}
    text = GROUPING.sub(" ", MATCHERS.sub(" ", re.sub(r"\[[^\]]*\]", " ", text)))
    metrics = {name for name in IDENTIFIER.findall(text) if name.lower() not in KEYWORDS}
    return metrics, {label.strip() for label in labels if label.strip()}


def problems(expression: str, exposed: Exposed) -> list[str]:
    """What `expression` names that the scrape does not have: metrics, then labels (which must
    belong to one of the expression's metrics)."""
    metrics, labels = names_used(expression)
    found = [f"metric {name} is not exposed" for name in sorted(metrics) if name not in exposed]
    known = set().union(*(exposed.get(name, set()) for name in metrics))
    found += [f"label {name} is on none of {sorted(metrics)}" for name in sorted(labels - known)]
    return found


def alert_expressions(text: str) -> dict[str, str]:
    rules = yaml.safe_load(text)
    return {rule["alert"]: rule["expr"] for group in rules["groups"] for rule in group["rules"]}


def runbook_queries() -> list[str]:
    """The queries of the runbook's promql block: each starts after a comment line."""
    block = RUNBOOK.read_text(encoding="utf-8").split("```promql\n", 1)[1].split("```", 1)[0]
    queries = re.split(r"^#.*\n", block, flags=re.MULTILINE)
    return [query.strip() for query in queries if query.strip()]


def test_every_alert_names_series_and_labels_the_service_exposes(exposed: Exposed) -> None:
    alerts = alert_expressions(RULES.read_text(encoding="utf-8"))
    assert set(alerts) == {"GatewayErrorRateHigh", "GatewayFirstTokenSlow"}
    for name, expression in alerts.items():
        assert names_used(expression)[0], f"{name}: no metric found in {expression}"
        assert problems(expression, exposed) == [], name


def test_every_runbook_query_names_series_and_labels_the_service_exposes(
    exposed: Exposed,
) -> None:
    queries = runbook_queries()
    assert len(queries) >= 7
    for query in queries:
        assert names_used(query)[0], query
        assert problems(query, exposed) == [], query


def test_the_check_fails_for_a_wrong_metric_or_label_name(exposed: Exposed) -> None:
    text = RULES.read_text(encoding="utf-8")
    renamed = text.replace("time_to_first_chunk_seconds_bucket", "time_to_first_token_bucket")
    assert problems(alert_expressions(renamed)["GatewayFirstTokenSlow"], exposed) == [
        "metric gen_ai_client_operation_time_to_first_token_bucket is not exposed",
        "label le is on none of ['gen_ai_client_operation_time_to_first_token_bucket']",
    ]
    relabelled = text.replace('error_type!~"|client_disconnect"', 'error!~"|client_disconnect"')
    assert problems(alert_expressions(relabelled)["GatewayErrorRateHigh"], exposed) == [
        "label error is on none of ['gen_ai_client_operation_duration_seconds_count']"
    ]
    by_wrong = "sum by (token_type) (rate(gen_ai_client_token_usage_sum[5m]))"
    assert problems(by_wrong, exposed) == [
        "label token_type is on none of ['gen_ai_client_token_usage_sum']"
    ]
