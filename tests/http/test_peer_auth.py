"""Peer authentication (http/peer_auth.py): a signed batch verifies, every refusal reason is
reached by the batch that should reach it, the replay guard accepts each sequence once within
its window and stays bounded, and nothing secret reaches an error or a log line. The last test
runs real peer links against a real server: no honest batch is refused."""

from __future__ import annotations

import functools
import hashlib
import hmac
import io
import json
import time
from collections.abc import Callable

import pytest
import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenvault.http.errors import Unauthenticated, error_response
from tokenvault.http.peer_auth import (
    AUTHORIZATION_HEADER,
    CLUSTER_FINGERPRINT_HEADER,
    INCARNATIONS_PER_SENDER_MAX,
    PEER_ALARM_INTERVAL_S,
    PEER_CLOCK_SKEW_MAX_S,
    REPLAY_WINDOW_SEQUENCES,
    SCHEME,
    PeerAlarm,
    PeerAuthenticator,
    PeerAuthError,
    PeerCredential,
    PeerSigner,
    Refusal,
    new_incarnation,
    require_source,
)
from tokenvault.http.peer_transport import PEER_MESSAGES_PATH, PeerLink
from tokenvault.http.server import Request, Response, ServerLimits, serve_http
from tokenvault.log import EventLog
from tokenvault.metrics import Metrics
from tokenvault.tokens import derive_peer_key

SECRET = b"peer-auth-test-secret-0123456789"
PEERS = ("n1", "n2", "n3")
KEYS = {peer: derive_peer_key(SECRET, peer) for peer in PEERS}
FINGERPRINT = "0123456789abcdef" * 2
NOW_S = 1_800_000_000.0
BODY = b'{"source":"n1","messages":[]}'
POST = {"method": "POST", "path": PEER_MESSAGES_PATH}

Headers = dict[str, str]


class Clock:
    def __init__(self, now_s: float = NOW_S) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


def signer(
    sender: str = "n1",
    *,
    receiver: str = "n2",
    key: bytes | None = None,
    incarnation: str | None = None,
    clock: Callable[[], float] = Clock(),
) -> PeerSigner:
    return PeerSigner(
        sender=sender,
        receiver=receiver,
        key=KEYS[sender] if key is None else key,
        incarnation=incarnation or new_incarnation(),
        fingerprint=FINGERPRINT,
        clock_s=clock,
    )


def signed(peer_signer: PeerSigner, body: bytes = BODY) -> Headers:
    return dict(peer_signer.headers("POST", PEER_MESSAGES_PATH, body))


