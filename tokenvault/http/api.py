"""The public HTTP API of a peer (API.md) and its internal peer endpoint.

Rules:
- Every input is validated completely before anything is written: bad input gets its documented
  error and changes nothing.
- A body is strict UTF-8 JSON that its answer can carry back unchanged: no byte order mark, no
  UTF-16, no NaN or Infinity, no number out of range (1e400), no lone surrogate escape, no
  nesting deeper than JSON_DEPTH_MAX. Whatever is accepted therefore encodes again: no answer
  fails after a write.
- A path that exists answers another method with 405 and `Allow` (its methods); an unknown path
  404. A token path that does not decode is a token like any malformed one: the uniform 404.
  HEAD is routed as GET wherever GET is (same route, admission, handler and metrics label);
  the server (server.py) sends its status and headers, Content-Length included, without the
  body.
- Admission before reading: the route and the key are checked once, from the request's head
  (`admit`), before any byte of its body is read; only an authenticated peer request on the
  exact peer path may send a large body (PEER_BODY_BYTES_MAX), every other request at most
  PUBLIC_BODY_BYTES_MAX, and the routes that need no key none.
- Authentication is a dictionary lookup of the key's SHA-256, built once from the config. An
  owner key acts for that owner alone; the admin key acts for no owner. The key comes as
  `Authorization: Bearer <key>`, or, on the routes a browser reaches (BASIC_AUTH_ROUTES: /ui
  and what its page polls), as HTTP Basic credentials whose password is the key (the user
  name is ignored); a 401 on /ui carries a Basic challenge so that a browser asks for them.
  The internal endpoint takes only batches signed by another peer (http/peer_auth.py): the
  head is verified at admission (`_admit_peer`: with TLS on, a verified peer certificate
  first; then the signature, headers only), the body once read (`_verify_peer_body`); a
  refusal is a 401 and a rate-limited `peer_auth_refused` alarm, a batch that is malformed or
  does not fit the configuration a 400 and a rate-limited `peer_batch_refused` alarm; with
  TLS, a batch must name the certified peer as its source.
- A token that does not exist, belongs to another owner, or is malformed gets one and the same
  not-found answer: lookups are always made in the caller's own key space.
- Errors map to statuses in errors.py only; values and keys never reach a log line or a message.
"""

from __future__ import annotations

import binascii
import dataclasses
import functools
import hashlib
import time
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any, TypeVar

import msgspec

from tokenvault.config import OwnerConfig
from tokenvault.http.config_mismatch import ConfigMismatchAlarm
from tokenvault.http.errors import (
    ApiError,
    Forbidden,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    Unauthenticated,
    Unavailable,
    error_response,
    json_response,
)
from tokenvault.http.members_api import MembersApi
from tokenvault.http.peer_auth import (
    CLUSTER_FINGERPRINT_HEADER,
    PeerAlarm,
    PeerAuthenticator,
    PeerAuthError,
    PeerCredential,
    Refusal,
)
from tokenvault.http.peer_codec import CodecError
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH
from tokenvault.http.server import Admission, Request, RequestHead, Response
from tokenvault.http.ui import StatusPage
from tokenvault.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from tokenvault.node import Node, NotConfigured
from tokenvault.quorum.client_operations import (
    ClientAnswer,
    ClientOperation,
    Detokenize,
    Inspected,
    InspectOwner,
    LearnEpoch,
    RotateEpoch,
    Tokenize,
    Tokenized,
)
from tokenvault.quorum.effects import EpochDone, Failure, ReadDone
from tokenvault.quorum.messages import EPOCH_MAX, Ballot, EpochValue, Mapping
from tokenvault.ring.hash_ring import ring_hash
from tokenvault.tokens import derive_peer_key, hash_api_key, is_well_formed_token
from tokenvault.views import node_view, peer_views, render_metrics

