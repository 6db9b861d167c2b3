"""Application builder: ``import_path: raypipe.serve.app:build_app`` in serve_config.yaml.

``serve run serve_config.yaml`` / ``serve deploy serve_config.yaml`` call
:func:`build_app` with the YAML's ``args`` (validated as :class:`ServeSettings`). The
face pipeline is built from the crop settings stored with the served model
(:func:`raypipe.serve.settings.with_model_face`), so serving cuts the crops the model was trained on.
"""

from __future__ import annotations

import logging
from typing import Any

from ray.serve import Application

from raypipe.serve.deployments import (
    CLASSIFIER,
    DETECTOR,
    INGRESS,
    RESOLVER,
    Classifier,
    FaceDetector,
    Ingress,
    ModelResolver,
)
from raypipe.serve.runners import ServedModel, resolve_served_model
from raypipe.serve.settings import ServeSettings, with_model_face

log = logging.getLogger(__name__)


def classifier_user_config(settings: ServeSettings, served: ServedModel | None = None) -> dict[str, Any]:
    """The Classifier's ``user_config``: changing it in the YAML is a lightweight update
    (``reconfigure`` on the running replicas, no restart, no dropped request). ``served``:
    the model reference resolved here, so replicas need no registry look-up to start."""
    return {"model_uri": settings.resolved_model_uri(), "model": served.to_dict() if served else None,
            "runtime": settings.runtime, "precision": settings.precision, "model_refresh_s": settings.model_refresh_s,
            "max_batch_size": settings.max_batch_size, "batch_wait_timeout_s": settings.batch_wait_timeout_s}


def _as_dict(config: Any) -> dict[str, Any]:
    return config if isinstance(config, dict) else config.model_dump(exclude_unset=True)


def resolve_quietly(settings: ServeSettings) -> ServedModel | None:
    """The served model as the registry names it now; None when it cannot say yet (not
    registered, registry down): the Classifier then asks the ModelResolver when it starts."""
    try:
        return resolve_served_model(settings.resolved_model_uri(), settings.resolved_tracking_uri())
    except Exception as exc:  # noqa: BLE001 - MlflowException, connection errors: decided at load time
        log.warning("could not resolve %s now (%s: %s); the Classifier will ask when it starts",
                    settings.resolved_model_uri(), type(exc).__name__, exc)
        return None


def build_app(args: dict[str, Any] | None = None) -> Application:
    """The app for serve_config.yaml (deployment options come from the YAML)."""
    return compose(ServeSettings.model_validate(args or {}))


def compose(settings: ServeSettings, options: dict[str, dict[str, Any]] | None = None) -> Application:
    """Ingress -> FaceDetector -> Classifier (<- ModelResolver), composed through deployment handles.

    ``options`` maps a deployment name to ``Deployment.options(...)`` overrides (tests and
    benchmarks use it for short downscale delays). The FaceDetector is always part of the
    graph; with ``detector: ingress`` it simply stays at zero replicas.
    """
    options = options or {}
    settings = with_model_face(settings)
    face_config = settings.face_config()
    served = resolve_quietly(settings)
    classifier_options = dict(options.get(CLASSIFIER, {}))
    if settings.classifier == "ingress":  # stays in the graph, idle at zero (like an unused FaceDetector)
        scaling = classifier_options.get("autoscaling_config") or Classifier._deployment_config.autoscaling_config
        classifier_options["autoscaling_config"] = {**_as_dict(scaling), "initial_replicas": 0}
    classifier = Classifier.options(user_config=classifier_user_config(settings, served), **classifier_options)
    detector = FaceDetector.options(**options.get(DETECTOR, {}))
    resolver = ModelResolver.options(**options.get(RESOLVER, {}))
    ingress = Ingress.options(**options.get(INGRESS, {}))
    tracking_uri = settings.resolved_tracking_uri()
    resolver = resolver.bind(tracking_uri)
    in_ingress = None
    if settings.classifier == "ingress":  # the ingress replica runs the model itself
        in_ingress = {"user_config": classifier_user_config(settings, served), "tracking_uri": tracking_uri,
                      "pipeline_version": face_config.version(), "resolver": resolver}
    return ingress.bind(settings.model_dump(), detector.bind(face_config),
                        classifier.bind(tracking_uri, face_config.version(), resolver), in_ingress)
