"""End-to-end: every malformed request of API.md's error table gets its documented status and
body, none gives a 500, and none changes stored data."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.e2e.test_cluster import stored_mappings

pytestmark = pytest.mark.e2e

MIB = 1024 * 1024


@pytest.fixture(scope="module")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory, tls_mode: bool) -> Iterator[Cluster]:
    running = Cluster(Path(tmp_path_factory.mktemp("errors")) / "cluster", tls=tls_mode)
    try:
        running.start_all()
        yield running
    finally:
        running.close()


def _cases(c: Cluster) -> list[tuple[str, str, str, dict[str, str], bytes, int, str]]:
    alice, bob, admin = c.headers("alice"), c.headers("bob"), c.admin_headers()
    big_value = "x" * (4 * 1024 + 1)
    return [
        ("malformed json", "POST", "/v1/tokenize", alice, b"{not json", 400, "invalid_request"),
        (
            "invalid utf-8",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": ["\xff"]}',
            400,
            "invalid_request",
        ),
        ("body not an object", "POST", "/v1/tokenize", alice, b"[]", 400, "invalid_request"),
        (
            "records not a list",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": {}}',
            400,
            "invalid_request",
        ),
        ("records missing", "POST", "/v1/tokenize", alice, b"{}", 400, "invalid_request"),
        (
            "record not an object",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [1]}',
            400,
            "invalid_request",
        ),
        (
            "configured field not a string",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"ssn": 123456789}]}',
            400,
            "invalid_request",
        ),
        (
            "configured field null",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"ssn": "1"}, {"ssn": null}]}',
            400,
            "invalid_request",
        ),
        (
            "NaN constant",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"n": NaN}]}',
            400,
            "invalid_request",
        ),
        (
            "lone surrogate in a configured field",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"ssn": "\\ud800"}]}',
            400,
            "invalid_request",
        ),
        (
            "empty records",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": []}',
            400,
            "invalid_request",
        ),
        (
            "empty tokens",
            "POST",
            "/v1/detokenize",
            alice,
            b'{"tokens": []}',
            400,
            "invalid_request",
        ),
        (
            "tokens not strings",
            "POST",
            "/v1/detokenize",
            alice,
            b'{"tokens": [1]}',
            400,
            "invalid_request",
        ),
        (
            "deeply nested",
            "POST",
            "/v1/tokenize",
            alice,
            b"[" * 100_000 + b"]" * 100_000,
            400,
            "invalid_request",
        ),
        (
            "no key",
            "POST",
            "/v1/tokenize",
            {},
            b'{"records": [{"ssn": "1"}]}',
            401,
            "unauthenticated",
        ),
        (
            "unknown key",
            "POST",
            "/v1/tokenize",
            {"Authorization": "Bearer nope"},
            b'{"records": [{"ssn": "1"}]}',
            401,
            "unauthenticated",
        ),
        (
            "wrong scheme",
            "GET",
            "/v1/epoch",
            {"Authorization": "Basic abc"},
            b"",
            401,
            "unauthenticated",
        ),
        ("owner key on admin", "GET", "/v1/admin/node", alice, b"", 403, "forbidden"),
        (
            "admin key on tokenize",
            "POST",
            "/v1/tokenize",
            admin,
            b'{"records": [{"ssn": "1"}]}',
            403,
            "forbidden",
        ),
        ("other owner's ring view", "GET", "/v1/ring/owners/alice", bob, b"", 403, "forbidden"),
        ("unknown route", "GET", "/v1/nothing-here", alice, b"", 404, "not_found"),
        ("token not visible", "GET", "/v1/tokens/tok_" + "B" * 32, alice, b"", 404, "not_found"),
        (
            "body over 1 MiB",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"note": "' + b"y" * MIB + b'"}]}',
            413,
            "payload_too_large",
        ),
        (
            "over 1,000 records",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [' + b",".join([b'{"ssn": "1"}'] * 1001) + b"]}",
            413,
            "payload_too_large",
        ),
        (
            "over 1,000 tokens",
            "POST",
            "/v1/detokenize",
            alice,
            b'{"tokens": [' + b",".join([b'"t"'] * 1001) + b"]}",
            413,
            "payload_too_large",
        ),
        (
            "value over 4 KiB",
            "POST",
            "/v1/tokenize",
            alice,
            b'{"records": [{"ssn": "' + big_value.encode() + b'"}]}',
            413,
            "payload_too_large",
        ),
        (
            "peer endpoint with an owner key",
            "POST",
            "/internal/v1/messages",
            alice,
            b"{}",
            401,
            "unauthenticated",
        ),
        *_strict_json_cases(alice),
    ]


def _strict_json_cases(
    alice: dict[str, str],
) -> list[tuple[str, str, str, dict[str, str], bytes, int, str]]:
    """Bodies a lenient parser took (issue 10): each is a 400 now, and nothing is written."""
    good = '{"records": [{"ssn": "strict"}]}'
    bodies = [
        ("a number out of range", b'{"records": [{"ssn": "strict", "note": 1e400}]}'),
        ("out of range, no configured field", b'{"records": [{"note": 1e400}]}'),
        ("utf-16", good.encode("utf-16")),
        ("utf-8 byte order mark", b"\xef\xbb\xbf" + good.encode()),
        ("a lone surrogate in another field", b'{"records": [{"note": "\\ud800"}]}'),
    ]
    cases = [
        (name, "POST", "/v1/tokenize", alice, body, 400, "invalid_request") for name, body in bodies
    ]
    cases += [
        (
            "rotate body of white space",
            "POST",
            "/v1/epoch/rotate",
            alice,
            b" \n",
            400,
            "invalid_request",
        ),
        (
            "expected_epoch null",
            "POST",
            "/v1/epoch/rotate",
            alice,
            b'{"expected_epoch": null}',
            400,
            "invalid_request",
        ),
        ("token path that does not decode", "GET", "/v1/tokens/%ff", alice, b"", 404, "not_found"),
    ]
    return cases


def test_405_names_the_methods_of_the_path_and_undecodable_token_paths_are_the_uniform_404(
    shared_cluster: Cluster,
) -> None:
    c = shared_cluster
    with httpx.Client(base_url=c.url("n2"), timeout=10.0, verify=c.verify) as http:
        for method, path, allowed in [
            ("GET", "/v1/tokenize", "POST"),
            ("PUT", "/v1/epoch", "GET, HEAD"),  # HEAD is answered wherever GET is
            ("DELETE", "/v1/tokens/tok_x", "GET, HEAD"),
            ("POST", "/healthz", "GET, HEAD"),
            ("HEAD", "/v1/tokenize", "POST"),
            ("GET", "/internal/v1/messages", "POST"),
        ]:
            answer = http.request(method, path)
            assert answer.status_code == 405, (method, path)
            assert answer.headers["allow"] == allowed, (method, path)
        alice = c.headers("alice")
        unknown = http.get("/v1/tokens/tok_" + "C" * 32, headers=alice)
        for path in ("/v1/tokens/%ff", "/v1/tokens/%C3%28", "/v1/tokens/%ff%2Fx", "/v1/tokens/%"):
            answer = http.get(path, headers=alice)
            assert (answer.status_code, answer.content) == (404, unknown.content), path
        assert unknown.status_code == 404


def test_every_documented_error_has_its_status_and_body_and_changes_nothing(
    shared_cluster: Cluster,
) -> None:
    """Runs last in this module: it stops the peers to read their stores."""
    c = shared_cluster
    good = httpx.post(
        c.url("n1") + "/v1/tokenize",
        headers=c.headers("alice"),
        json={"records": [{"ssn": "kept"}]},
        timeout=10,
        verify=c.verify,
    )
    assert good.status_code == 200
    token = good.json()["records"][0]["ssn"]
    with httpx.Client(timeout=10.0, verify=c.verify) as http:
        for name, method, path, headers, body, status, code in _cases(c):
            for peer in c.peer_ids:
                answer = http.request(method, c.url(peer) + path, headers=headers, content=body)
                assert answer.status_code == status, (name, answer.status_code, answer.text[:200])
                assert answer.headers["content-type"].startswith("application/json"), name
                error = answer.json()["error"]
                assert error["code"] == code, name
                assert isinstance(error["message"], str) and error["message"], name
                assert set(answer.json()) == {"error"} and set(error) == {"code", "message"}
    # The epoch did not move: no refused rotate rotated.
    epoch = httpx.get(
        c.url("n3") + "/v1/epoch", headers=c.headers("alice"), timeout=10, verify=c.verify
    )
    assert epoch.json()["epoch"] == 1
    # Nothing but the one good mapping was written anywhere, and it still reads back.
    answer = httpx.post(
        c.url("n2") + "/v1/detokenize",
        headers=c.headers("alice"),
        json={"tokens": [token]},
        timeout=10,
        verify=c.verify,
    )
    assert answer.json()["results"][0]["value"] == "kept"
    for peer in c.peer_ids:
        c.stop(peer)
    for stopped in c.init.peers:
        held = stored_mappings(stopped.data_dir)
        assert len(held) <= 1
    assert sum(len(stored_mappings(p.data_dir)) for p in c.init.peers) >= 2
    for peer in c.peer_ids:
        events = c.log_events(peer)
        # the one alarm: the peer endpoint tried with an owner's key (not a peer signature;
        # with TLS, refused first for coming without a peer certificate)
        alarms = [e for e in events if e.get("level") == "error"]
        reason = "unsigned" if c.ca_path is None else "no_certificate"
        assert [(e["event"], e["reason"]) for e in alarms] == [("peer_auth_refused", reason)]
        assert "kept" not in c.log(peer)
