"""Tests of tokenvault.http.errors: statuses, codes, body shape, Retry-After, JSON."""

from __future__ import annotations

import json

import pytest

from tokenvault.http.errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    error_response,
    json_response,
)
from tokenvault.http.server import Response

CASES: list[tuple[type[ApiError], int, str]] = [
    (ApiError, 500, "internal"),
    (InvalidRequest, 400, "invalid_request"),
    (Unauthenticated, 401, "unauthenticated"),
    (Forbidden, 403, "forbidden"),
    (NotFound, 404, "not_found"),
    (MethodNotAllowed, 405, "method_not_allowed"),
    (PayloadTooLarge, 413, "payload_too_large"),
    (Unavailable, 503, "unavailable"),
]


@pytest.mark.parametrize(("cls", "status", "code"), CASES)
def test_default_error(cls: type[ApiError], status: int, code: str) -> None:
    error = cls()
    assert isinstance(error, ApiError)
    assert (error.status, error.code) == (status, code)
    assert error.message and error.message.endswith(".")
    assert str(error) == error.message
    response = error_response(error)
    assert isinstance(response, Response)
    assert response.status == status
    assert response.content_type == "application/json"
    assert json.loads(response.body.decode("utf-8")) == {
        "error": {"code": code, "message": error.message}
    }
    assert set(json.loads(response.body)) == {"error"}
    assert b" " not in response.body.split(b'"message"')[0]  # compact separators
    if cls is Unavailable:
        assert response.headers == (("retry-after", "1"),)
    else:
        assert response.headers == ()


@pytest.mark.parametrize(("cls", "status", "code"), CASES)
def test_custom_message(cls: type[ApiError], status: int, code: str) -> None:
    response = error_response(cls("records must be a list"))
    assert response.status == status
    assert response.body == (
        b'{"error":{"code":"' + code.encode() + b'","message":"records must be a list"}}'
    )


def test_retry_after() -> None:
    assert Unavailable().retry_after_s == 1
    assert Unavailable(retry_after_s=30).retry_after_s == 30
    assert error_response(Unavailable(retry_after_s=30)).headers == (("retry-after", "30"),)
    assert error_response(NotFound(retry_after_s=5)).headers == (("retry-after", "5"),)
    assert Unavailable.retry_after_s == 1  # an instance never changes the class default
    with pytest.raises(ValueError):
        Unavailable(retry_after_s=-1)


def test_error_body_is_utf8_not_escaped() -> None:
    response = error_response(InvalidRequest("clé invalide — non"))
    assert "clé invalide — non".encode() in response.body
    assert json.loads(response.body)["error"]["message"] == "clé invalide — non"


def test_json_response() -> None:
    response = json_response(201, {"b": [1, 2], "a": "é", "n": None})
    assert response.status == 201
    assert response.content_type == "application/json"
    assert response.body == '{"b":[1,2],"a":"é","n":null}'.encode()
    assert response.headers == ()
    with pytest.raises(ValueError):
        json_response(200, {"x": float("nan")})  # NaN is not JSON
