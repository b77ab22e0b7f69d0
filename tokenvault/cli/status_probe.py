"""The network half of `tokenvault status`: every peer asked at once, with short timeouts, and
what each answered (or why not) collected into a Probed record. Nothing here judges it.

Rules:
- Every peer is asked `GET /v1/ring`, `GET /v1/admin/node` and `GET /v1/admin/members` (the
  version it is at, the transfers into it) in parallel, on a pool of at most
  PROBE_WORKERS_MAX threads sharing one httpx client. A request has PROBE_CONNECT_TIMEOUT_S to
  connect (a TLS handshake included) and PROBE_READ_TIMEOUT_S to answer: a paused peer costs
  PROBE_READ_TIMEOUT_S, a dead one a refused connection, and neither holds up the others.
- The peers asked first are the start URLs (the --url, or every peer of --dir's cluster.toml).
  As soon as a ring answers, every peer it lists that no answer came from yet and that was not
  asked is asked too (so --url reaches the whole ring in two waves).
- The ring is the first ring answer to arrive. The owners are those of the first admin view to
  arrive, each inspected (`GET /v1/admin/owners/{owner}`) at the peer that gave it; an
  inspection waits up to INSPECT_READ_TIMEOUT_S, since a peer waits 1.5 s for a silent replica.
- A 403 on an admin view (the node's or the members') means an owner key: no owner is
  inspected (the ring only).
- A ring answer that is not an object listing peers (each with an id and an address) counts
  as no answer.
- An Answer carries a 2xx JSON body, or one line saying why there is none; that line names the
  URL and the HTTP status, never the key.
- `on_progress` is called about every PROGRESS_INTERVAL_S while answers are awaited.
"""

from __future__ import annotations

import json
import ssl
import time
import urllib.parse
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import httpx

from tokenvault.cli.target import Target
from tokenvault.client.errors import error_from_answer

PROBE_CONNECT_TIMEOUT_S = 0.5
PROBE_READ_TIMEOUT_S = 1.5
INSPECT_READ_TIMEOUT_S = 2.0  # a peer's own inspection waits 1.5 s for replicas that are silent
PROBE_WORKERS_MAX = 64  # threads asking at once; more owners than this wait for a free one
PROGRESS_INTERVAL_S = 0.1

RING_PATH = "/v1/ring"
NODE_PATH = "/v1/admin/node"
MEMBERS_PATH = "/v1/admin/members"
OWNER_PATH = "/v1/admin/owners/"


@dataclass(frozen=True, slots=True)
class Answer:
    """One request's outcome: the JSON body of a 2xx answer, or why there is none."""

    body: Any = None
    error: str | None = None  # None exactly when body is the answer
    status: int | None = None  # the HTTP status, when the peer answered at all

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class PeerProbe:
    """What one peer (by URL) answered so far; None while a request is outstanding."""

    url: str
    ring: Answer | None = None
    node: Answer | None = None
    members: Answer | None = None

    def awaited(self) -> bool:
        return self.ring is None or self.node is None or self.members is None


@dataclass(slots=True)
class Probed:
    """Everything the probes brought back."""

    peers: dict[str, PeerProbe] = field(default_factory=dict)  # by URL
    ring: Any = None  # the first ring answer's body
    ring_url: str | None = None
    owner_key: bool = False  # an admin view was refused with 403
    inspected_at: str | None = None  # the URL the owners were inspected at
    owners: dict[str, Answer | None] = field(default_factory=dict)  # None: no answer yet
    url_of_peer: dict[str, str] = field(default_factory=dict)  # peer id -> URL it answered at
    elapsed_s: float = 0.0

    def probe_of(self, peer_id: str, address: str, target: Target) -> PeerProbe | None:
        """The probe of a ring peer: at the URL it answered from, else at its address."""
        url = self.url_of_peer.get(peer_id, target.at(address).url)
        return self.peers.get(url)

    def waiting_for(self) -> list[str]:
        """URLs and owners whose answers are still awaited."""
        waiting = [p.url for p in self.peers.values() if p.awaited()]
        return waiting + [owner for owner, answer in self.owners.items() if answer is None]


ProgressCallback = Callable[[Probed], None]


@dataclass(frozen=True, slots=True)
class _Job:
    kind: str  # "ring", "node", "members" or "owner"
    url: str
    owner: str = ""


def probe_cluster(
    target: Target,
    start_urls: Sequence[str],
    transport: httpx.BaseTransport | None,
    on_progress: ProgressCallback | None = None,
) -> Probed:
    """Asks every peer (start_urls, then the ring's) at once; returns what they answered."""
    started = time.monotonic()
    probed = Probed()
    with (
        _client(target, transport) as client,
        ThreadPoolExecutor(PROBE_WORKERS_MAX, thread_name_prefix="status") as pool,
    ):
        asking = _Asking(target, client, pool, probed)
        for url in dict.fromkeys(start_urls):
            asking.ask_peer(url)
        while asking.pending:
            done, _ = wait(asking.pending, PROGRESS_INTERVAL_S, return_when=FIRST_COMPLETED)
            for future in done:
                asking.take(future)
            probed.elapsed_s = time.monotonic() - started
            if on_progress is not None:
                on_progress(probed)
    probed.elapsed_s = time.monotonic() - started
    return probed


