"""Domain errors, mapped once to clean JSON responses (never a 500 for a client's mistake)."""
from __future__ import annotations

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse


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
        return JSONResponse({"error": exc.code, "message": exc.message}, status_code=exc.status, headers=headers)

    async def _out_of_range(request: Request, exc: Exception) -> JSONResponse:
        # A parameter the database cannot take (an id beyond int64, a NUL in a string) or date arithmetic
        # on a client's extreme date (year 1 minus 30 days): the client's mistake, not a server error
        # (found by schemathesis).
        return JSONResponse({"error": "invalid_query", "message": str(exc).split("\n")[0][:300]}, status_code=422)

    app.add_exception_handler(asyncpg.DataError, _out_of_range)
    app.add_exception_handler(OverflowError, _out_of_range)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": e.get("msg", "")} for e in exc.errors()
        ]
        msg = "; ".join(f"{'.'.join(d['loc'])}: {d['msg']}" for d in details)
        return JSONResponse({"error": "invalid_request", "message": msg, "details": details}, status_code=422)