def reference_batch(
    sequence: int,
    *,
    sender: str = "n1",
    incarnation: str = "a" * 32,
    receiver: str = "n2",
    body: bytes = BODY,
) -> Headers:
    """A batch's headers built from the scheme as documented, not by the module's signer."""
    fields = {
        "sender": sender,
        "incarnation": incarnation,
        "sequence": str(sequence),
        "timestamp_ms": str(int(NOW_S * 1000)),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    head = ("tokenvault-peer-batch/v1", "POST", PEER_MESSAGES_PATH, receiver, FINGERPRINT)
    text = "\n".join((*head, *fields.values()))
    fields["signature"] = hmac.new(KEYS[sender], text.encode(), hashlib.sha256).hexdigest()
    return {CLUSTER_FINGERPRINT_HEADER: FINGERPRINT} | authorization(fields)


def authorization(fields: dict[str, str]) -> Headers:
    text = ", ".join(f"{name}={value}" for name, value in fields.items())
    return {AUTHORIZATION_HEADER: f"{SCHEME} {text}"}


def fields_of(headers: Headers) -> dict[str, str]:
    """The fields of the authorization header, by name."""
    _, _, text = headers[AUTHORIZATION_HEADER].partition(" ")
    return dict(field.split("=", 1) for field in text.split(", "))


def edited(headers: Headers, name: str, value: str | None) -> Headers:
    """`headers` with the header, or else the authorization field, `name` set to `value` (or
    left out: None), in its place."""
    if name not in headers:
        fields = fields_of(headers) | {name: value or ""}
        kept = {field: text for field, text in fields.items() if field != name or value}
        return headers | authorization(kept)
    return {k: v for k, v in headers.items() if k != name} | (
        {} if value is None else {name: value}
    )


def receiver(local_peer: str = "n2", clock: Callable[[], float] = Clock()) -> PeerAuthenticator:
    return PeerAuthenticator(local_peer=local_peer, keys=KEYS, clock_s=clock)


def accept(auth: PeerAuthenticator, headers: Headers, body: bytes = BODY) -> PeerCredential:
    credential = auth.verify_head(headers, **POST)
    auth.verify_body(credential, body)
    return credential


def refusal(auth: PeerAuthenticator, headers: Headers, body: bytes = BODY) -> PeerAuthError:
    with pytest.raises(PeerAuthError) as caught:
        accept(auth, headers, body)
    return caught.value


# -- a signed batch ----------------------------------------------------------------------------


def test_a_signed_batch_verifies_and_names_its_sender() -> None:
    incarnation = new_incarnation()
    headers = signed(signer(incarnation=incarnation))
    assert headers[CLUSTER_FINGERPRINT_HEADER] == FINGERPRINT
    assert headers[AUTHORIZATION_HEADER].startswith(SCHEME + " ")
    credential = accept(receiver(), headers)
    assert credential == PeerCredential(
        sender="n1",
        incarnation=incarnation,
        sequence=1,
        timestamp_ms=int(NOW_S * 1000),
        body_sha256=fields_of(headers)["body_sha256"],
        fingerprint=FINGERPRINT,
    )


def test_the_signer_follows_the_documented_scheme() -> None:
    headers = signed(signer(incarnation="a" * 32))
    assert headers == reference_batch(1)


def test_no_reusable_credential_travels_each_batch_has_its_own_signature() -> None:
    link = signer()
    first, second = signed(link), signed(link)
    assert first[AUTHORIZATION_HEADER] != second[AUTHORIZATION_HEADER]
    assert (fields_of(first)["sequence"], fields_of(second)["sequence"]) == ("1", "2")
    on_the_wire = "".join(first.values()) + "".join(second.values())
    assert KEYS["n1"].hex() not in on_the_wire and SECRET.decode() not in on_the_wire


def test_verify_head_changes_nothing_and_only_the_body_check_spends_the_sequence() -> None:
    auth, headers = receiver(), signed(signer())
    first = auth.verify_head(headers, **POST)
    second = auth.verify_head(headers, **POST)  # e.g. the same batch twice, concurrently
    auth.verify_body(first, BODY)
    with pytest.raises(PeerAuthError) as caught:
        auth.verify_body(second, BODY)
    assert caught.value.reason is Refusal.REPLAYED
    assert refusal(auth, headers).reason is Refusal.REPLAYED


# -- every refusal -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer 0123", SCHEME.lower() + " " + "0" * 64, "HMAC " + "0" * 64],
)
def test_a_batch_without_the_peer_signature_scheme_is_unsigned(authorization: str | None) -> None:
    headers = edited(signed(signer()), AUTHORIZATION_HEADER, authorization)
    assert refusal(receiver(), headers).reason is Refusal.UNSIGNED


@pytest.mark.parametrize(("sender", "named"), [("n1", "n1"), ("n7", "unknown")])
def test_a_malformed_header_names_its_sender_only_if_it_is_a_peer(sender: str, named: str) -> None:
    headers = edited(edited(signed(signer()), "sender", sender), "signature", "0")
    error = refusal(receiver(), headers)
    assert (error.reason, error.claimed_sender) == (Refusal.MALFORMED, named)


@pytest.mark.parametrize(
    ("header", "value"),
    [
        ("sender", None),
        ("sender", "n 1"),
        ("sender", "n" * 33),
        ("incarnation", None),
        ("incarnation", "0123"),
        ("incarnation", "G" * 32),
        ("sequence", None),
        ("sequence", "0"),
        ("sequence", "-1"),
        ("sequence", "01"),
        ("sequence", "1e3"),
        ("sequence", str(2**63)),
        ("sequence", "9" * 40),
        ("timestamp_ms", None),
        ("timestamp_ms", "1.5"),
        ("timestamp_ms", " 1"),
        ("body_sha256", None),
        ("body_sha256", "A" * 64),
        ("body_sha256", "0" * 63),
        ("signature", None),
        ("signature", "0" * 65),
        ("extra", "1"),
        (AUTHORIZATION_HEADER, SCHEME + " "),
        (AUTHORIZATION_HEADER, SCHEME + " " + "0" * 64),
        (CLUSTER_FINGERPRINT_HEADER, "not hex"),
    ],
)
def test_a_missing_malformed_or_extra_field_is_refused_as_malformed(
    header: str, value: str | None
) -> None:
    headers = edited(signed(signer()), header, value)
    assert refusal(receiver(), headers).reason is Refusal.MALFORMED