# Body limits, granted at admission (before any byte of a body is read).
PUBLIC_BODY_BYTES_MAX = 1024 * 1024  # a request with an owner's or the admin key
PEER_BODY_BYTES_MAX = 32 * 1024 * 1024  # an authenticated peer batch on PEER_MESSAGES_PATH
KEYLESS_BODY_BYTES_MAX = 0  # the routes that need no key take no body
# Routes anyone may call: no key is looked at, and they take no body.
KEYLESS_ROUTES = frozenset({"healthz", "readyz", "metrics", "openapi"})
# Routes that also take the key as HTTP Basic credentials (a browser cannot send a Bearer key
# when it navigates): the status page and the admin JSON its script polls.
BASIC_AUTH_ROUTES = frozenset({"ui", "ring", "ring_owner", "admin_node", "admin_owner"})
BASIC_CHALLENGE = 'Basic realm="tokenvault", charset="UTF-8"'
RECORDS_MAX = 1_000
TOKENS_MAX = 1_000
VALUE_BYTES_MAX = 4 * 1024
JSON_DEPTH_MAX = 64  # the top-level object is depth 1
ADMIN = object()  # the admin principal: acts for no owner

Principal = OwnerConfig | object
_Answer = TypeVar("_Answer", Tokenized, ReadDone, EpochDone, Inspected)
RouteHandler = Callable[[Request, Principal | None, str], Awaitable[Response]]


_JSON_DECODER = msgspec.json.Decoder()


def parse_json_object(body: bytes) -> dict[str, Any]:
    """The body as a JSON object, refused unless its answer can carry it back (module rules).

    msgspec reads strict UTF-8 JSON (RFC 8259): it refuses a byte order mark, UTF-16, NaN and
    Infinity, lone surrogate escapes and control characters in strings, and numbers that do not
    fit a float (1e400) or an integer of 4,300 digits.
    """
    try:
        payload = _JSON_DECODER.decode(body)
    except msgspec.ValidationError:
        raise InvalidRequest("A number in the body is out of range.") from None
    except (msgspec.DecodeError, RecursionError):
        raise InvalidRequest("The body is not valid UTF-8 JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object.")
    if _nests_deeper(payload, JSON_DEPTH_MAX):
        raise InvalidRequest(f"The body nests deeper than {JSON_DEPTH_MAX} levels.")
    return payload


def _nests_deeper(payload: dict[str, Any], depth_max: int) -> bool:
    """Whether objects and arrays nest deeper than ``depth_max`` (``payload`` is depth 1).

    Level by level, without recursion: each container of the body is visited once. msgspec
    makes plain dicts and lists, so exact type checks suffice (and cost a fraction of isinstance).
    """
    level: list[Any] = [payload]
    depth = 1
    while level:
        if depth > depth_max:
            return True
        below: list[Any] = []
        for container in level:
            for child in container.values() if type(container) is dict else container:
                if type(child) in _CONTAINER_TYPES:
                    below.append(child)
        level = below
        depth += 1
    return False


_CONTAINER_TYPES = frozenset({dict, list})


def _bounded_list(payload: dict[str, Any], name: str, limit: int) -> list[Any]:
    items = payload.get(name)
    if not isinstance(items, list):
        raise InvalidRequest(f"'{name}' must be a list.")
    if not items:
        raise InvalidRequest(f"'{name}' must not be empty.")
    if len(items) > limit:
        raise PayloadTooLarge(f"'{name}' holds more than {limit:,} items.")
    return items


