"""Prometheus metrics of one daemon (served as text on the HTTP endpoint's ``/metrics``).

Each daemon owns its own :class:`prometheus_client.CollectorRegistry`, so several servers in
one process (tests) do not share counters.
"""

from __future__ import annotations

import json

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.exports = Counter(
            "nydus_exporter_exports", "Exports finished, by outcome", ["outcome"], registry=r
        )
        self.exports_failed = Counter(
            "nydus_exporter_exports_failed", "Exports that failed, by gRPC status code", ["code"], registry=r
        )
        self.in_flight = Gauge("nydus_exporter_exports_in_flight", "Export streams being served", registry=r)
        self.waiting = Gauge("nydus_exporter_exports_waiting", "Jobs waiting for a build slot", registry=r)
        self.bytes_in = Counter("nydus_exporter_bytes_in", "Layer bytes received from clients", registry=r)
        self.bytes_out = Counter("nydus_exporter_bytes_out", "Nydus blob bytes written", registry=r)
        self.cache_hits = Counter("nydus_exporter_layer_cache_hits", "Layers found converted", registry=r)
        self.cache_misses = Counter("nydus_exporter_layer_cache_misses", "Layers to convert", registry=r)
        self.chunks = Counter(
            "nydus_exporter_chunks",
            "Chunk references converted, by where their bytes are: stored, in_layer, "
            "from_lower_layers, from_chunk_dict (the nydus.dedup response key)",
            ["kind"],
            registry=r,
        )
        self.bytes_not_stored = Counter(
            "nydus_exporter_dedup_bytes_not_stored",
            "Compressed bytes deduplicated chunks did not store",
            registry=r,
        )
        self.duration = Histogram(
            "nydus_exporter_export_duration_seconds",
            "Export duration from header to result",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


DEDUP_KINDS = ("stored", "in_layer", "from_lower_layers", "from_chunk_dict")


def count_dedup(metrics: Metrics, dedup_json: str | None) -> None:
    """Add an export's ``nydus.dedup`` statistics (platform -> counts) to the counters."""
    if not dedup_json:
        return
    try:
        per_platform = json.loads(dedup_json)
        for stats in per_platform.values():
            for kind in DEDUP_KINDS:
                metrics.chunks.labels(kind).inc(int(stats.get(kind, 0)))
            metrics.bytes_not_stored.inc(int(stats.get("bytes_not_stored", 0)))
    except (ValueError, TypeError, AttributeError):
        return  # statistics are best effort; a malformed key never fails an export