@pytest.mark.parametrize("sender", ["n9", "n2"])
def test_a_sender_that_is_not_another_peer_of_the_ring_is_refused(sender: str) -> None:
    """n9 is no peer; n2 is the receiver itself (peers never send batches to themselves)."""
    headers = edited(signed(signer(sender="n1")), "sender", sender)
    error = refusal(receiver("n2"), headers)
    assert error.reason is Refusal.UNKNOWN_SENDER
    assert error.claimed_sender == "unknown"  # an attacker's text is never echoed


def test_a_batch_signed_with_another_peers_key_is_refused() -> None:
    headers = signed(signer(sender="n1", key=KEYS["n3"]))
    error = refusal(receiver(), headers)
    assert (error.reason, error.claimed_sender) == (Refusal.BAD_SIGNATURE, "n1")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("sender", "n3"),  # re-labelled as another peer
        ("sequence", "2"),
        ("timestamp_ms", str(int(NOW_S * 1000) + 1)),
        ("incarnation", "f" * 32),
        ("body_sha256", "0" * 64),
        (CLUSTER_FINGERPRINT_HEADER, "f" * 32),
    ],
)
def test_every_signed_field_is_covered_by_the_signature(name: str, value: str) -> None:
    headers = edited(signed(signer()), name, value)
    assert refusal(receiver(), headers).reason is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("method", "path", "local_peer"),
    [("PUT", PEER_MESSAGES_PATH, "n2"), ("POST", "/internal/v2/x", "n2"), ("POST", None, "n3")],
)
def test_method_path_and_receiver_are_covered_by_the_signature(
    method: str, path: str | None, local_peer: str
) -> None:
    """A batch signed for n2 is refused by n3: a captured batch cannot be replayed elsewhere."""
    headers = signed(signer(receiver="n2"))
    with pytest.raises(PeerAuthError) as caught:
        receiver(local_peer).verify_head(headers, method=method, path=path or PEER_MESSAGES_PATH)
    assert caught.value.reason is Refusal.BAD_SIGNATURE


@pytest.mark.parametrize(
    ("skew_s", "accepted"),
    [
        (0.0, True),
        (PEER_CLOCK_SKEW_MAX_S, True),
        (-PEER_CLOCK_SKEW_MAX_S, True),
        (PEER_CLOCK_SKEW_MAX_S + 0.01, False),
        (-PEER_CLOCK_SKEW_MAX_S - 0.01, False),
        (1 - NOW_S, False),  # a timestamp of 1 s after 1970
        (1e9, False),
    ],
)
def test_a_batch_signed_outside_the_clock_window_is_refused(skew_s: float, accepted: bool) -> None:
    headers = signed(signer(clock=Clock(NOW_S + skew_s)))
    auth = receiver(clock=Clock(NOW_S))
    if accepted:
        accept(auth, headers)
    else:
        assert refusal(auth, headers).reason is Refusal.OUTSIDE_WINDOW


def test_a_batch_with_another_body_is_refused_and_does_not_spend_the_sequence() -> None:
    auth, headers = receiver(), signed(signer())
    forged = BODY.replace(b'"n1"', b'"n3"')
    error = refusal(auth, headers, forged)
    assert (error.reason, error.claimed_sender) == (Refusal.BODY_MISMATCH, "n1")
    accept(auth, headers, BODY)  # the genuine batch, arriving after the forgery


def test_a_body_naming_another_source_than_its_signer_is_refused() -> None:
    credential = accept(receiver(), signed(signer("n1")))
    require_source(credential, "n1")
    with pytest.raises(PeerAuthError) as caught:
        require_source(credential, "n3")
    assert (caught.value.reason, caught.value.claimed_sender) == (Refusal.SOURCE_MISMATCH, "n1")


def test_a_refusal_says_why_and_never_carries_a_key_or_signature() -> None:
    headers = signed(signer(key=KEYS["n3"]))
    error = refusal(receiver(), headers)
    text = error_response(Unauthenticated(str(error))).body.decode()
    assert "signature does not verify" in text
    signature = headers[AUTHORIZATION_HEADER].split()[1]
    assert signature not in text and KEYS["n1"].hex() not in text and KEYS["n3"].hex() not in text
    assert {r.value for r in Refusal} == {
        "unsigned",
        "malformed",
        "unknown_sender",
        "bad_signature",
        "outside_window",
        "replayed",
        "body_mismatch",
        "source_mismatch",
        "no_certificate",
    }


