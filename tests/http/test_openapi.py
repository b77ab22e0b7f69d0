"""The OpenAPI document: docs/openapi.yaml is the source, tokenvault/http/openapi.json the copy
the package serves at GET /v1/openapi.json. They must hold the same document, byte for byte as
this module renders it, and the document must be valid OpenAPI 3.

After editing the YAML, regenerate the copy: `.venv/bin/python -m tests.http.test_openapi --write`.
(The live API is checked against the document in tests/http/test_api_inputs.py, routes, and
tests/e2e/test_schemathesis.py, fuzzing.)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import schemathesis
import yaml

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "docs" / "openapi.yaml"
COPY = ROOT / "tokenvault" / "http" / "openapi.json"


def load_source() -> dict[str, Any]:
    document = yaml.safe_load(SOURCE.read_text(encoding="utf-8"))
    assert isinstance(document, dict)
    return document


def render_copy(document: dict[str, Any]) -> bytes:
    return (json.dumps(document, indent=1, ensure_ascii=False) + "\n").encode("utf-8")


def test_the_served_copy_is_the_yaml_source() -> None:
    assert COPY.read_bytes() == render_copy(load_source()), (
        "tokenvault/http/openapi.json differs from docs/openapi.yaml: "
        "run .venv/bin/python -m tests.http.test_openapi --write"
    )


def test_the_document_is_valid_openapi_3() -> None:
    document = load_source()
    assert document["openapi"].startswith("3.")
    schemathesis.openapi.from_dict(document).validate()  # raises on an invalid document


def test_every_operation_is_documented_with_its_errors() -> None:
    document = load_source()
    for path, operations in document["paths"].items():
        assert not path.startswith("/internal/"), "the peer endpoint is not public"
        for method, operation in operations.items():
            statuses = set(operation["responses"])
            # 202: a membership change decided (its transfers follow)
            assert statuses & {"200", "202"}, (method, path)
            assert "500" not in statuses and "default" not in statuses, (method, path)
            if operation.get("security", document["security"]):
                assert "401" in statuses, (method, path)
            if "requestBody" in operation:
                assert {"400", "413"} <= statuses, (method, path)


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: python -m tests.http.test_openapi --write")
    COPY.write_bytes(render_copy(load_source()))
    print(f"wrote {COPY.relative_to(ROOT)}")
