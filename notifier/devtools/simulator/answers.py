"""The simulator's error answers, shaped as each simulated service shapes them: DCS (and most Huawei
APIs) ``{error_code, error_msg}``, Cloud Eye v1 ``{http_code, message: {code, details}}``, the API gateway
``{error_code, error_msg, request_id}``. One exception class per shape; the server answers any of them."""

from __future__ import annotations

import uuid
from typing import Any

from aiohttp import web


def error_body(code: str, message: str) -> dict[str, Any]:
    """The Huawei-style error body."""
    return {"error_code": code, "error_msg": message, "error_ext_msg": None}


def ces_error_body(status: int, code: str, details: str) -> dict[str, Any]:
    """Cloud Eye v1's documented error body (``http_code`` a string as in the example; unconfirmed)."""
    return {"http_code": str(status), "message": {"details": details, "code": code}}


def apig_error_body(code: str, message: str, request_id: str) -> dict[str, Any]:
    """The API gateway's error body (``APIG.0301`` for authentication failures, ``APIG.0308`` throttling)."""
    return {"error_code": code, "error_msg": message, "request_id": request_id}


class ApiError(Exception):
    """An error answer: an HTTP status, the service's error code and message (DCS's shape)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message

    def response(self) -> web.Response:
        return web.json_response(error_body(self.code, self.message), status=self.status)


class CesError(ApiError):
    """A Cloud Eye error answer (see :func:`ces_error_body`)."""

    def response(self) -> web.Response:
        return web.json_response(ces_error_body(self.status, self.code, self.message), status=self.status)


class GatewayError(ApiError):
    """An API gateway error answer (:func:`apig_error_body`); its ``request_id`` is also ``X-Request-Id``."""

    def response(self) -> web.Response:
        request_id = uuid.uuid4().hex
        body = apig_error_body(self.code, self.message, request_id)
        return web.json_response(body, status=self.status, headers={"X-Request-Id": request_id})