# -- the replay guard --------------------------------------------------------------------------


def test_a_replayed_batch_is_refused_even_after_later_ones() -> None:
    auth, link = receiver(), signer()
    first = signed(link)
    accept(auth, first)
    for _ in range(3):
        accept(auth, signed(link))
    assert refusal(auth, first).reason is Refusal.REPLAYED


def test_batches_out_of_order_within_the_window_are_accepted_once_each() -> None:
    """A link's two connections may deliver its batches out of order."""
    auth, link = receiver(), signer()
    batches = [signed(link) for _ in range(6)]
    for index in (1, 0, 4, 2, 5, 3):
        accept(auth, batches[index])
    for batch in batches:
        assert refusal(auth, batch).reason is Refusal.REPLAYED


def test_a_batch_older_than_the_window_is_refused_even_if_never_seen() -> None:
    auth, link = receiver(), signer()
    oldest = signed(link)
    in_window = signed(link)
    for _ in range(REPLAY_WINDOW_SEQUENCES - 1):
        signed(link)  # lost on the way
    accept(auth, signed(link))  # sequence window + 2
    accept(auth, in_window)  # sequence 2: exactly at the window's edge
    assert refusal(auth, oldest).reason is Refusal.REPLAYED


def test_a_jump_far_beyond_the_window_leaves_the_window_behind() -> None:
    """As a hostile but authentic sender could: the guard neither breaks nor grows with it."""
    auth = receiver()
    accept(auth, reference_batch(1))
    accept(auth, reference_batch(2**62))
    accept(auth, reference_batch(2**62 - REPLAY_WINDOW_SEQUENCES))
    for sequence in (1, 2, 2**62, 2**62 - REPLAY_WINDOW_SEQUENCES - 1):
        assert refusal(auth, reference_batch(sequence)).reason is Refusal.REPLAYED


def test_remembered_incarnations_are_bounded_and_the_least_recently_used_is_forgotten() -> None:
    auth = receiver()
    links = [signer() for _ in range(INCARNATIONS_PER_SENDER_MAX + 1)]
    firsts = [signed(link) for link in links]
    for index, headers in enumerate(firsts[:-1]):
        accept(auth, headers)
        assert auth.incarnations_remembered("n1") == index + 1
    accept(auth, signed(links[0]))  # incarnation 0 is now the most recently used
    accept(auth, firsts[-1])  # a new incarnation: incarnation 1 is forgotten
    assert auth.incarnations_remembered("n1") == INCARNATIONS_PER_SENDER_MAX
    assert refusal(auth, firsts[0]).reason is Refusal.REPLAYED  # still remembered
    accept(auth, firsts[1])  # forgotten: only the clock window guards it now
    assert auth.incarnations_remembered("n1") == INCARNATIONS_PER_SENDER_MAX


def test_incarnations_are_remembered_per_sender() -> None:
    auth = receiver()
    for _ in range(INCARNATIONS_PER_SENDER_MAX + 3):
        accept(auth, signed(signer("n1")))
    accept(auth, signed(signer("n3")))
    assert auth.incarnations_remembered("n1") == INCARNATIONS_PER_SENDER_MAX
    assert auth.incarnations_remembered("n3") == 1


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=3 * REPLAY_WINDOW_SEQUENCES), max_size=60))
def test_the_replay_guard_agrees_with_a_dumb_reference(sequences: list[int]) -> None:
    """Reference: a sequence is accepted iff it was never accepted and it is at most the window
    below the highest accepted so far."""
    auth = receiver()
    accepted: set[int] = set()
    for sequence in sequences:
        expected = sequence not in accepted and (
            not accepted or sequence >= max(accepted) - REPLAY_WINDOW_SEQUENCES
        )
        headers = reference_batch(sequence)
        if expected:
            accept(auth, headers)
            accepted.add(sequence)
        else:
            assert refusal(auth, headers).reason is Refusal.REPLAYED, (sequence, sorted(accepted))


# -- the alarm ---------------------------------------------------------------------------------


