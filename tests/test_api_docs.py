"""The OpenAPI document says what the API really does: the API-key security schemes on every protected
operation, and the one error body ``{error, message}`` for 401/403/404/422/429 - which is also what the
router's own 404 (unknown route) and 405 (wrong method) answer."""
import jsonschema_rs  # schemathesis' validator
import pytest

from wulian.api.auth import API_KEY_HEADER, create_key
from tests.helpers import api_client

PROTECTED_ERRORS = ("401", "403", "404", "422", "429")


@pytest.fixture
async def api(settings, pool):
    async with pool.acquire() as con:
        key = await create_key(con, name="docs-admin", role="admin", regions=[])
    async with api_client(settings) as c:
        doc = (await c.get("/openapi.json")).json()
        yield c, key, doc


def _conforms(doc: dict, body, schema_name: str) -> None:
    """Validate a body against a component schema of the served document ($refs resolved within it)."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": doc["components"]}
    jsonschema_rs.Draft202012Validator(schema).validate(body)


def _operations(doc: dict):
    for path, item in doc["paths"].items():
        for method, op in item.items():
            yield path, method, op


async def test_api_key_security_scheme_on_every_protected_operation(api):
    _, _, doc = api
    schemes = doc["components"]["securitySchemes"]
    api_key = [name for name, s in schemes.items() if s["type"] == "apiKey"]
    assert len(api_key) == 1 and schemes[api_key[0]] | {"description": ""} == {
        "type": "apiKey", "in": "header", "name": API_KEY_HEADER, "description": ""}
    assert any(s["type"] == "http" and s["scheme"] == "bearer" for s in schemes.values())
    v1 = [(p, m, op) for p, m, op in _operations(doc) if p.startswith("/v1/")]
    assert len(v1) >= 25
    for path, method, op in v1:
        assert {api_key[0]: []} in op.get("security", []), f"{method} {path}"
        # the key is a security scheme, not an ordinary header parameter any more
        headers = {p["name"].lower() for p in op.get("parameters", []) if p["in"] == "header"}
        assert not headers & {"authorization", API_KEY_HEADER.lower()}, f"{method} {path}: {headers}"
    assert "security" not in doc["paths"]["/healthz"]["get"]


async def test_error_body_documented_for_every_protected_operation(api):
    _, _, doc = api
    assert doc["components"]["schemas"]["ErrorBody"]["required"] == ["error", "message"]
    assert "HTTPValidationError" not in doc["components"]["schemas"]  # FastAPI's {"detail": [...]}, never sent
    for path, method, op in _operations(doc):
        if "security" not in op:
            continue
        for status in PROTECTED_ERRORS:
            schema = op["responses"][status]["content"]["application/json"]["schema"]
            expected = "ValidationErrorBody" if status == "422" else "ErrorBody"
            assert schema == {"$ref": f"#/components/schemas/{expected}"}, f"{method} {path} {status}"
    assert "Retry-After" in doc["paths"]["/v1/alerts"]["get"]["responses"]["429"]["headers"]


async def test_real_error_bodies_match_the_documented_schemas(api):
    client, key, doc = api
    r = await client.get("/v1/readings", params={"bucket": "5x"}, headers={API_KEY_HEADER: key})
    assert r.status_code == 422 and r.json()["error"] == "invalid_request" and r.json()["details"], r.text
    _conforms(doc, r.json(), "ValidationErrorBody")
    r = await client.get("/v1/alerts")
    assert r.status_code == 401
    _conforms(doc, r.json(), "ErrorBody")
    r = await client.get("/v1/alerts/999999999", headers={API_KEY_HEADER: key})  # the X-API-Key scheme works
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    _conforms(doc, r.json(), "ErrorBody")


@pytest.mark.parametrize("method,path,status,code", [
    ("GET", "/v1/no-such-thing", 404, "not_found"),
    ("GET", "/nowhere", 404, "not_found"),
    ("DELETE", "/v1/alerts", 405, "method_not_allowed"),
    ("PATCH", "/healthz", 405, "method_not_allowed"),
])
async def test_unknown_route_and_wrong_method_answer_the_error_body(api, method, path, status, code):
    client, key, doc = api
    r = await client.request(method, path, headers={API_KEY_HEADER: key})
    assert r.status_code == status and r.json()["error"] == code and path in r.json()["message"], r.text
    assert "detail" not in r.json()
    _conforms(doc, r.json(), "ErrorBody")
    if status == 405:
        assert "GET" in r.headers["allow"] and "GET" in r.json()["message"]
