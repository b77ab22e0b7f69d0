"""What operators and browsers see of a peer (issue 13): HEAD wherever GET is, the status page
and its credentials (Bearer and Basic), `fields_left` in the tokenize answer, and honest
/healthz and /readyz wording for a peer that just started. A real one-peer node (LevelDB in a
temporary directory) behind PublicApi, called directly or behind the real server on a loopback
port (HEAD's framing is the server's).
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
import trio

from tests.http.test_api_inputs import Vault, error_of, start_vault
from tests.http.test_api_inputs import vault as vault  # the fixture: a running one-peer node
from tests.http.test_server import read_until_eof, running_server, split_response
from tokenvault.http.api import BASIC_CHALLENGE
from tokenvault.http.server import Request, RequestHead, Response
from tokenvault.http.ui import content_security_policy


def basic(key: str, user: str = "admin") -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{user}:{key}".encode()).decode()}


async def call(vault: Vault, method: str, path: str, headers: dict[str, str]) -> Response:
    head = RequestHead(method=method, path=path, query="", headers=headers, client="127.0.0.1:1")
    return await vault.api.handle(Request(head=head, body=b""))


def requests_counted(vault: Vault, route: str, status: int) -> float:
    pattern = rf'^tokenvault_http_requests_total{{route="{route}",status="{status}"}} (\S+)$'
    found = re.search(pattern, vault.node.metrics.render(), re.MULTILINE)
    return 0.0 if found is None else float(found.group(1))


# -- HEAD ---------------------------------------------------------------------------------------


async def exchange_head_then_get(port: int, path: str, headers: bytes = b"") -> list[bytes]:
    """HEAD then GET of `path`, pipelined on one connection: the raw bytes of both answers,
    split where the first one's head ends (a HEAD answer has no body, whatever its length)."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        request = b"%s " + path.encode() + b" HTTP/1.1\r\nhost: x\r\n" + headers
        await stream.send_all(
            request % b"HEAD" + b"\r\n" + request % b"GET" + b"connection: close\r\n\r\n"
        )
        raw = await read_until_eof(stream)
    first_end = raw.index(b"\r\n\r\n") + 4
    return [raw[:first_end], raw[first_end:]]


@pytest.mark.parametrize(
    ("path", "who", "status"),
    [
        ("/healthz", None, 200),
        ("/readyz", None, 200),
        ("/v1/openapi.json", None, 200),
        ("/ui", "admin", 200),
        ("/ui", None, 401),
        ("/v1/epoch", "alice", 200),
        ("/v1/tokens/tok_nothing", "alice", 404),
        ("/v1/admin/node", "alice", 403),
    ],
)
async def test_head_answers_the_get_status_and_headers_without_a_body(
    vault: Vault, path: str, who: str | None, status: int
) -> None:
    credential = b"" if who is None else b"authorization: Bearer %s\r\n" % vault.keys[who].encode()
    async with running_server(vault.api) as port:  # the API is the server's gate
        head_answer, get_answer = await exchange_head_then_get(port, path, credential)
    head_status, head_headers, head_body = split_response(head_answer)
    get_status, get_headers, get_body = split_response(get_answer)
    assert head_status == get_status == status
    assert head_body == b""  # the GET's answer follows the HEAD's head at once
    assert get_headers.pop("connection") == "close"
    assert head_headers == get_headers  # Content-Length included
    assert int(head_headers["content-length"]) == len(get_body) > 0


async def test_head_is_counted_with_its_route_and_refused_where_get_is_not_allowed(
    vault: Vault,
) -> None:
    before = requests_counted(vault, "healthz", 200)
    assert (await call(vault, "HEAD", "/healthz", {})).status == 200
    assert requests_counted(vault, "healthz", 200) == before + 1
    refused = await vault.call("HEAD", "/v1/tokenize")
    assert refused.status == 405 and dict(refused.headers) == {"allow": "POST"}
    allowed = await vault.call("DELETE", "/v1/tokens/tok_x")
    assert dict(allowed.headers) == {"allow": "GET, HEAD"}


# -- /ui and its credentials --------------------------------------------------------------------


async def test_ui_takes_the_admin_key_as_bearer_or_basic_password_with_any_user(
    vault: Vault,
) -> None:
    admin = vault.keys["admin"]
    for headers in (
        {"authorization": f"Bearer {admin}"},
        basic(admin),
        basic(admin, user=""),
        basic(admin, user="someone élse"),
        {"authorization": "basic " + base64.b64encode(f"x:{admin}".encode()).decode()},
    ):
        page = await call(vault, "GET", "/ui", headers)
        assert page.status == 200, headers
        assert page.content_type == "text/html; charset=utf-8"
        assert page.body.startswith(b"<!DOCTYPE html>")
        policy = dict(page.headers)["content-security-policy"]
        assert policy == content_security_policy(page.body.decode())
        assert dict(page.headers)["cache-control"] == "no-store"
    # The page holds no key: it fetches what it shows with the browser's credentials.
    assert admin.encode() not in page.body
    assert b"http://" not in page.body.replace(b"http://www.w3.org/2000/svg", b"")