def test_the_alarm_counts_every_refusal_and_logs_once_per_sender_and_reason_per_interval() -> None:
    stream, metrics, clock = io.StringIO(), Metrics(), Clock(0.0)
    alarm = PeerAlarm(
        event="peer_auth_refused",
        counter="tokenvault_peer_auth_refused_total",
        help_text="refused",
        log=EventLog("n2", stream),
        metrics=metrics,
        reasons=[r.value for r in Refusal],
        clock_s=clock,
    )
    assert 'tokenvault_peer_auth_refused_total{reason="replayed"} 0' in metrics.render()
    for _ in range(3):
        alarm.raise_alarm(reason="replayed", sender="n1", client="10.0.0.1", where="head")
    alarm.raise_alarm(reason="replayed", sender="n3", client="10.0.0.3", where="head")
    alarm.raise_alarm(reason="bad_signature", sender="n1", client="10.0.0.1", where="head")
    clock.now_s = PEER_ALARM_INTERVAL_S
    alarm.raise_alarm(reason="replayed", sender="n1", client="10.0.0.1", where="body")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(line["sender"], line["reason"], line["suppressed"]) for line in lines] == [
        ("n1", "replayed", 0),
        ("n3", "replayed", 0),
        ("n1", "bad_signature", 0),
        ("n1", "replayed", 2),
    ]
    assert {line["level"] for line in lines} == {"error"}
    assert {line["event"] for line in lines} == {"peer_auth_refused"}
    assert lines[0]["client"] == "10.0.0.1" and lines[-1]["where"] == "body"
    rendered = metrics.render()
    assert 'tokenvault_peer_auth_refused_total{reason="replayed"} 5' in rendered
    assert 'tokenvault_peer_auth_refused_total{reason="bad_signature"} 1' in rendered


# -- real links against a real server ----------------------------------------------------------


async def test_real_links_over_two_connections_are_never_refused() -> None:
    """Two links (n1 and n3 to n2), each on two connections, many batches: every batch verifies,
    none is refused as replayed although the connections interleave."""
    auth = PeerAuthenticator(local_peer="n2", keys=KEYS)
    messages_per_link = 300
    received = {"n1": 0, "n3": 0}
    refused: list[Refusal] = []
    all_received = trio.Event()

    async def handler(request: Request) -> Response:
        try:
            credential = auth.verify_head(request.headers, method=request.method, path=request.path)
            await trio.sleep(0)  # another connection's request may run in between
            auth.verify_body(credential, request.body)
            batch = json.loads(request.body)
            require_source(credential, batch["source"])
        except PeerAuthError as error:
            refused.append(error.reason)
            all_received.set()
            return Response(status=401)
        received[credential.sender] += len(batch["messages"])
        if sum(received.values()) == 2 * messages_per_link:
            all_received.set()
        return Response(status=204)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            port = await nursery.start(serve_http, handler, "127.0.0.1", 0, ServerLimits())
            links = [
                PeerLink(
                    local_peer_id=sender,
                    peer_id="n2",
                    host="127.0.0.1",
                    port=port,
                    signer=signer(sender, clock=time.time),
                )
                for sender in ("n1", "n3")
            ]
            for link in links:
                nursery.start_soon(link.run)
            for index in range(messages_per_link):
                for link in links:
                    link.send_nowait(b'{"type":"heartbeat","sender":"x"}')
                if index % 7 == 0:
                    await trio.sleep(0)  # let senders take what is queued so far
            await all_received.wait()
            nursery.cancel_scope.cancel()
    assert not refused
    assert received == {"n1": messages_per_link, "n3": messages_per_link}
    assert all(link.statistics().batches_failed == 0 for link in links)
    assert sum(link.statistics().batches_sent for link in links) > 2


def test_a_peer_outside_the_bootstrap_is_verified_under_its_derived_key() -> None:
    """A peer that joined later (not in cluster.toml's peers) signs under the key derived from
    the secret for its id: taken, replays refused as any; without `key_of` it is unknown, and
    a batch signed under another key for that id is a bad signature."""
    clock = Clock()
    auth = PeerAuthenticator(
        local_peer="n2",
        keys=KEYS,
        key_of=functools.partial(derive_peer_key, SECRET),
        clock_s=clock,
    )
    joiner = signer("n4", key=derive_peer_key(SECRET, "n4"), clock=clock)
    headers = signed(joiner)
    assert accept(auth, headers).sender == "n4"
    assert refusal(auth, headers).reason is Refusal.REPLAYED
    assert auth.incarnations_remembered("n4") == 1
    forged = signer("n5", key=derive_peer_key(b"another-secret-0123456789abcdefgh", "n5"))
    refused = refusal(auth, signed(forged))
    assert (refused.reason, refused.claimed_sender) == (Refusal.BAD_SIGNATURE, "unknown")
    bootstrap_only = receiver(clock=clock)
    assert refusal(bootstrap_only, signed(joiner)).reason is Refusal.UNKNOWN_SENDER
