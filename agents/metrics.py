"""Prometheus metrics of a worker, served as text at ``/metrics`` on the worker's web port
(``kafka.web_port`` / ``--web-port``; e.g. ``curl localhost:6066/metrics``).

=====================================  ===========================================================
``ast3_stage_seconds{stage,lane}``     histogram: wall time of each stage run
``ast3_alert_latency_seconds{lane}``   histogram: raw file closed -> alert published (end to end)
``ast3_alerts_total{lane}``            alerts published
``ast3_dead_letters_total{stage}``     messages sent to the dead-letter topic
``ast3_filter_alerts_total{filter,lane}``  alerts delivered to each filter stream
``ast3_consumer_lag{topic}``           messages not yet consumed by the pipeline (set on each scrape)
``ast3_timer_errors_total{timer}``     errors a periodic task (faust timer) met and survived
=====================================  ===========================================================

One registry per process (the worker); the Grafana dashboard in ``deploy/grafana/`` plots them.
"""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

#: stage runs last from milliseconds (cross-match) to minutes (a full-frame DIP subtraction on a CPU)
STAGE_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 15, 30, 60, 120, 300, 600)
LATENCY_BUCKETS = (1, 2, 5, 10, 15, 20, 30, 45, 60, 90, 120, 180, 300, 600, 1200)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_seconds = Histogram("ast3_stage_seconds", "Wall time of a stage run", ["stage", "lane"],
                                       buckets=STAGE_BUCKETS, registry=r)
        self.alert_latency = Histogram("ast3_alert_latency_seconds", "Raw file closed to alert published",
                                       ["lane"], buckets=LATENCY_BUCKETS, registry=r)
        self.alerts = Counter("ast3_alerts", "Alerts published", ["lane"], registry=r)
        self.dead_letters = Counter("ast3_dead_letters", "Messages sent to the dead-letter topic", ["stage"], registry=r)
        self.filter_alerts = Counter("ast3_filter_alerts", "Alerts delivered to a filter stream", ["filter", "lane"],
                                     registry=r)
        self.timer_errors = Counter("ast3_timer_errors", "Errors a periodic task met and survived", ["timer"],
                                    registry=r)
        self.lag = Gauge("ast3_consumer_lag", "Messages not yet consumed by the pipeline", ["topic"], registry=r)

    def stage(self, stage: str, lane: str, seconds: float) -> None:
        self.stage_seconds.labels(stage, lane).observe(max(0.0, seconds))

    def alert(self, lane: str, latency_s: float) -> None:
        self.alerts.labels(lane).inc()
        self.alert_latency.labels(lane).observe(max(0.0, latency_s))

    def dead_letter(self, stage: str) -> None:
        self.dead_letters.labels(stage).inc()

    def timer_error(self, timer: str) -> None:
        self.timer_errors.labels(timer).inc()

    def filtered(self, name: str, lane: str) -> None:
        self.filter_alerts.labels(name, lane).inc()

    def set_lag(self, lags: dict[str, int]) -> None:
        for name, lag in lags.items():
            self.lag.labels(name).set(lag)

    def text(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


#: the worker process's metrics
METRICS = Metrics()
#: the exposition format's content type, less the charset (aiohttp, under faust's web, sets that itself)
CONTENT_TYPE = CONTENT_TYPE_LATEST.split("; charset")[0]
