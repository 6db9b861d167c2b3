"""The serving face pipeline comes from the registered model's crop settings (real MLflow store, no Ray)."""

from __future__ import annotations

import mlflow
import pytest

from raypipe.face import FaceConfig
from raypipe.models import create_model
from raypipe.models.store import configure_tracking, ensure_experiment, face_tag, log_and_register
from raypipe.serve.settings import ServeSettings, with_model_face

TRAINED_ON = FaceConfig(expand=3.0, crop_size=192)


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    uri = f"sqlite:///{tmp_path_factory.mktemp('mlflow') / 'mlflow.db'}"
    configure_tracking(uri)
    with mlflow.start_run(experiment_id=ensure_experiment("serve-settings")):
        log_and_register(create_model("attacknet"), threshold=0.5, register_as="m", promote=True,
                         extra_tags={"pipeline_version": TRAINED_ON.version(), **face_tag(TRAINED_ON.crop_settings())})
    yield uri
    mlflow.set_tracking_uri(None)


def test_the_app_cuts_the_crops_the_model_was_trained_on(registry):
    settings = with_model_face(ServeSettings(model_uri="models:/m@champion", tracking_uri=registry))
    config = settings.face_config()
    assert config.version() == TRAINED_ON.version() and (config.expand, config.crop_size) == (3.0, 192)
    assert config.max_pixels == settings.max_pixels  # the serving guards still apply


def test_a_disagreeing_face_setting_fails_the_deploy_with_a_clear_message(registry):
    agreeing = ServeSettings(model_uri="models:/m@champion", tracking_uri=registry, face={"expand": 3.0})
    assert with_model_face(agreeing).face_config().version() == TRAINED_ON.version()
    clashing = ServeSettings(model_uri="models:/m@champion", tracking_uri=registry, face={"expand": 1.5})
    with pytest.raises(ValueError, match="expand: yaml 1.5 != model 3.0"):
        with_model_face(clashing)


def test_an_unknown_model_keeps_the_yaml_settings(registry):
    settings = ServeSettings(model_uri="models:/nope@champion", tracking_uri=registry, face={"expand": 2.0})
    assert with_model_face(settings).face_config().expand == 2.0