class PublicApi:
    def __init__(self, node: Node) -> None:
        self._node = node
        config = node.config
        self._principals: dict[str, Principal] = {o.key_sha256: o for o in config.owners}
        self._principals[config.admin_key_sha256] = ADMIN
        self._peer_auth = PeerAuthenticator(
            local_peer=node.peer_id,
            keys={p.id: derive_peer_key(config.secret, p.id) for p in config.peers},
            key_of=functools.partial(derive_peer_key, config.secret),
        )
        self._peer_auth_alarm = PeerAlarm(
            event="peer_auth_refused",
            counter="tokenvault_peer_auth_refused_total",
            help_text="Peer batches refused as unauthenticated (401), by reason.",
            log=node.log,
            metrics=node.metrics,
            reasons=[refusal.value for refusal in Refusal],
        )
        self._peer_batch_alarm = PeerAlarm(
            event="peer_batch_refused",
            counter="tokenvault_peer_batches_refused_total",
            help_text="Authenticated peer batches refused as invalid (400), by reason.",
            log=node.log,
            metrics=node.metrics,
            reasons=_BATCH_REFUSALS,
        )
        self._peer_certificate_required = node.config.tls is not None
        self._config_mismatch = ConfigMismatchAlarm(
            ours=node.cluster_fingerprint, log=node.log, metrics=node.metrics
        )
        self._exact: dict[tuple[str, str], tuple[str, RouteHandler]] = {
            ("GET", "/healthz"): ("healthz", self._healthz),
            ("GET", "/readyz"): ("readyz", self._readyz),
            ("GET", "/metrics"): ("metrics", self._metrics),
            ("POST", "/v1/tokenize"): ("tokenize", self._tokenize),
            ("POST", "/v1/detokenize"): ("detokenize", self._detokenize),
            ("GET", "/v1/epoch"): ("epoch", self._epoch),
            ("POST", "/v1/epoch/rotate"): ("rotate", self._rotate),
            ("GET", "/v1/ring"): ("ring", self._ring),
            ("GET", "/v1/admin/node"): ("admin_node", self._admin_node),
            ("GET", "/v1/admin/members"): ("admin_members", self._admin_members),
            ("POST", "/v1/admin/members"): ("admin_members_change", self._admin_members_change),
            ("GET", "/v1/openapi.json"): ("openapi", self._openapi),
            ("GET", "/ui"): ("ui", self._ui),
            ("POST", PEER_MESSAGES_PATH): ("peer_messages", self._peer_messages),
        }
        self._exact_paths: dict[str, tuple[str, ...]] = {}
        for method, path in sorted(self._exact):
            also_head = ("HEAD",) if method == "GET" else ()
            self._exact_paths[path] = (*self._exact_paths.get(path, ()), method, *also_head)
        self._prefixed: tuple[tuple[str, str, str, RouteHandler], ...] = (
            ("GET", "/v1/tokens/", "token", self._get_token),
            ("GET", "/v1/ring/owners/", "ring_owner", self._ring_owner),
            ("GET", "/v1/admin/owners/", "admin_owner", self._admin_owner),
        )
        # Read once at start: the OpenAPI document (docs/openapi.yaml) as the package ships it.
        openapi = resources.files("tokenvault.http") / "openapi.json"
        self._openapi_json = openapi.read_bytes()
        self._status_page = StatusPage.load()
        self._members = MembersApi(node)
        metrics = node.metrics
        metrics.counter(
            "tokenvault_http_requests_total", "HTTP requests by route and status.", labelled=True
        )
        metrics.histogram(
            "tokenvault_http_request_seconds", "HTTP request latency by route and status."
        )

    # -- admission -----------------------------------------------------------------------------

    def admit(self, head: RequestHead) -> Admission | Response:
        """Route and authenticate from the head alone, before any byte of the body is read.

        An unknown route (404), a wrong method (405) or a missing or unknown key (401) is
        refused here, its body never read. An admitted request may send PEER_BODY_BYTES_MAX
        as an authenticated peer batch, nothing where no key is needed, PUBLIC_BODY_BYTES_MAX
        else; its route's handler then answers it with the principal found here.
        """
        route, handler, argument = self._route(head)
        try:
            if handler is None:
                raise route_error(route, self.allowed_methods(head.path))
            principal: Principal | None = None
            if route in KEYLESS_ROUTES:
                body_bytes_max = KEYLESS_BODY_BYTES_MAX
            elif route == "peer_messages":
                principal = self._admit_peer(head)
                body_bytes_max = PEER_BODY_BYTES_MAX
            else:
                principal = self._authenticate(head, basic=route in BASIC_AUTH_ROUTES)
                body_bytes_max = PUBLIC_BODY_BYTES_MAX
        except Unauthenticated as error:
            if route == "ui":  # a browser asks its user for the key, then sends it again
                error.challenge = BASIC_CHALLENGE
            response = error_response(error)
            self._count(route, response.status, 0.0)
            return response
        except ApiError as error:
            response = error_response(error)
            self._count(route, response.status, 0.0)
            return response
        answer = functools.partial(self._answer, route, handler, principal, argument)
        return Admission(body_bytes_max=body_bytes_max, handler=answer)

    async def handle(self, request: Request) -> Response:
        """One whole request in process, as the server takes it: admission from its head, the
        granted body limit, then its handler (tests, and callers without a socket)."""
        verdict = self.admit(request.head)
        if isinstance(verdict, Response):
            return verdict
        if len(request.body) > verdict.body_bytes_max:
            return error_response(PayloadTooLarge("The body is over this request's limit."))
        return await verdict.handler(request)

    async def _answer(
        self,
        route: str,
        handler: RouteHandler,
        principal: Principal | None,
        argument: str,
        request: Request,
    ) -> Response:
        started = time.perf_counter()
        try:
            response = await handler(request, principal, argument)
        except ApiError as error:
            response = error_response(error)
        self._count(route, response.status, time.perf_counter() - started)
        return response

    def _count(self, route: str, status: int, seconds: float) -> None:
        metrics = self._node.metrics
        labels = (("route", route), ("status", str(status)))
        metrics.inc("tokenvault_http_requests_total", labels)
        metrics.observe("tokenvault_http_request_seconds", seconds, labels)

    def _route(self, head: RequestHead) -> tuple[str, RouteHandler | None, str]:
        method = "GET" if head.method == "HEAD" else head.method  # HEAD: GET without a body
        found = self._exact.get((method, head.path))
        if found is not None:
            return found[0], found[1], ""
        if head.path in self._exact_paths:
            return "method_not_allowed", None, ""
        for route_method, prefix, name, handler in self._prefixed:
            if head.path.startswith(prefix):
                if method != route_method:
                    return "method_not_allowed", None, ""
                return name, handler, head.path[len(prefix) :]
        return "unknown", None, ""

    def allowed_methods(self, path: str) -> tuple[str, ...]:
        """The methods `path` answers (its 405's `Allow`); () for a path that is not routed."""
        exact = self._exact_paths.get(path)
        if exact is not None:
            return exact
        for method, prefix, _, _ in self._prefixed:
            if path.startswith(prefix):
                return (method, "HEAD") if method == "GET" else (method,)
        return ()

    def _authenticate(self, head: RequestHead, *, basic: bool = False) -> Principal:
        principal = self._principals.get(hash_api_key(_presented_key(head, basic=basic)))
        if principal is None:
            raise Unauthenticated("The key is not known.")
        return principal

    def _admit_peer(self, head: RequestHead) -> PeerCredential:
        """That a request on PEER_MESSAGES_PATH comes from another peer of this cluster, from
        its head alone: with TLS on, a verified peer certificate; then the batch's signature
        (headers only: the body, read next, is checked against it by `_verify_peer_body`), and
        that the sender read this peer's cluster configuration (its fingerprint)."""
        if self._peer_certificate_required and head.peer_certificate_id is None:
            error = PeerAuthError(Refusal.NO_CERTIFICATE)
            raise self._peer_refused(head.client, error, "certificate")
        try:
            credential = self._peer_auth.verify_head(
                head.headers, method=head.method, path=head.path
            )
        except PeerAuthError as error:
            raise self._peer_refused(head.client, error, "head") from None
        fingerprint = head.headers.get(CLUSTER_FINGERPRINT_HEADER, "")
        if fingerprint != self._node.cluster_fingerprint:
            self._config_mismatch.refused(
                credential.sender, head.client.rpartition(":")[0], fingerprint
            )
            raise InvalidRequest(
                "The batch comes from a peer whose cluster configuration differs from this "
                "peer's (peers, quorums, vnodes or owners' fields)."
            )
        return credential

    # -- owner endpoints -----------------------------------------------------------------------

    async def _tokenize(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        records = _bounded_list(parse_json_object(request.body), "records", RECORDS_MAX)
        # Validate everything first: (record index, field, value) of every configured field.
        sensitive: list[tuple[int, str, str]] = []
        named: set[str] = set()  # every field name of every record: fields_left is the rest
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise InvalidRequest("Every record must be a JSON object.")
            named.update(record)
            for name in owner.fields.intersection(record):
                value = record[name]
                if not isinstance(value, str):
                    raise InvalidRequest(
                        f"The value of the configured field '{name}' must be a string."
                    )
                if len(value.encode()) > VALUE_BYTES_MAX:  # no lone surrogate: parsed strictly
                    raise PayloadTooLarge(f"A value of '{name}' is over {VALUE_BYTES_MAX} bytes.")
                sensitive.append((index, name, value))
        answer = await self._perform(
            Tokenize(
                op_id=self._node.new_request_id(),
                owner=owner.id,
                items=tuple((name, value) for _, name, value in sensitive),
            ),
            Tokenized,
        )
        assert answer.epoch is not None
        answered = [dict(record) for record in records]
        for token, (index, name, _) in zip(answer.tokens, sensitive, strict=True):
            answered[index][name] = token
        fields_left = sorted(named.difference(owner.fields))
        return json_response(
            200, {"epoch": answer.epoch.epoch, "fields_left": fields_left, "records": answered}
        )

    async def _detokenize(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        tokens = _bounded_list(parse_json_object(request.body), "tokens", TOKENS_MAX)
        if not all(isinstance(t, str) for t in tokens):
            raise InvalidRequest("Every token must be a string.")
        found = await self._lookup(request, owner, tokens)
        results: list[dict[str, Any]] = []
        for token in tokens:
            mapping = found.get(token)
            if mapping is None:
                results.append({"token": token, "found": False})
            else:
                results.append(
                    {
                        "token": token,
                        "found": True,
                        "value": mapping.value,
                        "field": mapping.field,
                        "epoch": mapping.epoch,
                    }
                )
        return json_response(200, {"results": results})

    async def _get_token(
        self, request: Request, principal: Principal | None, token: str
    ) -> Response:
        owner = _owner_of(principal)
        mapping = (await self._lookup(request, owner, [token])).get(token)
        if mapping is None:
            raise NotFound("No such token.")
        return json_response(
            200,
            {
                "token": token,
                "value": mapping.value,
                "field": mapping.field,
                "epoch": mapping.epoch,
            },
        )

    async def _lookup(
        self, request: Request, owner: OwnerConfig, tokens: list[str]
    ) -> dict[str, Mapping]:
        wanted = [t for t in dict.fromkeys(tokens) if is_well_formed_token(t)]
        if not wanted:
            return {}
        operation = Detokenize(
            op_id=self._node.new_request_id(), owner=owner.id, tokens=tuple(wanted)
        )
        answer = await self._perform(operation, ReadDone)
        return {m.token: m for m in answer.mappings if m is not None}

    async def _epoch(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        operation = LearnEpoch(op_id=self._node.new_request_id(), owner=owner.id)
        answer = await self._perform(operation, EpochDone)
        assert answer.value is not None
        return json_response(200, {"owner": owner.id, "epoch": answer.value.epoch})

    async def _rotate(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        expected: int | None = None
        if request.body:  # only an empty body means "no body": white space is not JSON
            payload = parse_json_object(request.body)
            if "expected_epoch" in payload:
                expected = payload["expected_epoch"]
                if type(expected) is not int or not 1 <= expected <= EPOCH_MAX:
                    raise InvalidRequest(
                        f"'expected_epoch' must be a positive integer (at most {EPOCH_MAX:,})."
                    )
        operation = RotateEpoch(
            op_id=self._node.new_request_id(),
            owner=owner.id,
            expected_epoch=expected,
            requested_at_s=time.time(),
        )
        answer = await self._perform(operation, EpochDone)
        assert answer.value is not None
        return json_response(
            200, {"owner": owner.id, "epoch": answer.value.epoch, "rotated": answer.rotated}
        )

    # -- inspection ----------------------------------------------------------------------------

    async def _ring(self, request: Request, principal: Principal | None, _: str) -> Response:
        node = self._node
        quorum, ring = node.config.quorum, node.core.membership
        return json_response(
            200,
            {
                "peer": node.peer_id,
                "version": ring.digest(),
                "replicas": quorum.replica_count,
                "write_quorum": quorum.write_quorum,
                "read_quorum": quorum.read_quorum,
                "vnodes_per_peer": ring.vnodes_per_peer,
                "peers": peer_views(node),
            },
        )

    async def _ring_owner(
        self, request: Request, principal: Principal | None, owner_id: str
    ) -> Response:
        if principal is not ADMIN and (
            not isinstance(principal, OwnerConfig) or principal.id != owner_id
        ):
            raise Forbidden("Only the admin key or the owner's own key may see this owner.")
        if self._node.config.owner(owner_id) is None:
            raise NotFound("No such owner.")
        node = self._node
        membership = node.core.membership
        addresses = {m.id: m.address for m in (*membership.members, *membership.previous)}
        return json_response(
            200,
            {
                "owner": owner_id,
                "position": ring_hash(owner_id),
                "ring_version": membership.digest(),
                "preference_list": [
                    {"id": p, "address": addresses[p]} for p in node.core.preference_list(owner_id)
                ],
            },
        )

    async def _admin_node(self, request: Request, principal: Principal | None, _: str) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        return json_response(200, node_view(self._node))

    async def _admin_members(
        self, request: Request, principal: Principal | None, _: str
    ) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        return self._members.show()

    async def _admin_members_change(
        self, request: Request, principal: Principal | None, _: str
    ) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may change the ring.")
        return await self._members.change(parse_json_object(request.body))

    async def _admin_owner(
        self, request: Request, principal: Principal | None, owner_id: str
    ) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        if self._node.config.owner(owner_id) is None:
            raise NotFound("No such owner.")
        operation = InspectOwner(op_id=self._node.new_request_id(), owner=owner_id)
        views = (await self._perform(operation, Inspected)).views
        replicas: list[dict[str, Any]] = []
        for peer in self._node.core.preference_list(owner_id):
            view = views.get(peer)
            if view is None:
                replicas.append({"peer": peer, "reachable": False})
                continue
            replicas.append(
                {
                    "peer": peer,
                    "reachable": True,
                    "active_epoch": view.decided.epoch,
                    "active_epoch_id": _epoch_value_id(view.decided),
                    "token_count": view.token_count,
                    "digest": view.digest,
                    "complete": view.complete,
                    "paxos": {
                        "decided_epoch": view.decided.epoch,
                        "highest_accepted_slot": view.accepted_slot,
                        "next_slot": view.decided.epoch + 1,
                        "next_slot_promised": _ballot_text(view.next_slot_promised),
                        "next_slot_accepted": _ballot_text(view.next_slot_accepted),
                    },
                }
            )
        reachable = [r for r in replicas if r["reachable"]]
        # Epochs agree when every replica holds the same decided value, not just the same number.
        epochs_agree = len({(r["active_epoch"], r["active_epoch_id"]) for r in reachable}) <= 1
        converged = (
            len(reachable) == len(replicas)
            and epochs_agree
            and all(
                (r["digest"], r["complete"]) == (reachable[0]["digest"], True) for r in reachable
            )
        )
        return json_response(
            200,
            {
                "owner": owner_id,
                "replicas": replicas,
                "converged": converged,
                "epochs_agree": epochs_agree and len(reachable) == len(replicas),
            },
        )

    async def _healthz(self, request: Request, principal: Principal | None, _: str) -> Response:
        # Liveness: 200 while the process answers; "status" says whether it serves yet
        # (serving, starting or recovering: Node.service_state), not whether it is ready.
        node = self._node
        return json_response(200, {"status": node.service_state(), "peer": node.peer_id})

    async def _readyz(self, request: Request, principal: Principal | None, _: str) -> Response:
        """200 while the peer serves, its store takes writes and it sees a write quorum of every
        owner's replicas; else 503 in the error envelope, with the reason (Node.readiness)
        beside it and a sentence saying what it means."""
        readiness = self._node.readiness()
        if readiness.ready:
            return json_response(200, {"ready": True, "peer": self._node.peer_id})
        detail = _NOT_READY_TEXT.get(readiness.reason, readiness.reason)
        error = Unavailable(f"This peer is not ready: {detail}.")
        body = {
            "error": {"code": error.code, "message": error.message},
            "ready": False,
            "reason": readiness.reason,
            "peer": self._node.peer_id,
        }
        retry_after = (("retry-after", str(error.retry_after_s)),)
        return dataclasses.replace(json_response(error.status, body), headers=retry_after)

    async def _metrics(self, request: Request, principal: Principal | None, _: str) -> Response:
        body = render_metrics(self._node).encode()
        return Response(status=200, body=body, content_type=METRICS_CONTENT_TYPE)

    async def _openapi(self, request: Request, principal: Principal | None, _: str) -> Response:
        return Response(status=200, body=self._openapi_json)

    async def _ui(self, request: Request, principal: Principal | None, _: str) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        return self._status_page.response

    # -- peers ---------------------------------------------------------------------------------

    def _verify_peer_body(self, request: Request, credential: PeerCredential) -> None:
        """A peer batch's body, once read: the one its head signed (its sequence is spent)."""
        try:
            self._peer_auth.verify_body(credential, request.body)
        except PeerAuthError as error:
            raise self._peer_refused(request.client, error, "body") from None

    def _peer_refused(self, client: str, error: PeerAuthError, where: str) -> Unauthenticated:
        self._peer_auth_alarm.raise_alarm(
            reason=error.reason.value,
            sender=error.claimed_sender,
            client=client.rpartition(":")[0],
            where=where,
        )
        return Unauthenticated(str(error))

    async def _peer_messages(
        self, request: Request, principal: Principal | None, _: str
    ) -> Response:
        assert isinstance(principal, PeerCredential)  # _admit_peer verified the head
        self._verify_peer_body(request, principal)
        try:
            await self._node.receive_peer_batch(
                request.body, principal, certified_source=request.peer_certificate_id
            )
        except PeerAuthError as error:
            raise self._peer_refused(request.client, error, "source") from None
        except CodecError as error:
            self._peer_batch_alarm.raise_alarm(
                reason="not_configured" if isinstance(error, NotConfigured) else "malformed",
                sender=principal.sender,
                client=request.client.rpartition(":")[0],
                where=str(error),
            )
            raise InvalidRequest(str(error)) from None
        return Response(status=204)

    # -- helpers -------------------------------------------------------------------------------

    async def _perform(self, operation: ClientOperation, kind: type[_Answer]) -> _Answer:
        """Runs a client operation on this peer; a failed one is a 503 naming why."""
        answer: ClientAnswer = await self._node.perform(operation)
        assert isinstance(answer, kind)
        if answer.failure is Failure.RECOVERING and self._node.service_state() == "starting":
            raise Unavailable(_STARTING_TEXT)
        if answer.failure is not None:
            raise Unavailable(_FAILURE_TEXT[answer.failure])
        return answer


def _epoch_value_id(value: EpochValue) -> str:
    """12 hex digits naming one decided epoch value (its salt stays out of the view)."""
    identity = f"{value.epoch}\x00{value.salt}\x00{value.requested_by}".encode()
    return hashlib.sha256(identity).hexdigest()[:12]


_BATCH_REFUSALS = ("malformed", "not_configured")
_FAILURE_TEXT = {
    Failure.QUORUM_TIMEOUT: "Too few replicas answered in time; nothing was claimed.",
    Failure.INTEGRITY_CONFLICT: (
        "Replicas disagree on a mapping; the conflict was logged for an operator."
    ),
    Failure.OVERLOADED: "Too few replicas answered in time; nothing was claimed.",
    Failure.FENCED: "Too few replicas answered in time; nothing was claimed.",
    Failure.CONTENDED: "Concurrent epoch changes kept colliding; retry the request.",
    Failure.EPOCHS_EXHAUSTED: (
        f"This owner is at the last epoch ({EPOCH_MAX:,}): it cannot rotate again; its "
        "tokens still work."
    ),
    Failure.STORE_FAILED: "This peer's store failed; try another peer or retry later.",
    Failure.INTERNAL_ERROR: "This peer failed an internal check (logged); try another peer.",
    Failure.RECOVERING: (
        "This peer is recovering a lost store and serves no request yet; try another peer."
    ),
    Failure.NOT_A_MEMBER: (
        "This peer is not a member of the ring (it is joining, or it was removed); try "
        "another peer."
    ),
}
# RECOVERING's answer while the peer has not yet heard whether its empty store is new.
_STARTING_TEXT = (
    "This peer has just started on an empty store and waits for its peers to answer; it serves "
    "no request yet; try another peer."
)
# /readyz's sentence per Readiness.reason (the reason itself is in the answer beside it).
_NOT_READY_TEXT = {
    "starting": (
        "it started on an empty store and waits for its peers to say whether it is new or "
        "must recover lost data (a heartbeat or two)"
    ),
    "recovering": "it is recovering a lost store from its replicas",
    "disk_full": "its disk is full (disk_full); it retries every second",
    "store_failing": "its store fails to write (store_failing)",
    "no_write_quorum": (
        "fewer than W replicas of an owner are up as this peer sees them (no_write_quorum)"
    ),
}


def _ballot_text(ballot: Ballot | None) -> str | None:
    return None if ballot is None or ballot.round == 0 else f"{ballot.round}.{ballot.peer}"


def _owner_of(principal: Principal | None) -> OwnerConfig:
    if isinstance(principal, OwnerConfig):
        return principal
    raise Forbidden("The admin key acts for no owner; use an owner's key.")


def _presented_key(head: RequestHead, *, basic: bool) -> str:
    """The key of `Authorization: Bearer <key>`, or with ``basic`` also the password of
    `Authorization: Basic <base64 of user:password>` (RFC 7617); never logged."""
    scheme, _, credentials = head.headers.get("authorization", "").partition(" ")
    credentials = credentials.strip()
    scheme = scheme.lower()
    if scheme == "bearer" and credentials:
        return credentials
    if basic and scheme == "basic" and credentials:
        try:
            decoded = binascii.a2b_base64(credentials, strict_mode=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise Unauthenticated("The Basic credentials are not base64 of UTF-8.") from None
        _, colon, key = decoded.partition(":")
        if colon and key:
            return key
    if basic:
        raise Unauthenticated(
            "Send 'Authorization: Bearer <key>', or Basic credentials with the key as password."
        )
    raise Unauthenticated("Send 'Authorization: Bearer <key>'.")


def route_error(route: str, allowed_methods: tuple[str, ...] = ()) -> ApiError:
    if route == "method_not_allowed":
        return MethodNotAllowed(allowed_methods=allowed_methods)
    return NotFound("No such route.")