async def test_ui_without_or_with_a_wrong_key_is_401_with_a_basic_challenge(vault: Vault) -> None:
    admin = vault.keys["admin"]
    for headers in (
        {},
        basic("tv_" + "x" * 43),
        basic(admin[:-1]),
        {"authorization": "Basic " + base64.b64encode(admin.encode()).decode()},  # no colon
        {"authorization": "Basic not-base64!"},
        {"authorization": "Basic " + base64.b64encode(b"admin:\xff").decode()},  # not UTF-8
        {"authorization": "Basic"},
        {"authorization": f"Token {admin}"},
    ):
        refused = await call(vault, "GET", "/ui", headers)
        assert refused.status == 401, headers
        assert error_of(refused)["code"] == "unauthenticated"
        assert dict(refused.headers) == {"www-authenticate": BASIC_CHALLENGE}
        assert admin.encode() not in refused.body
    assert BASIC_CHALLENGE.startswith('Basic realm="tokenvault"')


async def test_an_owner_key_gets_403_on_ui_and_the_admin_endpoints_bearer_or_basic(
    vault: Vault,
) -> None:
    alice = vault.keys["alice"]
    for path in ("/ui", "/v1/admin/node", "/v1/admin/owners/alice"):
        for headers in ({"authorization": f"Bearer {alice}"}, basic(alice)):
            refused = await call(vault, "GET", path, headers)
            assert refused.status == 403, (path, headers)
            assert error_of(refused)["code"] == "forbidden"


async def test_basic_credentials_work_on_what_the_page_polls_and_nowhere_else(
    vault: Vault,
) -> None:
    admin, alice = basic(vault.keys["admin"]), basic(vault.keys["alice"])
    for path in ("/v1/ring", "/v1/ring/owners/alice", "/v1/admin/node", "/v1/admin/owners/alice"):
        answer = await call(vault, "GET", path, admin)
        assert answer.status == 200, (path, answer.body)
    wrong = await call(vault, "GET", "/v1/admin/node", basic("tv_" + "y" * 43))
    assert wrong.status == 401 and dict(wrong.headers) == {}  # no challenge: JSON clients
    # Owner endpoints take Bearer only: Basic is for a browser's view of the cluster.
    for method, path in (("GET", "/v1/epoch"), ("GET", "/v1/tokens/tok_x")):
        refused = await call(vault, method, path, alice)
        assert refused.status == 401, path
        assert "Bearer" in error_of(refused)["message"]


def test_the_content_security_policy_allows_exactly_the_inline_blocks() -> None:
    document = "<!-- a <style> --><style>a{}</style><script>go()</script><script>more()</script>"
    policy = content_security_policy(document)
    assert "default-src 'none'" in policy and "connect-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy and "unsafe-inline" not in policy
    assert policy.count("'sha256-") == 3
    assert policy == content_security_policy(document.replace("<!-- a <style> -->", ""))
    assert "script-src 'none'" in content_security_policy("<p>no script</p>")


# -- fields_left --------------------------------------------------------------------------------


async def test_tokenize_names_the_fields_it_left_as_given(vault: Vault) -> None:
    records = [
        {"ssn": "123-45-6789", "note": "x", "snn": "555-1234"},
        {"email": "a@example.com", "note": 2},
        {},
    ]
    answer = await vault.call("POST", "/v1/tokenize", json.dumps({"records": records}).encode())
    assert answer.status == 200
    payload = json.loads(answer.body)
    assert payload["fields_left"] == ["note", "snn"]  # sorted, each once
    assert payload["records"][0]["snn"] == "555-1234"  # left in clear, and named above
    assert b"555-1234" not in json.dumps(payload["fields_left"]).encode()
    every = await vault.call("POST", "/v1/tokenize", b'{"records": [{"ssn": "1", "email": "2"}]}')
    assert json.loads(every.body)["fields_left"] == []


# -- /healthz and /readyz of a peer that just started -------------------------------------------


async def test_a_fresh_peer_that_has_not_heard_from_its_peers_says_it_is_starting(
    tmp_path: Path,
) -> None:
    """n1 of a 3-peer cluster whose other peers never run: its empty store stays undecided.
    Nothing it says may claim it lost a store (it may be brand new)."""
    async with trio.open_nursery() as nursery:
        alone = await start_vault(tmp_path / "cluster", nursery, nodes=3)
        try:
            health = await alone.call("GET", "/healthz", key=None)
            assert json.loads(health.body) == {"status": "starting", "peer": "n1"}
            ready = await alone.call("GET", "/readyz", key=None)
            assert ready.status == 503
            payload = json.loads(ready.body)
            assert (payload["ready"], payload["reason"]) == (False, "starting")
            tokenize = await alone.call("POST", "/v1/tokenize", b'{"records": [{"ssn": "1"}]}')
            assert tokenize.status == 503
            for message in (payload["error"]["message"], error_of(tokenize)["message"]):
                assert "empty store" in message and "lost store" not in message, message
        finally:
            nursery.cancel_scope.cancel()
    alone.node.close()
