"""Worker metrics (Prometheus text at /metrics): the exposition, and a real night's chain
filling the stage and end-to-end histograms; the Grafana dashboard queries those metrics."""
from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from agents.metrics import METRICS, Metrics


def samples(text: bytes) -> dict[tuple, float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text.decode()) for s in fam.samples}


def test_exposition():
    m = Metrics()
    m.stage("subtraction", "dip", 8.7)
    m.alert("qip", 28.0)
    m.dead_letter("reduction")
    m.filtered("gw-bright", "qip")
    m.set_lag({"ast3.exposures": 3})
    got = samples(m.text())
    assert got["ast3_stage_seconds_count", (("lane", "dip"), ("stage", "subtraction"))] == 1
    assert got["ast3_stage_seconds_bucket", (("lane", "dip"), ("le", "8.0"), ("stage", "subtraction"))] == 0
    assert got["ast3_stage_seconds_bucket", (("lane", "dip"), ("le", "15.0"), ("stage", "subtraction"))] == 1
    assert got["ast3_alert_latency_seconds_sum", (("lane", "qip"),)] == 28.0
    assert got["ast3_alerts_total", (("lane", "qip"),)] == 1 and got["ast3_dead_letters_total", (("stage", "reduction"),)] == 1
    assert got["ast3_filter_alerts_total", (("filter", "gw-bright"), ("lane", "qip"))] == 1
    assert got["ast3_consumer_lag", (("topic", "ast3.exposures"),)] == 3


def test_a_night_fills_the_stage_and_latency_histograms(small_night_alerts):
    got = samples(METRICS.text())
    runs = {dict(k[1])["stage"]: v for k, v in got.items() if k[0] == "ast3_stage_seconds_count"}
    assert {"reduction", "sources", "astrometry", "photometry", "quality", "subtraction", "detection",
            "crossmatch", "classify", "alert"} <= {s for s, n in runs.items() if n > 0}
    alerts = sum(v for k, v in got.items() if k[0] == "ast3_alerts_total")
    latencies = sum(v for k, v in got.items() if k[0] == "ast3_alert_latency_seconds_count")
    assert alerts == latencies >= len(small_night_alerts) > 0


def test_the_dashboard_plots_our_metrics():
    dash = json.loads((Path(__file__).resolve().parents[1] / "deploy/grafana/ast3stream-dashboard.json").read_text())
    used = {m for p in dash["panels"] for t in p["targets"] for m in re.findall(r"ast3_\w+", t["expr"])}
    exposed = {f.name for f in text_string_to_metric_families(Metrics().text().decode())}
    names = {re.sub(r"_(bucket|count|sum|total)$", "", m) for m in used}
    assert names == exposed
