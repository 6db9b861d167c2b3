"""Application builder: ``import_path: raypipe.serve.app:build_app`` in serve_config.yaml.

``serve run serve_config.yaml`` / ``serve deploy serve_config.yaml`` call
:func:`build_app` with the YAML's ``args`` (validated as :class:`ServeSettings`). The
face pipeline is built from the crop settings stored with the served model
(:func:`raypipe.serve.settings.with_model_face`), so serving cuts the crops the model was trained on.
"""

from __future__ import annotations

from typing import Any

from ray.serve import Application

from raypipe.serve.deployments import CLASSIFIER, DETECTOR, INGRESS, Classifier, FaceDetector, Ingress
from raypipe.serve.settings import ServeSettings, with_model_face


def classifier_user_config(settings: ServeSettings) -> dict[str, Any]:
    """The Classifier's ``user_config``: changing it in the YAML is a lightweight update
    (``reconfigure`` on the running replicas, no restart, no dropped request)."""
    return {"model_uri": settings.resolved_model_uri(), "max_batch_size": settings.max_batch_size,
            "batch_wait_timeout_s": settings.batch_wait_timeout_s}


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The app for serve_config.yaml (deployment options come from the YAML)."""
    return compose(ServeSettings.model_validate(args or {}))


def compose(settings: ServeSettings, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """Ingress -> FaceDetector -> Classifier, composed through deployment handles.

    ``options`` maps a deployment name to ``Deployment.options(...)`` overrides (tests and
    benchmarks use it for short downscale delays). The FaceDetector is always part of the
    graph; with ``detector: ingress`` it simply stays at zero replicas.
    """
    options = options or {}
    settings = with_model_face(settings)
    face_config = settings.face_config()
    classifier = Classifier.options(user_config=classifier_user_config(settings), **options.get(CLASSIFIER, {}))
    detector = FaceDetector.options(**options.get(DETECTOR, {}))
    ingress = Ingress.options(**options.get(INGRESS, {}))
    return ingress.bind(settings.model_dump(), detector.bind(face_config),
                        classifier.bind(settings.resolved_tracking_uri(), face_config.version()))
