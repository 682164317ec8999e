"""``/docs`` (Swagger UI) from assets shipped in the package, never a CDN: monitoring centres run on
isolated networks. The assets are npm's ``swagger-ui-dist`` vendored in api/static/swagger-ui/ (version,
integrity and Apache-2.0 licence in its README.md). ReDoc is not offered (it would need its own bundle)."""
from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parent / "static"
STATIC_URL = "/static"
DOCS_URL = "/docs"
SWAGGER_UI_VERSION = "5.35.0"  # api/static/swagger-ui/README.md
_SWAGGER = f"{STATIC_URL}/swagger-ui"
# validatorUrl None: Swagger UI would otherwise load a badge from validator.swagger.io
SWAGGER_UI_PARAMETERS = {"validatorUrl": None, "persistAuthorization": True}


def install(app: FastAPI) -> None:
    """Serve the static assets and the Swagger UI page (create the app with ``docs_url=None``)."""
    app.mount(STATIC_URL, StaticFiles(directory=STATIC_DIR), name="static")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")  # behind a proxy that strips a prefix
        return get_swagger_ui_html(
            openapi_url=root + app.openapi_url, title=f"{app.title} - API docs",
            swagger_js_url=f"{root}{_SWAGGER}/swagger-ui-bundle.js", swagger_css_url=f"{root}{_SWAGGER}/swagger-ui.css",
            swagger_favicon_url=f"{root}{_SWAGGER}/favicon-32x32.png", oauth2_redirect_url=None,
            swagger_ui_parameters=SWAGGER_UI_PARAMETERS)
