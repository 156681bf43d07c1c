"""docs/openapi.yaml is a valid OpenAPI 3.1 document (openapi-spec-validator), names the
package's version, covers every route a relay and the replay service answer, and its schemas
accept what a relay really sends (the handshake, an error)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import yaml
from openapi_schema_validator import OAS31Validator
from openapi_spec_validator import validate
from referencing import Registry
from referencing.jsonschema import DRAFT202012

from relay import __version__
from relay.node.app import App
from relay.settings import load

SPEC_PATH = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(SPEC_PATH.read_text())
    return loaded


def validator(name: str) -> OAS31Validator:
    document = spec()
    registry: Registry[Any] = Registry().with_resource(
        "urn:ssedge", DRAFT202012.create_resource(document))
    schema = {"$ref": f"urn:ssedge#/components/schemas/{name}"}
    return OAS31Validator(schema, registry=registry)


def test_the_document_is_valid_openapi_and_names_this_version() -> None:
    document = spec()
    validate(document)
    assert document["info"]["version"] == __version__


def test_every_route_is_described() -> None:
    assert set(spec()["paths"]) == {
        "/v1/streams/{topic}/events", "/v1/streams/events", "/v1/streams/{topic}",
        "/v1/handshake",
        "/v1/replay/{topic}", "/v1/auth/cookie", "/healthz", "/readyz", "/metrics", "/",
        "/dashboard", "/static/{file}",
        "/v1/admin/audience", "/v1/admin/revocations", "/v1/admin/disconnect",
        "/v1/admin/drain",
    }


def relay_answer(path: str, method: str = "GET") -> tuple[int, Any]:
    app = App(load({}, redis_url="redis://127.0.0.1:1/0"))
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
             "query_string": b"", "headers": []}
    asyncio.run(app(scope, receive, send))
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return sent[0]["status"], msgspec.json.decode(body)


def test_what_a_relay_sends_fits_the_schemas() -> None:
    status, handshake = relay_answer("/v1/handshake")
    assert status == 200
    validator("Handshake").validate(handshake)
    for path, method, code in (("/nowhere", "GET", 404), ("/v1/streams/bad%20topic", "GET", 400),
                               ("/v1/handshake", "POST", 405)):
        status, error = relay_answer(path, method)
        assert status == code
        validator("Error").validate(error)
    errors = validator("Error")
    assert not errors.is_valid({"error": "teapot", "message": "x"})
