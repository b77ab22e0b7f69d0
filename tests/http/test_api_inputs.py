"""PublicApi on a real one-peer node (N = W = R = 1, LevelDB in a temporary directory, no
sockets): every row of docs/api.md's error table happens as documented, one test per row, and no
refused request changes what the store holds. Also: what the API answers that is not an error
but could be mistaken for one (records without a configured field, an empty rotate body), and
the OpenAPI document's routes against the API's own.

The HTTP layer's part of the same rows (invalid HTTP, headers too large, a path that does not
decode) is in test_server.py; the whole chain on real processes in tests/e2e/test_errors.py.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from tests.http.test_openapi import COPY, load_source
from tokenvault.cluster_init import init_cluster, load_keys
from tokenvault.config import load_config
from tokenvault.http.api import JSON_DEPTH_MAX, PublicApi
from tokenvault.http.server import Request, RequestHead, Response
from tokenvault.log import EventLog
from tokenvault.node import Node
from tokenvault.quorum.messages import EPOCH_MAX
from tokenvault.quorum.records import IDENTITY_KEY, StoreIdentity, encode_identity
from tokenvault.store.leveldb_store import LevelDBStore

ROOT = Path(__file__).resolve().parents[2]
SCAN_LIMIT = 100_000
Case = tuple[str, str, str, bytes, str | None]  # (name, method, path, body, key name or None)


@dataclass
class Vault:
    api: PublicApi
    node: Node
    keys: dict[str, str]  # "alice", "bob", "admin" -> key
    log: io.StringIO

    async def call(
        self, method: str, path: str, body: bytes = b"", key: str | None = "alice"
    ) -> Response:
        headers = {} if key is None else {"authorization": f"Bearer {self.keys[key]}"}
        head = RequestHead(
            method=method, path=path, query="", headers=headers, client="127.0.0.1:1"
        )
        request = Request(head=head, body=body)
        return await self.api.handle(request)

    def stored(self) -> list[tuple[bytes, bytes]]:
        return self.node.store.scan(b"", limit=SCAN_LIMIT)


def error_of(response: Response) -> dict[str, str]:
    assert response.content_type == "application/json"
    payload = json.loads(response.body)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message"}
    error: dict[str, str] = payload["error"]
    assert error["message"]
    return error


async def start_vault(
    directory: Path, nursery: trio.Nursery, *, nodes: int = 1, served_before: bool = False
) -> Vault:
    """n1 of a new cluster; `served_before`: its store says it has been serving (it serves at
    once, where a fresh store of a several-peer cluster waits for its peers first)."""
    quorum = 1 if nodes == 1 else 2
    init = init_cluster(
        directory,
        nodes=nodes,
        base_port=7400,  # never bound: requests go to PublicApi.handle directly
        replicas=nodes,
        write_quorum=quorum,
        read_quorum=quorum,
    )
    keys = load_keys(init.keys_path)
    config = load_config(init.config_path)
    if served_before:
        store = LevelDBStore(str(config.peer("n1").data_dir / "leveldb"))
        identity = StoreIdentity(store_id="5e" * 16, phase="serving")
        store.stage([(IDENTITY_KEY, encode_identity(identity))])
        await store.wait_durable()
        store.close()
    log = io.StringIO()
    node = Node(config, "n1", log=EventLog("n1", log))
    api = PublicApi(node)
    await nursery.start(node.run)
    return Vault(api=api, node=node, keys={**keys.owners, "admin": keys.admin}, log=log)


@pytest.fixture
async def vault(tmp_path: Path) -> AsyncIterator[Vault]:
    async with trio.open_nursery() as nursery:
        running = await start_vault(tmp_path / "cluster", nursery)
        try:
            yield running
        finally:
            nursery.cancel_scope.cancel()
    running.node.close()  # once its tasks (and a flush in its thread) are done


async def assert_refused_and_nothing_changed(
    vault: Vault,
    cases: Sequence[Case],
    status: int,
    code: str,
) -> None:
    """Every case answers `status` with `code`, and the store holds what it held before."""
    before = vault.stored()
    for name, method, path, body, key in cases:
        response = await vault.call(method, path, body, key)
        assert response.status == status, (name, response.status, response.body[:200])
        assert error_of(response)["code"] == code, name
        assert vault.stored() == before, name


# -- 400 invalid_request ------------------------------------------------------------------------

TOKENIZE, DETOKENIZE, ROTATE = "/v1/tokenize", "/v1/detokenize", "/v1/epoch/rotate"
GOOD = '{"records": [{"ssn": "1"}]}'
DEEP = b"[" * JSON_DEPTH_MAX + b"]" * JSON_DEPTH_MAX
# (cause, path, body): every cause of docs/api.md's 400 row that a body can have (POST).
INVALID_BODIES: list[tuple[str, str, bytes]] = [
    ("malformed json", TOKENIZE, b"{not json"),
    ("empty body", TOKENIZE, b""),
    ("trailing garbage", TOKENIZE, GOOD.encode() + b" x"),
    ("invalid utf-8", TOKENIZE, b'{"records": [{"ssn": "\xff"}]}'),
    ("utf-8 byte order mark", TOKENIZE, b"\xef\xbb\xbf" + GOOD.encode()),
    ("utf-16", TOKENIZE, GOOD.encode("utf-16")),
    ("utf-16-le", TOKENIZE, GOOD.encode("utf-16-le")),
    ("utf-32", TOKENIZE, GOOD.encode("utf-32")),
    ("latin-1", TOKENIZE, '{"records": [{"ssn": "é"}]}'.encode("latin-1")),
    ("NaN", TOKENIZE, b'{"records": [{"ssn": "1", "n": NaN}]}'),
    ("Infinity", TOKENIZE, b'{"records": [{"ssn": "1", "n": -Infinity}]}'),
    ("1e400", TOKENIZE, b'{"records": [{"ssn": "1", "note": 1e400}]}'),
    ("-1e400 alone", TOKENIZE, b'{"records": [{"note": -1e400}]}'),
    ("integer of 4,301 digits", TOKENIZE, b'{"records": [{"n": 1%s}]}' % (b"0" * 4300)),
    ("1e400 in detokenize", DETOKENIZE, b'{"tokens": ["t"], "x": 1e400}'),
    ("lone surrogate, configured", TOKENIZE, b'{"records": [{"ssn": "\\ud800"}]}'),
    ("lone surrogate, other", TOKENIZE, b'{"records": [{"ssn": "1", "n": "\\udc00"}]}'),
    ("lone surrogate, a key", TOKENIZE, b'{"records": [{"ssn": "1", "\\ud800": 1}]}'),
    ("control character", TOKENIZE, b'{"records": [{"ssn": "a\x01b"}]}'),
    ("too deep", TOKENIZE, b'{"records": [{"ssn": "1", "n": %s}]}' % DEEP),
    ("far too deep", TOKENIZE, b"[" * 100_000 + b"]" * 100_000),
    ("body not an object", TOKENIZE, b'[{"ssn": "1"}]'),
    ("body a string", DETOKENIZE, b'"tokens"'),
    ("records missing", TOKENIZE, b"{}"),
    ("records not a list", TOKENIZE, b'{"records": {"ssn": "1"}}'),
    ("records empty", TOKENIZE, b'{"records": []}'),
    ("record not an object", TOKENIZE, b'{"records": [{"ssn": "1"}, "ssn"]}'),
    ("configured field a number", TOKENIZE, b'{"records": [{"ssn": 123456789}]}'),
    ("configured field null", TOKENIZE, b'{"records": [{"ssn": "1"}, {"email": null}]}'),
    ("configured field a list", TOKENIZE, b'{"records": [{"card_number": ["4111"]}]}'),
    ("tokens missing", DETOKENIZE, b'{"token": ["t"]}'),
    ("tokens not a list", DETOKENIZE, b'{"tokens": "tok_x"}'),
    ("tokens empty", DETOKENIZE, b'{"tokens": []}'),
    ("a token not a string", DETOKENIZE, b'{"tokens": ["t", 1]}'),
    ("rotate: white space", ROTATE, b" \r\n\t"),
    ("rotate: null body", ROTATE, b"null"),
    ("rotate: not an object", ROTATE, b"[1]"),
    ("rotate: malformed", ROTATE, b'{"expected_epoch": 1'),
    ("rotate: byte order mark", ROTATE, b"\xef\xbb\xbf{}"),
    ("expected_epoch 0", ROTATE, b'{"expected_epoch": 0}'),
    ("expected_epoch -1", ROTATE, b'{"expected_epoch": -1}'),
    ("expected_epoch 1.0", ROTATE, b'{"expected_epoch": 1.0}'),
    ("expected_epoch true", ROTATE, b'{"expected_epoch": true}'),
    ("expected_epoch string", ROTATE, b'{"expected_epoch": "1"}'),
    ("expected_epoch null", ROTATE, b'{"expected_epoch": null}'),
    ("expected_epoch past the range", ROTATE, b'{"expected_epoch": %d}' % (EPOCH_MAX + 1)),
    ("expected_epoch 1e400", ROTATE, b'{"expected_epoch": 1e400}'),
]


async def test_400_invalid_request_for_every_documented_cause(vault: Vault) -> None:
    cases = [(name, "POST", path, body, "alice") for name, path, body in INVALID_BODIES]
    await assert_refused_and_nothing_changed(vault, cases, 400, "invalid_request")


async def test_400_messages_say_what_is_wrong(vault: Vault) -> None:
    expected = {
        b'{"records": [{"note": 1e400}]}': "A number in the body is out of range.",
        b"\xef\xbb\xbf{}": "The body is not valid UTF-8 JSON.",
        b'{"records": [{"ssn": 1}]}': "The value of the configured field 'ssn' must be a string.",
        b'{"records": [1]}': "Every record must be a JSON object.",
        b"[]": "The body must be a JSON object.",
        b'{"records": [[[' + b"[" * 62 + b"]" * 64 + b"]}": (
            f"The body nests deeper than {JSON_DEPTH_MAX} levels."
        ),
    }
    for body, message in expected.items():
        response = await vault.call("POST", "/v1/tokenize", body)
        assert error_of(response)["message"] == message, body[:40]
    response = await vault.call("POST", "/v1/epoch/rotate", b" ")
    assert error_of(response)["message"] == "The body is not valid UTF-8 JSON."
    response = await vault.call("POST", "/v1/epoch/rotate", b'{"expected_epoch": 0}')
    assert error_of(response)["message"] == (
        "'expected_epoch' must be a positive integer (at most 4,294,967,295)."
    )


async def test_the_nesting_limit_is_exact(vault: Vault) -> None:
    # The body is depth 1, "records" 2, a record 3: a value may nest JSON_DEPTH_MAX - 3 more.
    def body(extra: int) -> bytes:
        return b'{"records": [{"ssn": "deep", "n": %s}]}' % (b"[" * extra + b"]" * extra)

    deepest = await vault.call("POST", "/v1/tokenize", body(JSON_DEPTH_MAX - 3))
    assert deepest.status == 200
    assert (
        json.loads(deepest.body)["records"][0]["n"]
        == json.loads(body(JSON_DEPTH_MAX - 3))["records"][0]["n"]
    )
    assert (await vault.call("POST", "/v1/tokenize", body(JSON_DEPTH_MAX - 2))).status == 400


async def test_whatever_is_accepted_comes_back_unchanged(vault: Vault) -> None:
    """The answer echoes every field that is not configured: numbers at the edges of their
    range, escapes, non-ASCII text all encode again (no 500 after the write)."""
    record = {
        "ssn": "echo",
        "big": 10**4299,
        "small": -(10**30),
        "max": 1.7976931348623157e308,
        "tiny": 5e-324,
        "zero": -0.0,
        "text": '\u0000\u001f"\\/é😀\u2028',
        "nested": {"a": [None, True, False, [], {}]},
        "": "",
    }
    response = await vault.call("POST", "/v1/tokenize", json.dumps({"records": [record]}).encode())
    assert response.status == 200, response.body[:200]
    answer = json.loads(response.body)["records"][0]
    assert answer["ssn"].startswith("tok_")
    del answer["ssn"], record["ssn"]
    assert answer == record
    assert json.dumps(answer["zero"]) == "-0.0"


# -- 401 unauthenticated ------------------------------------------------------------------------


async def test_401_unauthenticated_without_a_known_bearer_key(vault: Vault) -> None:
    body = b'{"records": [{"ssn": "1"}]}'
    owner_paths = [
        ("POST", "/v1/tokenize", body),
        ("POST", "/v1/detokenize", b'{"tokens": ["t"]}'),
        ("GET", "/v1/tokens/tok_" + "A" * 32, b""),
        ("GET", "/v1/epoch", b""),
        ("POST", "/v1/epoch/rotate", b""),
        ("GET", "/v1/ring", b""),
        ("GET", "/v1/ring/owners/alice", b""),
        ("GET", "/v1/admin/owners/alice", b""),
        ("GET", "/v1/admin/node", b""),
    ]
    cases = [(f"no key {m} {p}", m, p, b, None) for m, p, b in owner_paths]
    await assert_refused_and_nothing_changed(vault, cases, 401, "unauthenticated")
    before = vault.stored()
    for header in ("Bearer nope", "Basic " + vault.keys["alice"], "Bearer ", "Bearer"):
        request = Request(
            head=RequestHead(
                method="POST",
                path="/v1/tokenize",
                query="",
                headers={"authorization": header},
                client="127.0.0.1:1",
            ),
            body=body,
        )
        response = await vault.api.handle(request)
        assert (response.status, error_of(response)["code"]) == (401, "unauthenticated"), header
    assert vault.stored() == before


# -- 403 forbidden ------------------------------------------------------------------------------


async def test_403_forbidden_for_what_the_key_may_not_do(vault: Vault) -> None:
    cases: list[Case] = [
        ("admin key tokenizes", "POST", "/v1/tokenize", b'{"records": [{"ssn": "1"}]}', "admin"),
        ("admin key detokenizes", "POST", "/v1/detokenize", b'{"tokens": ["t"]}', "admin"),
        ("admin key reads a token", "GET", "/v1/tokens/tok_" + "A" * 32, b"", "admin"),
        ("admin key reads an epoch", "GET", "/v1/epoch", b"", "admin"),
        ("admin key rotates", "POST", "/v1/epoch/rotate", b"", "admin"),
        ("owner key on admin node", "GET", "/v1/admin/node", b"", "alice"),
        ("owner key on admin owners", "GET", "/v1/admin/owners/alice", b"", "alice"),
        ("owner key on another owner", "GET", "/v1/ring/owners/alice", b"", "bob"),
        ("owner key on an unknown owner", "GET", "/v1/ring/owners/carol", b"", "bob"),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 403, "forbidden")


# -- 404 not_found ------------------------------------------------------------------------------


async def test_404_not_found_is_one_answer_for_every_token_the_caller_may_not_see(
    vault: Vault,
) -> None:
    made = await vault.call("POST", "/v1/tokenize", b'{"records": [{"ssn": "alice-1"}]}')
    alices_token = json.loads(made.body)["records"][0]["ssn"]
    tokens = [
        ("bob asks for alice's token", alices_token, "bob"),
        ("never made", "tok_" + "B" * 32, "alice"),
        ("malformed", "garbage", "alice"),
        ("path that does not decode (kept as sent)", "%ff", "alice"),
        ("percent-decoded to a slash", "a/b", "alice"),
        ("NUL", "\x00", "alice"),
    ]
    for name, token, key in tokens:
        response = await vault.call("GET", "/v1/tokens/" + token, key=key)
        assert response.status == 404, name
        assert response.body == b'{"error":{"code":"not_found","message":"No such token."}}', name
    cases: list[Case] = [
        ("unknown route", "GET", "/v1/nothing-here", b"", "alice"),
        ("unknown route that does not decode", "GET", "/v1/%ff", b"", "alice"),
        ("trailing slash", "POST", "/v1/tokenize/", b"{}", "alice"),
        ("unknown admin route, owner key", "GET", "/v1/admin/other", b"", "alice"),
        ("admin asks for an unknown owner", "GET", "/v1/ring/owners/carol", b"", "admin"),
        ("admin inspects an unknown owner", "GET", "/v1/admin/owners/%ff", b"", "admin"),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 404, "not_found")


# -- 405 method_not_allowed ---------------------------------------------------------------------

GET_AND_HEAD = "GET, HEAD"  # HEAD is answered wherever GET is
ALLOWED: dict[str, str] = {
    "/v1/tokenize": "POST",
    "/v1/detokenize": "POST",
    "/v1/tokens/tok_x": GET_AND_HEAD,
    "/v1/epoch": GET_AND_HEAD,
    "/v1/epoch/rotate": "POST",
    "/v1/ring": GET_AND_HEAD,
    "/v1/ring/owners/alice": GET_AND_HEAD,
    "/v1/admin/owners/alice": GET_AND_HEAD,
    "/v1/admin/node": GET_AND_HEAD,
    "/v1/admin/members": "GET, HEAD, POST",
    "/healthz": GET_AND_HEAD,
    "/readyz": GET_AND_HEAD,
    "/metrics": GET_AND_HEAD,
    "/v1/openapi.json": GET_AND_HEAD,
    "/ui": GET_AND_HEAD,
    "/internal/v1/messages": "POST",
}


async def test_405_names_the_allowed_methods_before_any_key_is_looked_at(vault: Vault) -> None:
    before = vault.stored()
    for path, allowed in ALLOWED.items():
        for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE"):
            if method in allowed.split(", "):
                continue
            response = await vault.call(method, path, b'{"records": [{"ssn": "1"}]}', key=None)
            assert response.status == 405, (method, path)
            assert error_of(response)["code"] == "method_not_allowed"
            assert dict(response.headers) == {"allow": allowed}, (method, path)
    assert vault.stored() == before


# -- 413 payload_too_large ----------------------------------------------------------------------


async def test_413_payload_too_large_for_lists_and_values_over_their_limits(vault: Vault) -> None:
    many_records = b'{"records": [' + b",".join([b'{"ssn": "1"}'] * 1001) + b"]}"
    many_tokens = b'{"tokens": [' + b",".join([b'"t"'] * 1001) + b"]}"
    big = "x" * 4097
    wide = "é" * 2049  # 4,098 UTF-8 bytes in 2,049 characters
    big_value = json.dumps({"records": [{"ssn": big}]}).encode()
    wide_value = json.dumps({"records": [{"email": wide}]}, ensure_ascii=False).encode()
    cases: list[Case] = [
        ("1,001 records", "POST", TOKENIZE, many_records, "alice"),
        ("1,001 tokens", "POST", DETOKENIZE, many_tokens, "alice"),
        ("a value of 4,097 bytes", "POST", TOKENIZE, big_value, "alice"),
        ("a value of 4,098 UTF-8 bytes", "POST", TOKENIZE, wide_value, "alice"),
    ]
    await assert_refused_and_nothing_changed(vault, cases, 413, "payload_too_large")
    # The limits themselves are allowed (each within the body limit of 1 MiB).
    most_records = json.dumps({"records": [{"ssn": f"v{i}"} for i in range(1000)]}).encode()
    assert (await vault.call("POST", "/v1/tokenize", most_records)).status == 200
    largest_value = json.dumps({"records": [{"ssn": "x" * 4096}]}).encode()
    assert (await vault.call("POST", "/v1/tokenize", largest_value)).status == 200


# -- 503 unavailable ----------------------------------------------------------------------------


async def test_503_unavailable_with_retry_after_when_too_few_replicas_answer(
    tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    """n1 of a 3-peer cluster whose other peers never run: W = R = 2 cannot be met."""
    async with trio.open_nursery() as nursery:
        alone = await start_vault(tmp_path / "cluster", nursery, nodes=3)
        try:
            for method, path, body in [
                ("POST", "/v1/tokenize", b'{"records": [{"ssn": "1"}]}'),
                ("POST", "/v1/detokenize", b'{"tokens": ["tok_' + b"A" * 32 + b'"]}'),
                ("GET", "/v1/epoch", b""),
                ("POST", "/v1/epoch/rotate", b""),
            ]:
                response = await alone.call(method, path, body)
                assert response.status == 503, (method, path, response.body)
                assert error_of(response)["code"] == "unavailable"
                assert dict(response.headers) == {"retry-after": "1"}
        finally:
            nursery.cancel_scope.cancel()
    alone.node.close()


# -- not errors ---------------------------------------------------------------------------------


async def test_records_without_a_configured_field_answer_200_unchanged_and_write_nothing(
    vault: Vault,
) -> None:
    """docs/api.md: answered at once, with the epoch the peer knows, without any replica."""
    before = vault.stored()
    body = b'{"records": [{"note": "left as is", "n": 1.5}, {}, {"SSN": 1, "ssn_": null}]}'
    response = await vault.call("POST", "/v1/tokenize", body)
    assert response.status == 200
    fields_left = ["SSN", "n", "note", "ssn_"]  # sorted, each once: none is configured
    assert json.loads(response.body) == {"epoch": 1, "fields_left": fields_left, **json.loads(body)}
    assert vault.stored() == before


async def test_rotate_with_an_empty_body_or_an_empty_object_rotates(vault: Vault) -> None:
    epochs = []
    for body in (b"", b"{}", b'{"expected_epoch": 2}', b'{"expected_epoch": 2, "other": 1}'):
        response = await vault.call("POST", "/v1/epoch/rotate", body)
        assert response.status == 200, body
        epochs.append((json.loads(response.body)["epoch"], json.loads(response.body)["rotated"]))
    assert epochs == [(2, True), (3, True), (3, False), (3, False)]
    highest = await vault.call("POST", "/v1/epoch/rotate", b'{"expected_epoch": %d}' % EPOCH_MAX)
    assert json.loads(highest.body) == {"owner": "alice", "epoch": 3, "rotated": False}


async def test_no_refused_request_is_logged_with_its_values(vault: Vault) -> None:
    for _, path, body in INVALID_BODIES:
        await vault.call("POST", path, body)
    text = vault.log.getvalue()
    assert "error" not in [json.loads(line)["level"] for line in text.splitlines()]
    assert "123456789" not in text and "4111" not in text


# -- the OpenAPI document -----------------------------------------------------------------------


async def test_openapi_json_is_served_without_a_key_and_is_the_document(vault: Vault) -> None:
    response = await vault.call("GET", "/v1/openapi.json", key=None)
    assert response.status == 200
    assert response.content_type == "application/json"
    assert response.body == COPY.read_bytes()
    assert json.loads(response.body) == load_source()


def documented_operations() -> set[tuple[str, str]]:
    """(METHOD, path template) of every endpoint heading of docs/api.md, the peer one aside."""
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    headings = re.findall(r"^### `(GET|POST|PUT|DELETE|PATCH) (/[^`]*)`", text, re.MULTILINE)
    return {(method, path) for method, path in headings if not path.startswith("/internal/")}


async def test_the_openapi_document_has_every_public_endpoint_and_the_api_serves_them(
    vault: Vault,
) -> None:
    document: dict[str, Any] = load_source()
    in_document = {
        (method.upper(), path)
        for path, operations in document["paths"].items()
        for method in operations
    }
    # docs/api.md says once that HEAD is answered wherever GET is; the document lists each.
    gets = {(method, path) for method, path in in_document if method == "GET"}
    assert {(m, p) for m, p in in_document if m == "HEAD"} == {("HEAD", p) for _, p in gets}
    assert {(m, p) for m, p in in_document if m != "HEAD"} == documented_operations()
    for path, operations in document["paths"].items():
        concrete = path.replace("{token}", "tok_x").replace("{owner}", "alice")
        methods = tuple(sorted(method.upper() for method in operations))
        assert vault.api.allowed_methods(concrete) == methods, path
    assert vault.api.allowed_methods("/internal/v1/messages") == ("POST",)
    assert vault.api.allowed_methods("/v1/nothing") == ()
