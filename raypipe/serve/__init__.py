"""Ray Serve liveness API: Ingress (FastAPI) -> FaceDetector -> Classifier (``@serve.batch``).

- :mod:`raypipe.serve.app` -- ``build_app(args)``, the import path of serve_config.yaml;
- :mod:`raypipe.serve.deployments` -- the three deployments;
- :mod:`raypipe.serve.api` -- the HTTP API over a backend (Serve handles or in-process);
- :mod:`raypipe.serve.core` -- the pipeline as plain functions (the crop contract);
- :mod:`raypipe.serve.standalone` -- the same API and pipeline in one uvicorn process.

Nothing heavy is imported here, so the standalone server starts without Ray Serve.
"""

from __future__ import annotations

from typing import Any


def build_app(args: dict[str, Any] | None = None):  # noqa: ANN201 - ray.serve.Application, imported lazily
    """``import_path: raypipe.serve:build_app`` works as well as ``raypipe.serve.app:build_app``."""
    from raypipe.serve.app import build_app as _build_app

    return _build_app(args)
