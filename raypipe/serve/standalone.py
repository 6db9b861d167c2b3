"""The same HTTP API, pipeline and model in one plain FastAPI + uvicorn process (no Ray).

The benchmark's baseline (benchmarks/serve.py), and a debugging aid:

    python -m raypipe.serve.standalone --model-uri models:/attacknet@champion --port 8100
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os

import numpy as np
from fastapi import FastAPI

from raypipe.serve.api import create_api
from raypipe.serve.core import Findings, LocalDetector, Scores, crop_digest
from raypipe.serve.runners import load_served, resolve_served_model
from raypipe.serve.settings import MODEL_URI_ENV, ServeSettings, with_model_face


class LocalBackend:
    """Detection and classification in this process (threads keep the event loop free)."""

    detector_where = classifier_where = "local"

    def __init__(self, settings: ServeSettings) -> None:
        face_config = with_model_face(settings).face_config()
        self.detector = LocalDetector(face_config)
        served = resolve_served_model(settings.resolved_model_uri(), settings.resolved_tracking_uri())
        self.runner = load_served(served, settings.runtime, settings.resolved_tracking_uri(), face_config.version(),
                                  settings.precision)

    async def find_faces(self, data: bytes) -> Findings:
        return await self.detector.find_faces(data)

    async def classify(self, crops: np.ndarray, boxes: np.ndarray, want_digests: bool) -> Scores:
        probabilities = await asyncio.to_thread(self.runner.spoof_probabilities, crops, boxes)
        digests = [crop_digest(c) for c in crops] if want_digests else None
        return Scores([float(p) for p in probabilities], dict(self.runner.info), digests)

    async def model_info(self) -> dict:
        return dict(self.runner.info)


def create_standalone_app(settings: ServeSettings) -> FastAPI:
    return create_api(LocalBackend(settings), settings)


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--model-uri", help="overrides RAYPIPE_MODEL_URI and the settings")
    parser.add_argument("--tracking-uri")
    parser.add_argument("--settings-json", default="{}", help="ServeSettings fields as JSON")
    args = parser.parse_args(argv)
    values = json.loads(args.settings_json)
    if args.model_uri:
        os.environ[MODEL_URI_ENV] = args.model_uri  # the flag wins over the environment
    if args.tracking_uri:
        values["tracking_uri"] = args.tracking_uri
    settings = ServeSettings.model_validate(values)
    uvicorn.run(create_standalone_app(settings), host=args.host, port=args.port, log_level="warning",
                access_log=False)


if __name__ == "__main__":
    main()
