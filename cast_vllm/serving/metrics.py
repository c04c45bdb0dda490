"""Steering counters on vLLM's ``/metrics`` (Prometheus text format).

Front-end counters (steered / refused requests, requests and distinct vectors in flight) are
read from the ``SteeringService`` directly. Slot waits (engine-core scheduler) and slot loads /
evictions (workers) live in other processes: the server middleware asks the engine core for
them (utility ``cast_steering_stats``) when ``/metrics`` is scraped, just before this collector
runs, so a scrape shows the counts as of that moment.
"""

from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

PREFIX = "cast_steering"


class SteeringCollector(Collector):
    def __init__(self, service):
        self.service = service

    def collect(self):
        s = self.service
        workers = s.worker_totals()
        yield CounterMetricFamily(f"{PREFIX}_requests", "Steered requests admitted.", value=s.steered_requests)
        yield CounterMetricFamily(f"{PREFIX}_rejected_requests",
                                  "Requests refused (HTTP 400) for their steering spec.", value=s.rejected_requests)
        yield GaugeMetricFamily(f"{PREFIX}_requests_in_flight", "Steered requests running or queued.",
                                value=s.in_flight_requests)
        yield GaugeMetricFamily(f"{PREFIX}_vectors_in_flight",
                                "Distinct steering vectors used by requests in flight.",
                                value=len(s.in_flight_vectors))
        yield CounterMetricFamily(f"{PREFIX}_slot_waits",
                                  "Scheduler steps a steered request was held back waiting for a free slot.",
                                  value=int(s.engine_stats.get("waits", 0)))
        yield CounterMetricFamily(f"{PREFIX}_slot_loads", "Steering rows written into a slot.",
                                  value=int(workers.get("loads", 0)))
        yield CounterMetricFamily(f"{PREFIX}_slot_evictions", "Steering rows evicted from a slot to make room.",
                                  value=int(workers.get("evictions", 0)))
        yield CounterMetricFamily(f"{PREFIX}_vectors_shipped", "Steering vectors the engine shipped to a worker "
                                  "in-band (checked by content hash).", value=int(workers.get("vectors_received", 0)))
        yield CounterMetricFamily(f"{PREFIX}_vectors_read_from_paths", "Steering vectors a worker read from the "
                                  "front end's paths instead (0 unless the engine could not ship).",
                                  value=int(workers.get("vectors_from_paths", 0)))
        yield GaugeMetricFamily(f"{PREFIX}_slots", "Steering slots per worker (max_steering_vectors).",
                                value=int(workers.get("slots", s.settings.max_steering_vectors)))
        yield GaugeMetricFamily(f"{PREFIX}_slots_in_use", "Steering slots holding a row.",
                                value=int(workers.get("slots_in_use", 0)))
        yield GaugeMetricFamily(f"{PREFIX}_vectors_available", "Steering vectors the server can resolve by name.",
                                value=len(s.store.names()))
