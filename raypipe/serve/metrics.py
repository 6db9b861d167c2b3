"""Service metrics through ``ray.serve.metrics`` (exported by Ray's metrics agent, so
Prometheus scrapes them with Ray's own); a no-op stand-in outside a Serve replica.

Serve adds the ``deployment``, ``replica``, ``application`` and ``route`` tags itself.
Names and tags are listed in docs/serving.md.
"""

from __future__ import annotations

LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 30, 50, 75, 100, 200, 500, 1000, 2000, 5000]
BATCH_BOUNDARIES = [1, 2, 4, 8, 16, 32]


class _Null:
    def inc(self, value: float = 1.0, tags: dict[str, str] | None = None) -> None:
        pass

    def observe(self, value: float, tags: dict[str, str] | None = None) -> None:
        pass


class IngressMetrics:
    """Requests, verdicts, errors by code and stage latencies, seen from the ingress."""

    def __init__(self, enabled: bool = True) -> None:
        if not enabled:
            null = _Null()
            self.requests = self.verdicts = self.errors = null
            self.request_ms = self.detector_ms = self.classifier_ms = null
            return
        from ray.serve.metrics import Counter, Histogram

        self.requests = Counter("raypipe_requests", "HTTP requests by endpoint and status code.",
                                tag_keys=("endpoint", "status"))
        self.verdicts = Counter("raypipe_verdicts", "Faces answered, by verdict.", tag_keys=("label",))
        self.errors = Counter("raypipe_errors", "Error answers by error code.", tag_keys=("code",))
        self.request_ms = Histogram("raypipe_request_latency_ms", "Whole request in the ingress (ms).",
                                    boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("endpoint",))
        self.detector_ms = Histogram("raypipe_detector_latency_ms",
                                     "Decode + detect + crop as seen by the ingress, hop included (ms).",
                                     boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("where",))
        self.classifier_ms = Histogram("raypipe_classifier_latency_ms",
                                       "Classifier call as seen by the ingress, hop and batching wait included (ms).",
                                       boundaries=LATENCY_BOUNDARIES_MS)


class ClassifierMetrics:
    """Batch sizes and pure inference time inside the classifier replicas."""

    def __init__(self, enabled: bool = True) -> None:
        if not enabled:
            self.batch_size = self.inference_ms = _Null()
            return
        from ray.serve.metrics import Histogram

        self.batch_size = Histogram("raypipe_classifier_batch_size", "Crops per model call.",
                                    boundaries=BATCH_BOUNDARIES)
        self.inference_ms = Histogram("raypipe_classifier_inference_ms", "Transform + forward per batch (ms).",
                                      boundaries=LATENCY_BOUNDARIES_MS)
