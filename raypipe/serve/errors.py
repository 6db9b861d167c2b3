"""HTTP errors of the liveness API: ``{"error": {"code", "message"}}`` with a 4xx status.

Bad input is always a 4xx; a 5xx means the service itself failed. The body is
``raypipe.serve.schemas.ErrorBody``, the schema the API publishes for every error.
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from raypipe import face
from raypipe.serve.schemas import ErrorBody, ErrorDetail

# FaceError.reason -> HTTP status. Undecodable input is the client's bug (400); an image
# that decodes but cannot hold a face is well-formed yet unprocessable (422).
FACE_ERROR_STATUS = {
    face.EmptyInput.reason: 400,
    face.UndecodableImage.reason: 400,
    face.TruncatedImage.reason: 400,
    face.ImageTooLarge.reason: 413,
    face.ImageTooSmall.reason: 422,
    face.NoFaceFound.reason: 422,
}
FACE_ERRORS = {cls.reason: cls for cls in (face.EmptyInput, face.UndecodableImage, face.TruncatedImage,
                                           face.ImageTooLarge, face.ImageTooSmall, face.NoFaceFound)}


class ApiError(Exception):
    """An error answered to the client; ``code`` is stable and machine readable."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}

    def response(self) -> JSONResponse:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message))
    return JSONResponse(body.model_dump(), status_code=status, headers=headers)


def from_face_error(exc: face.FaceError, prefix: str = "") -> ApiError:
    """Typed face-pipeline error -> ApiError (its message never contains image bytes)."""
    return ApiError(FACE_ERROR_STATUS.get(exc.reason, 400), exc.reason, prefix + str(exc))


def face_error(reason: str, message: str) -> face.FaceError:
    """Rebuild a FaceError from its reason (errors cross deployment boundaries as plain data)."""
    return FACE_ERRORS.get(reason, face.UndecodableImage)(message)
