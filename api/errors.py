"""Domain errors, mapped once to clean JSON responses (never a 500 for a client's mistake).

Every error body is ``{"error": <code>, "message": <text>}`` (:class:`ErrorBody`), whether the app raised
it, request validation refused the input (plus ``details``) or the router found no route or method; the
OpenAPI document says so for every operation (:func:`document`).
"""
from __future__ import annotations

import json
from http import HTTPStatus

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

_REF = "#/components/schemas/"
_METHODS = {"get", "put", "post", "delete", "patch", "options", "head", "trace"}
_MAX_PATH = 200  # of a request path echoed in a message


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: str = Field(description="stable machine-readable code, e.g. not_found, unauthorized, rate_limited")
    message: str = Field(description="what went wrong, for a human")


class ErrorDetail(BaseModel):
    loc: list[str] = Field(description="where the bad input is: ['query', 'from'], ['body', 'threshold']")
    msg: str


class ValidationErrorBody(ErrorBody):
    """422: parameters or body refused; details lists each problem when request validation found them."""

    details: list[ErrorDetail] = Field(default=[], description="one entry per refused input")


# status -> (when, body model, response headers), documented on protected operations (422 on every
# operation that takes input)
ERROR_RESPONSES: dict[int, tuple[str, type[BaseModel], dict]] = {
    401: ("no API key, or a malformed, unknown, revoked or expired one", ErrorBody,
          {"WWW-Authenticate": {"schema": {"type": "string"}, "description": "Bearer"}}),
    403: ("the key's role may not do this", ErrorBody, {}),
    404: ("no such object within the key's regions", ErrorBody, {}),
    422: ("parameters or body refused", ValidationErrorBody, {}),
    429: ("the key's rate limit is exhausted", ErrorBody,
          {"Retry-After": {"schema": {"type": "integer"}, "description": "seconds to wait"}}),
}
_HTTP_CODES = {404: "not_found", 405: "method_not_allowed"}


class ApiError(Exception):
    status = 400
    code = "bad_request"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class NotFound(ApiError):
    status = 404
    code = "not_found"


class BadQuery(ApiError):
    status = 422
    code = "invalid_query"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        headers = {}
        if exc.status == 401:
            headers["WWW-Authenticate"] = "Bearer"
        retry = getattr(exc, "retry_after", None)
        if retry is not None:
            headers["Retry-After"] = str(max(1, round(retry)))
        return JSONResponse(ErrorBody(error=exc.code, message=exc.message).model_dump(), status_code=exc.status,
                            headers=headers)

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A parameter the database cannot take (an id beyond int64, a NUL in a string) or date arithmetic
        # on a client's extreme date (year 1 minus 30 days): the client's mistake, not a server error
        # (found by schemathesis).
        return JSONResponse(ErrorBody(error="invalid_query", message=str(exc).split("\n")[0][:300]).model_dump(),
                            status_code=422)

    app.add_exception_handler(asyncpg.DataError, _out_of_range)
    app.add_exception_handler(OverflowError, _out_of_range)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # The router's own 404 (no route) and 405 (no such method on a route): the same body as ours.
        path = request.url.path[:_MAX_PATH]
        status = exc.status_code
        code = _HTTP_CODES.get(status) or HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
        message = str(exc.detail)
        if status == 404 and message == HTTPStatus.NOT_FOUND.phrase:
            message = f"no route for {path}"
        elif status == 405:
            allowed = (exc.headers or {}).get("Allow")
            message = f"{request.method} is not allowed on {path}" + (f"; allowed: {allowed}" if allowed else "")
        return JSONResponse(ErrorBody(error=code, message=message).model_dump(), status_code=status,
                            headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [ErrorDetail(loc=[str(x) for x in e.get("loc", ())], msg=e.get("msg", "")) for e in exc.errors()]
        msg = "; ".join(f"{'.'.join(d.loc)}: {d.msg}" for d in details)
        body = ValidationErrorBody(error="invalid_request", message=msg, details=details)
        return JSONResponse(body.model_dump(), status_code=422)


def _content(model: type[BaseModel]) -> dict:
    return {"application/json": {"schema": {"$ref": _REF + model.__name__}}}


def document(schema: dict) -> dict:
    """Put the error bodies the app really answers into an OpenAPI document (in place): 401/403/404/422/429
    on every protected operation (one with a security requirement), 422 on every operation taking input,
    and a body for route-declared errors (409...) that had none. FastAPI's own 422 schema
    (``HTTPValidationError``: ``{"detail": [...]}``) is not what the app returns, so it goes."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (ErrorBody, ValidationErrorBody):
        js = model.model_json_schema(ref_template=_REF + "{model}")
        components.update(js.pop("$defs", {}))
        components[model.__name__] = js
    for item in schema.get("paths", {}).values():
        for method, op in item.items():
            if method not in _METHODS:
                continue
            responses = op.setdefault("responses", {})
            takes_input = bool(op.get("parameters") or op.get("requestBody"))
            for status, (why, model, headers) in ERROR_RESPONSES.items():
                if op.get("security") or (status == 422 and takes_input):
                    responses[str(status)] = {"description": why, "content": _content(model),
                                              **({"headers": headers} if headers else {})}
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400 and "content" not in response:
                    response["content"] = _content(ErrorBody)
    text = json.dumps(schema["paths"])
    for name in ("HTTPValidationError", "ValidationError"):
        if json.dumps(_REF + name) not in text:
            components.pop(name, None)
    return schema


def install_openapi(app: FastAPI) -> None:
    """Generate the document as FastAPI does, then :func:`document` it (once; FastAPI caches it)."""
    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is None:
            document(generate())
        return app.openapi_schema

    app.openapi = openapi
