"""Schemathesis over the app's own OpenAPI schema (/openapi.json of the running server), each generated request
sent over a real socket to the real server, so that the protocol guard, the gate and every route are in the
path: no answer may be a 5xx, and every JSON answer must be JSON. (Driven through hypothesis directly, one
strategy per operation, rather than schemathesis's pytest plugin.)"""

from __future__ import annotations

import json

import pytest
import schemathesis
from hypothesis import given
from schemathesis.checks import not_a_server_error


@pytest.fixture(scope="module")
def operations(property_server):
    schema = schemathesis.openapi.from_url(property_server.url + "/openapi.json")
    found = [result.ok() for result in schema.get_all_operations()]
    assert len(found) >= 10, "the schema should describe every route"
    return {f"{operation.method.upper()} {operation.path}": operation for operation in found}


OPERATIONS = [
    "POST /v1/models/{name}/classify",
    "POST /v1/classify",
    "GET /v1/models",
    "GET /v1/models/{name}",
    "POST /v2/models/{name}/infer",
    "POST /v2/models/{name}/versions/{version}/infer",
    "GET /v2/models/{name}",
    "GET /v2/models/{name}/versions/{version}",
    "GET /v2/models/{name}/ready",
    "GET /v2/models/{name}/versions/{version}/ready",
]


@pytest.mark.parametrize("key", OPERATIONS)
def test_every_operation_of_the_openapi_schema(operations, property_server, key):
    assert key in operations, f"{key} is not in the schema: {sorted(operations)}"

    @given(case=operations[key].as_strategy())
    def answers_without_a_server_error(case):
        response = case.call(base_url=property_server.url, timeout=60)
        case.validate_response(response, checks=[not_a_server_error])
        content_type = response.headers.get("content-type") or [""]  # schemathesis's response: lists of values
        if content_type[0].startswith("application/json"):

            def refuse(constant: str) -> None:
                raise AssertionError(f"{constant} in a JSON answer of {case.method} {case.path}")

            json.loads(response.content, parse_constant=refuse)

    answers_without_a_server_error()
