"""The public HTTP API of a peer (API.md) and its internal peer endpoint.

Rules:
- Every input is validated completely before anything is written: bad input gets its documented
  error and changes nothing.
- Authentication is a dictionary lookup of the key's SHA-256, built once from the config. An
  owner key acts for that owner alone; the admin key acts for no owner; the peer key (derived
  from the cluster secret) opens only the internal endpoint.
- A token that does not exist, belongs to another owner, or is malformed gets one and the same
  not-found answer: lookups are always made in the caller's own key space.
- Errors map to statuses in errors.py only; values and keys never reach a log line or a message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from tokenvault.config import OwnerConfig
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
from tokenvault.http.peer_codec import CodecError
from tokenvault.http.peer_transport import CLUSTER_FINGERPRINT_HEADER, PEER_MESSAGES_PATH
from tokenvault.http.server import Request, Response
from tokenvault.node import Node, OperationFailed
from tokenvault.quorum.effects import Failure
from tokenvault.quorum.messages import Ballot, EpochValue, Mapping
from tokenvault.quorum.records import StorageCorrupt
from tokenvault.store.storage import StorageError
from tokenvault.tokens import TokenMaker, derive_epoch_key, hash_api_key, is_well_formed_token

RECORDS_MAX = 1_000
TOKENS_MAX = 1_000
VALUE_BYTES_MAX = 4 * 1024
ADMIN = object()  # the admin principal: acts for no owner
TOKENIZE_ATTEMPTS_MAX = 3  # a fenced tokenize learns the new epoch and tries again
TOKEN_MAKERS_CACHED_MAX = 10_000

Principal = OwnerConfig | object
_T = TypeVar("_T")
RouteHandler = Callable[[Request, Principal | None, str], Awaitable[Response]]


def _reject_constant(name: str) -> Any:
    raise InvalidRequest(f"{name} is not valid JSON")


def parse_json_object(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise InvalidRequest("The body is not valid UTF-8 JSON.") from None
    if not isinstance(payload, dict):
        raise InvalidRequest("The body must be a JSON object.")
    return payload


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
        self._peer_key = node.peer_key
        self._secret = config.secret
        self._token_makers: dict[tuple[str, int, str], TokenMaker] = {}
        self._exact: dict[tuple[str, str], tuple[str, RouteHandler]] = {
            ("GET", "/healthz"): ("healthz", self._healthz),
            ("GET", "/metrics"): ("metrics", self._metrics),
            ("POST", "/v1/tokenize"): ("tokenize", self._tokenize),
            ("POST", "/v1/detokenize"): ("detokenize", self._detokenize),
            ("GET", "/v1/epoch"): ("epoch", self._epoch),
            ("POST", "/v1/epoch/rotate"): ("rotate", self._rotate),
            ("GET", "/v1/ring"): ("ring", self._ring),
            ("GET", "/v1/admin/node"): ("admin_node", self._admin_node),
            ("POST", PEER_MESSAGES_PATH): ("peer_messages", self._peer_messages),
        }
        self._exact_paths = {path for _, path in self._exact}
        self._prefixed: tuple[tuple[str, str, str, RouteHandler], ...] = (
            ("GET", "/v1/tokens/", "token", self._get_token),
            ("GET", "/v1/ring/owners/", "ring_owner", self._ring_owner),
            ("GET", "/v1/admin/owners/", "admin_owner", self._admin_owner),
        )
        metrics = node.metrics
        metrics.describe("tokenvault_http_requests_total", "HTTP requests by route and status.")
        metrics.describe(
            "tokenvault_http_request_seconds", "HTTP request latency by route and status."
        )
        metrics.describe("tokenvault_events_total", "State changes reported by the cores.")

    # -- dispatch ------------------------------------------------------------------------------

    async def handle(self, request: Request) -> Response:
        started = time.perf_counter()
        route, handler, argument = self._route(request)
        try:
            if handler is None:
                raise route_error(route)
            principal = None if route in ("healthz", "metrics") else self._authenticate(request)
            response = await handler(request, principal, argument)
        except ApiError as error:
            response = error_response(error)
        except (StorageError, StorageCorrupt) as error:
            self._node.log.emit("storage_error", level="error", kind=type(error).__name__)
            response = error_response(
                Unavailable("This peer's store failed; try another peer or retry later.")
            )
        metrics = self._node.metrics
        labels = (("route", route), ("status", str(response.status)))
        metrics.inc("tokenvault_http_requests_total", labels)
        metrics.observe("tokenvault_http_request_seconds", time.perf_counter() - started, labels)
        return response

    def _route(self, request: Request) -> tuple[str, RouteHandler | None, str]:
        found = self._exact.get((request.method, request.path))
        if found is not None:
            return found[0], found[1], ""
        if request.path in self._exact_paths:
            return "method_not_allowed", None, ""
        for method, prefix, name, handler in self._prefixed:
            if request.path.startswith(prefix):
                if request.method != method:
                    return "method_not_allowed", None, ""
                return name, handler, request.path[len(prefix) :]
        return "unknown", None, ""

    def _authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("Send 'Authorization: Bearer <key>'.")
        key = key.strip()
        if request.path == PEER_MESSAGES_PATH:
            if hmac.compare_digest(key.encode(), self._peer_key.encode()):
                return ADMIN
            raise Unauthenticated("Only peers of this cluster may use this endpoint.")
        principal = self._principals.get(hash_api_key(key))
        if principal is None:
            raise Unauthenticated("The key is not known.")
        return principal

    # -- owner endpoints -----------------------------------------------------------------------

    async def _tokenize(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        records = _bounded_list(parse_json_object(request.body), "records", RECORDS_MAX)
        # Validate everything first: (record index, field, value) of every configured field.
        sensitive: list[tuple[int, str, str]] = []
        for index, record in enumerate(records):
            if not isinstance(record, dict):
                raise InvalidRequest("Every record must be a JSON object.")
            for name in owner.fields.intersection(record):
                value = record[name]
                if not isinstance(value, str):
                    raise InvalidRequest(
                        f"The value of the configured field '{name}' must be a string."
                    )
                if value_bytes(value, name) > VALUE_BYTES_MAX:
                    raise PayloadTooLarge(f"A value of '{name}' is over {VALUE_BYTES_MAX} bytes.")
                sensitive.append((index, name, value))
        epoch = self._node.known_epoch(owner.id)
        for attempt in range(TOKENIZE_ATTEMPTS_MAX):
            tokens = self._tokens_for(owner.id, epoch, sensitive)
            if not sensitive:
                break
            mappings = {
                token: Mapping(
                    owner=owner.id, token=token, value=value, field=name, epoch=epoch.epoch
                )
                for token, (_, name, value) in zip(tokens, sensitive, strict=True)
            }
            try:
                await self._node.write_mappings(
                    self._node.new_request_id(), owner.id, list(mappings.values())
                )
                break
            except OperationFailed as error:
                if error.failure is not Failure.FENCED or attempt + 1 == TOKENIZE_ATTEMPTS_MAX:
                    raise _unavailable(error) from None
            # A replica holds a later epoch: learn it from a majority, then tokenize again.
            epoch = await self._run_quorum(
                self._node.learn_epoch(self._node.new_request_id(), owner.id)
            )
        answered = [dict(record) for record in records]
        for token, (index, name, _) in zip(tokens, sensitive, strict=True):
            answered[index][name] = token
        return json_response(200, {"epoch": epoch.epoch, "records": answered})

    def _tokens_for(
        self, owner: str, epoch: EpochValue, sensitive: list[tuple[int, str, str]]
    ) -> list[str]:
        maker = self._token_makers.get((owner, epoch.epoch, epoch.salt))
        if maker is None:
            if len(self._token_makers) >= TOKEN_MAKERS_CACHED_MAX:
                self._token_makers.clear()
            key = derive_epoch_key(self._secret, owner, epoch.epoch, bytes.fromhex(epoch.salt))
            maker = self._token_makers[(owner, epoch.epoch, epoch.salt)] = TokenMaker(key)
        return [maker.token(name, value) for _, name, value in sensitive]

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
        mappings = await self._run_quorum(
            self._node.read_mappings(self._node.new_request_id(), owner.id, wanted)
        )
        return {m.token: m for m in mappings if m is not None}

    async def _epoch(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        epoch = await self._run_quorum(
            self._node.learn_epoch(self._node.new_request_id(), owner.id)
        )
        return json_response(200, {"owner": owner.id, "epoch": epoch.epoch})

    async def _rotate(self, request: Request, principal: Principal | None, _: str) -> Response:
        owner = _owner_of(principal)
        expected: int | None = None
        if request.body.strip():
            payload = parse_json_object(request.body)
            expected = payload.get("expected_epoch")
            if expected is not None and (type(expected) is not int or expected < 1):
                raise InvalidRequest("'expected_epoch' must be a positive integer.")
        epoch, rotated = await self._run_quorum(
            self._node.rotate_epoch(self._node.new_request_id(), owner.id, expected)
        )
        return json_response(200, {"owner": owner.id, "epoch": epoch.epoch, "rotated": rotated})

    # -- inspection ----------------------------------------------------------------------------

    async def _ring(self, request: Request, principal: Principal | None, _: str) -> Response:
        node = self._node
        quorum = node.config.quorum
        return json_response(
            200,
            {
                "peer": node.peer_id,
                "version": node.ring.version,
                "replicas": quorum.replica_count,
                "write_quorum": quorum.write_quorum,
                "read_quorum": quorum.read_quorum,
                "vnodes_per_peer": node.ring.vnodes_per_peer,
                "peers": node.peer_views(),
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
        addresses = {p.id: p.address for p in node.config.peers}
        return json_response(
            200,
            {
                "owner": owner_id,
                "position": node.ring.position(owner_id),
                "ring_version": node.ring.version,
                "preference_list": [
                    {"id": p, "address": addresses[p]} for p in node.preference_list(owner_id)
                ],
            },
        )

    async def _admin_node(self, request: Request, principal: Principal | None, _: str) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        return json_response(200, self._node.node_view())

    async def _admin_owner(
        self, request: Request, principal: Principal | None, owner_id: str
    ) -> Response:
        if principal is not ADMIN:
            raise Forbidden("Only the admin key may see this.")
        if self._node.config.owner(owner_id) is None:
            raise NotFound("No such owner.")
        views = await self._node.inspect_owner(owner_id)
        replicas: list[dict[str, Any]] = []
        for peer in self._node.preference_list(owner_id):
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
        return json_response(200, {"status": "serving", "peer": self._node.peer_id})

    async def _metrics(self, request: Request, principal: Principal | None, _: str) -> Response:
        body = self._node.render_metrics().encode()
        return Response(status=200, body=body, content_type="text/plain; version=0.0.4")

    # -- peers ---------------------------------------------------------------------------------

    async def _peer_messages(
        self, request: Request, principal: Principal | None, _: str
    ) -> Response:
        fingerprint = request.headers.get(CLUSTER_FINGERPRINT_HEADER, "")
        if fingerprint != self._node.cluster_fingerprint:
            self._node.refuse_foreign_batch(request.client.rpartition(":")[0], fingerprint)
            raise InvalidRequest(
                "The batch comes from a peer whose cluster configuration differs from this "
                "peer's (peers, quorums, vnodes or owners' fields)."
            )
        try:
            await self._node.receive_peer_batch(request.body)
        except CodecError as error:
            raise InvalidRequest(str(error)) from None
        return Response(status=204)

    # -- helpers -------------------------------------------------------------------------------

    async def _run_quorum(self, operation: Awaitable[_T]) -> _T:
        try:
            return await operation
        except OperationFailed as error:
            raise _unavailable(error) from None


def _epoch_value_id(value: EpochValue) -> str:
    """12 hex digits naming one decided epoch value (its salt stays out of the view)."""
    identity = f"{value.epoch}\x00{value.salt}\x00{value.requested_by}".encode()
    return hashlib.sha256(identity).hexdigest()[:12]


def _unavailable(error: OperationFailed) -> Unavailable:
    if error.failure is Failure.INTEGRITY_CONFLICT:
        return Unavailable(
            "Replicas disagree on a mapping; the conflict was logged for an operator."
        )
    if error.failure is Failure.CONTENDED:
        return Unavailable("Concurrent epoch changes kept colliding; retry the request.")
    return Unavailable("Too few replicas answered in time; nothing was claimed.")


def _ballot_text(ballot: Ballot | None) -> str | None:
    return None if ballot is None or ballot.round == 0 else f"{ballot.round}.{ballot.peer}"


def value_bytes(value: str, field: str) -> int:
    """The UTF-8 size of a value; a lone surrogate (legal as a JSON escape) is refused."""
    if value.isascii():
        return len(value)
    try:
        return len(value.encode())
    except UnicodeEncodeError:
        raise InvalidRequest(f"A value of '{field}' is not valid Unicode text.") from None


def _owner_of(principal: Principal | None) -> OwnerConfig:
    if isinstance(principal, OwnerConfig):
        return principal
    raise Forbidden("The admin key acts for no owner; use an owner's key.")


def route_error(route: str) -> ApiError:
    if route == "method_not_allowed":
        return MethodNotAllowed()
    return NotFound("No such route.")