class _Asking:
    """The outstanding requests of one probe_cluster, and what an answer makes it ask next."""

    def __init__(
        self, target: Target, client: httpx.Client, pool: ThreadPoolExecutor, probed: Probed
    ) -> None:
        self._target = target
        self._client = client
        self._pool = pool
        self._probed = probed
        self.pending: dict[Future[Answer], _Job] = {}

    def ask_peer(self, url: str) -> None:
        self._probed.peers[url] = PeerProbe(url=url)
        self._submit(_Job("ring", url), RING_PATH, PROBE_READ_TIMEOUT_S)
        self._submit(_Job("node", url), NODE_PATH, PROBE_READ_TIMEOUT_S)
        self._submit(_Job("members", url), MEMBERS_PATH, PROBE_READ_TIMEOUT_S)

    def take(self, future: Future[Answer]) -> None:
        job = self.pending.pop(future)
        answer = future.result()
        probed = self._probed
        if job.kind == "owner":
            probed.owners[job.owner] = answer
            return
        probe = probed.peers[job.url]
        peer_id = answer.body.get("peer") if answer.ok and isinstance(answer.body, dict) else None
        if isinstance(peer_id, str):
            probed.url_of_peer.setdefault(peer_id, job.url)
        if job.kind == "ring":
            if answer.ok and not is_ring(answer.body):
                answer = Answer(error=f"{job.url} answered a ring that lists no peers", status=200)
            probe.ring = answer
            if answer.ok and probed.ring is None:
                probed.ring, probed.ring_url = answer.body, job.url
            if answer.ok:
                self._ask_the_ring(answer.body)
        elif job.kind == "members":
            probe.members = answer
            if answer.status == 403:
                probed.owner_key = True
        else:
            probe.node = answer
            if answer.status == 403:
                probed.owner_key = True
            elif answer.ok and probed.inspected_at is None and not probed.owner_key:
                self._inspect_owners(job.url, answer.body)

    def _ask_the_ring(self, ring: dict[str, Any]) -> None:
        """Asks the peers this ring lists that neither answered nor were asked yet."""
        for peer in ring["peers"]:
            if peer["id"] in self._probed.url_of_peer:
                continue
            url = self._target.at(peer["address"]).url
            if url not in self._probed.peers:
                self.ask_peer(url)

    def _inspect_owners(self, url: str, node: Any) -> None:
        owners = node.get("owners") if isinstance(node, dict) else None
        self._probed.inspected_at = url
        for owner in owners if isinstance(owners, list) else []:
            name = str(owner)
            self._probed.owners[name] = None
            path = OWNER_PATH + urllib.parse.quote(name, safe="")
            self._submit(_Job("owner", url, name), path, INSPECT_READ_TIMEOUT_S)

    def _submit(self, job: _Job, path: str, read_timeout_s: float) -> None:
        future = self._pool.submit(_get_json, self._client, job.url, path, read_timeout_s)
        self.pending[future] = job


def is_ring(answer: Any) -> bool:
    """Whether a ring answer is an object listing peers (objects with an id and an address)."""
    if not isinstance(answer, dict) or not isinstance(answer.get("peers"), list):
        return False
    return all(
        isinstance(p, dict) and isinstance(p.get("id"), str) and isinstance(p.get("address"), str)
        for p in answer["peers"]
    )


def _client(target: Target, transport: httpx.BaseTransport | None) -> httpx.Client:
    """One client for every request. Plain http:// has no certificate to check: verify=False
    spares loading the system's CA bundle, which alone costs 0.1 to 0.9 s."""
    verify: ssl.SSLContext | bool = False
    if target.url.startswith("https://"):
        verify = target.verify()
    return httpx.Client(
        transport=transport,
        verify=verify,
        headers={"Authorization": f"Bearer {target.key}", "Accept": "application/json"},
        limits=httpx.Limits(max_connections=PROBE_WORKERS_MAX),
    )


def _get_json(client: httpx.Client, url: str, path: str, read_timeout_s: float) -> Answer:
    timeout = httpx.Timeout(
        read_timeout_s, connect=PROBE_CONNECT_TIMEOUT_S, write=PROBE_CONNECT_TIMEOUT_S
    )
    try:
        response = client.get(url + path, timeout=timeout)
    except httpx.ConnectTimeout:
        return Answer(error=f"no connection to {url} within {PROBE_CONNECT_TIMEOUT_S} s")
    except httpx.TimeoutException:
        return Answer(error=f"no answer from {url} within {read_timeout_s} s")
    except httpx.ConnectError as error:
        return Answer(error=f"cannot connect to {url}: {error or type(error).__name__}")
    except (httpx.HTTPError, httpx.InvalidURL) as error:
        return Answer(error=f"request to {url} failed: {error or type(error).__name__}")
    if not response.is_success:
        return Answer(
            error=f"{url} answered {_error_text(response, url)}", status=response.status_code
        )
    try:
        return Answer(body=response.json(), status=response.status_code)
    except (UnicodeDecodeError, json.JSONDecodeError):
        return Answer(error=f"{url} answered {response.status_code} without JSON")


def _error_text(response: httpx.Response, url: str) -> str:
    """The API's error line of an error answer (the client library's, tokenvault.client)."""
    try:
        body: Any = response.json()
    except (UnicodeDecodeError, json.JSONDecodeError):
        body = None
    retry_after = response.headers.get("Retry-After")
    reason = response.reason_phrase
    return str(error_from_answer(response.status_code, body, retry_after, url, reason))
