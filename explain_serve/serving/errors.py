"""The one error type a request can fail with: an HTTP status and a message saying what to fix."""
from __future__ import annotations

import json
from typing import Optional


class ServeError(Exception):
    """A request error answered as ``{"code", "type", "message", "field"}`` with status ``code``."""

    TYPES = {400: "InvalidInput", 403: "Forbidden", 404: "NotFound", 413: "PayloadTooLarge",
             415: "UnsupportedMediaType", 422: "UnprocessableEntity", 501: "NotImplemented",
             500: "InternalServerError"}

    def __init__(self, message: str, code: int = 400, field: Optional[str] = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.field = field

    def to_json(self) -> str:
        body = {"code": self.code, "type": self.TYPES.get(self.code, "Error"), "message": self.message}
        if self.field is not None:
            body["field"] = self.field
        return json.dumps(body, separators=(",", ":"))


def bad(message: str, field: Optional[str] = None) -> ServeError:
    return ServeError(message, 400, field)


def too_large(message: str, field: Optional[str] = None) -> ServeError:
    return ServeError(message, 413, field)


def model_failed(what: str, exc: BaseException) -> ServeError:
    """A 500 for an input that passed validation but the model or method raised on: names the cause."""
    return ServeError(f"{what} raised {type(exc).__name__} on this input: {str(exc)[:300]}", 500)
