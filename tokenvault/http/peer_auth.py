"""Peer authentication: every peer batch proves which peer sent it, to whom, when, and that it
is new. No reusable credential travels: each batch carries its own signature.

Scheme (version 1). Each peer signs with a key of its own, derived from the cluster secret and
its peer id (tokens.derive_peer_key); every peer derives the bootstrap peers' keys at start, and
the key of any other id (a peer that joined later: docs/membership.md) when it first signs: only
a holder of the secret can sign as any id, and which ids may send what is the node's rule
(node.BatchRules: a peer that is no member sends only heartbeats, ring fetches and join
requests). Besides the cluster fingerprint header (`x-tokenvault-cluster`, config.py), a batch
carries one header, in this exact form (one line; the fields in this order, ", " between them):

    authorization: TokenvaultPeer-HMAC-SHA256 sender=<peer id>, incarnation=<32 hex>,
        sequence=<n>, timestamp_ms=<n>, body_sha256=<64 hex>, signature=<64 hex>

- sender: the sender's peer id; incarnation: drawn at random when the sender's process starts;
- sequence: 1, 2, 3, ... strictly increasing per link (sender -> receiver) and incarnation;
- timestamp_ms: the sender's wall clock when it signed, UNIX milliseconds;
- body_sha256: the SHA-256 of the body;
- signature: HMAC-SHA256 under the sender's key of the lines (joined by "\\n"): the scheme's
  label, method, path, the receiver's peer id, the cluster fingerprint header, then sender,
  incarnation, sequence, timestamp_ms and body_sha256. The header is matched against one strict
  pattern first (no field can hold a newline), so the signed text has one reading.
One header, not six: h11 parses and writes every header in Python, and six more cost about
15 us per batch (measured), more than all the hashing.

Rules:
- `verify_head` judges the headers alone (an admission step can call it before reading any body
  byte): fields well-formed, the sender another peer of the ring, the signature (compared in
  constant time, before anything else about the batch is believed), the timestamp within
  `PEER_CLOCK_SKEW_MAX_S` of this peer's clock, the sequence not accepted before. It changes
  nothing.
- `verify_body` checks the body's digest and only then accepts the sequence: a captured head
  with another body never spends it. `require_source` refuses a body whose `source` is not the
  authenticated sender.
- Replay guard, per (sender, incarnation): the highest sequence accepted and which of the
  `REPLAY_WINDOW_SEQUENCES` below it were accepted too. A sequence is accepted once, and only
  above the highest or inside the window: a link's two connections may deliver its batches
  slightly out of order. At most `INCARNATIONS_PER_SENDER_MAX` incarnations are remembered per
  sender (the least recently used one is forgotten); a forgotten incarnation's batches are
  still refused by the timestamp window once they are `PEER_CLOCK_SKEW_MAX_S` old.
- Peers' wall clocks must agree within `PEER_CLOCK_SKEW_MAX_S` (NTP is plenty): a batch signed
  outside the window is refused. The state is in memory: a batch captured less than that long
  before this peer restarts can be replayed to it once after the restart (every peer message is
  idempotent, so it repeats what already happened).
- A refusal is a `PeerAuthError` with a reason from a fixed set; its text names the reason,
  never a key, a signature, or a body. `PeerAlarm` logs refusals (level error), at most one
  line per (sender, reason) per `PEER_ALARM_INTERVAL_S`, and counts every one.
"""

from __future__ import annotations

import collections
import enum
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

from tokenvault.log import EventLog, LogThrottle
from tokenvault.metrics import Metrics

SCHEME = "TokenvaultPeer-HMAC-SHA256"
AUTHORIZATION_HEADER = "authorization"
CLUSTER_FINGERPRINT_HEADER = "x-tokenvault-cluster"  # config.cluster_fingerprint of the sender

PEER_CLOCK_SKEW_MAX_S = 30.0  # a batch signed further from this peer's clock is refused
REPLAY_WINDOW_SEQUENCES = 1_024  # how far below the highest accepted a sequence may arrive
INCARNATIONS_PER_SENDER_MAX = 4  # remembered per sender; the least recently used is forgotten
SEQUENCE_MAX = 2**63 - 1
PEER_ALARM_INTERVAL_S = 60.0  # at most one alarm line per (sender, reason) per interval
DERIVED_SENDERS_MAX = 1_024  # peers outside the bootstrap whose keys and streams are kept

_LABEL = "tokenvault-peer-batch/v1"
_PEER_ID = re.compile(r"[A-Za-z0-9_-]{1,32}")
_HEX_32 = re.compile(r"[0-9a-f]{32}")
_FINGERPRINT = re.compile(r"[0-9a-f]{0,64}")
_FIELDS = re.compile(
    r"sender=(?P<sender>[A-Za-z0-9_-]{1,32}), incarnation=(?P<incarnation>[0-9a-f]{32}), "
    r"sequence=(?P<sequence>[1-9][0-9]{0,18}), timestamp_ms=(?P<timestamp_ms>[1-9][0-9]{0,18}), "
    r"body_sha256=(?P<body_sha256>[0-9a-f]{64}), signature=(?P<signature>[0-9a-f]{64})"
)
_CLAIMED_SENDER = re.compile(r"sender=([A-Za-z0-9_-]{1,32}),")  # of a malformed header
_UNKNOWN_SENDER = "unknown"  # the alarm's key and name for a sender that is no peer of ours


class Refusal(enum.Enum):
    """Why a batch was refused: the `reason` of the alarm line and of the counter's label."""

    UNSIGNED = "unsigned"
    MALFORMED = "malformed"
    UNKNOWN_SENDER = "unknown_sender"
    BAD_SIGNATURE = "bad_signature"
    OUTSIDE_WINDOW = "outside_window"
    REPLAYED = "replayed"
    BODY_MISMATCH = "body_mismatch"
    SOURCE_MISMATCH = "source_mismatch"
    NO_CERTIFICATE = "no_certificate"  # TLS on: the connection presented no peer certificate


_REFUSAL_TEXT = {
    Refusal.UNSIGNED: "The batch carries no peer signature ('Authorization: " + SCHEME + "').",
    Refusal.MALFORMED: "A peer signature header is missing or malformed.",
    Refusal.UNKNOWN_SENDER: "The batch names a sender that is not another peer of this ring.",
    Refusal.BAD_SIGNATURE: "The batch's signature does not verify under its sender's key.",
    Refusal.OUTSIDE_WINDOW: (
        f"The batch was signed more than {PEER_CLOCK_SKEW_MAX_S:.0f} s away from this peer's "
        "clock (peers' clocks must agree that closely)."
    ),
    Refusal.REPLAYED: "The batch's sequence number was accepted before, or is too old.",
    Refusal.BODY_MISMATCH: "The body is not the one the batch's signature covers.",
    Refusal.SOURCE_MISMATCH: "The body names another source than the peer that signed it.",
    Refusal.NO_CERTIFICATE: (
        "Only peers of this cluster, with their certificate, may use this endpoint."
    ),
}


class PeerAuthError(Exception):
    """A peer batch refused (401): `reason`, and the sender it claimed (a peer id, or
    "unknown" when it named none of ours: an attacker's text is never echoed)."""

    def __init__(self, reason: Refusal, claimed_sender: str = _UNKNOWN_SENDER) -> None:
        super().__init__(_REFUSAL_TEXT[reason])
        self.reason = reason
        self.claimed_sender = claimed_sender


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerCredential:
    """The signed fields of one batch: what `verify_head` established about it (`verify_body`
    finishes the check), or what a signer signs."""

    sender: str
    incarnation: str
    sequence: int
    timestamp_ms: int
    body_sha256: str  # hex
    fingerprint: str  # the cluster fingerprint header it was signed with


def new_incarnation() -> str:
    """32 hex digits naming one process of a peer (drawn once at its start)."""
    return secrets.token_hex(16)


def _signature(key: bytes, method: str, path: str, receiver: str, batch: PeerCredential) -> str:
    """HMAC-SHA256 under the sender's key of the scheme's lines (module docstring), in hex."""
    signed = "\n".join(
        (
            _LABEL,
            method,
            path,
            receiver,
            batch.fingerprint,
            batch.sender,
            batch.incarnation,
            str(batch.sequence),
            str(batch.timestamp_ms),
            batch.body_sha256,
        )
    )
    return hmac.digest(key, signed.encode(), "sha256").hex()


class PeerSigner:
    """Signs the batches of one link (this peer -> `receiver`), each with the next sequence;
    its headers include the cluster fingerprint, which the signature covers."""

    def __init__(
        self,
        *,
        sender: str,
        receiver: str,
        key: bytes,
        incarnation: str,
        fingerprint: str,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        assert _PEER_ID.fullmatch(sender) and _PEER_ID.fullmatch(receiver)
        assert _HEX_32.fullmatch(incarnation) and _FINGERPRINT.fullmatch(fingerprint)
        self._sender = sender
        self._receiver = receiver
        self._key = key
        self._incarnation = incarnation
        self._fingerprint = fingerprint
        self._clock_s = clock_s
        self._sequence = 0

    def headers(self, method: str, path: str, body: bytes) -> tuple[tuple[str, str], ...]:
        """The signature headers of one batch; every call spends a new sequence number."""
        self._sequence += 1
        batch = PeerCredential(
            sender=self._sender,
            incarnation=self._incarnation,
            sequence=self._sequence,
            timestamp_ms=int(self._clock_s() * 1000),
            body_sha256=hashlib.sha256(body).hexdigest(),
            fingerprint=self._fingerprint,
        )
        signature = _signature(self._key, method, path, self._receiver, batch)
        authorization = (
            f"{SCHEME} sender={batch.sender}, incarnation={batch.incarnation}, "
            f"sequence={batch.sequence}, timestamp_ms={batch.timestamp_ms}, "
            f"body_sha256={batch.body_sha256}, signature={signature}"
        )
        return (
            (CLUSTER_FINGERPRINT_HEADER, batch.fingerprint),
            (AUTHORIZATION_HEADER, authorization),
        )


@dataclass(slots=True)
class _Stream:
    """The sequences accepted from one (sender, incarnation)."""

    highest: int
    below: int = 0  # bit i set: sequence highest - 1 - i was accepted too

    def is_new(self, sequence: int) -> bool:
        if sequence > self.highest:
            return True
        distance = self.highest - sequence
        return 0 < distance <= REPLAY_WINDOW_SEQUENCES and not (self.below >> (distance - 1)) & 1

    def accept(self, sequence: int) -> None:
        if sequence > self.highest:
            shift = sequence - self.highest
            if shift > REPLAY_WINDOW_SEQUENCES:  # the whole window is left behind
                self.below = 0  # (and a huge jump never shifts by a huge distance)
            else:
                self.below = ((self.below << 1 | 1) << (shift - 1)) & _WINDOW_MASK
            self.highest = sequence
        else:
            self.below |= 1 << (self.highest - sequence - 1)


_WINDOW_MASK = (1 << REPLAY_WINDOW_SEQUENCES) - 1
_NO_STREAMS: collections.OrderedDict[str, _Stream] = collections.OrderedDict()


class PeerAuthenticator:
    """The receiver's side: verifies batches addressed to `local_peer` by the other peers."""

    def __init__(
        self,
        *,
        local_peer: str,
        keys: Mapping[str, bytes],
        key_of: Callable[[str], bytes] | None = None,
        clock_s: Callable[[], float] = time.time,
    ) -> None:
        """`keys`: the bootstrap peers' keys; `key_of` derives the key of any other peer id
        (a peer that joined the ring later: docs/membership.md); without it, only `keys`."""
        self._local_peer = local_peer
        self._keys = {peer: key for peer, key in keys.items() if peer != local_peer}
        self._key_of = key_of
        self._derived: collections.OrderedDict[str, bytes] = collections.OrderedDict()
        self._clock_s = clock_s
        # sender -> incarnation -> stream, least recently accepted first; senders outside
        # `keys` (at most DERIVED_SENDERS_MAX), least recently accepted first too
        self._streams: dict[str, collections.OrderedDict[str, _Stream]] = {
            peer: collections.OrderedDict() for peer in self._keys
        }

    def _key(self, sender: str) -> bytes | None:
        """The sender's key: a bootstrap peer's, else derived (and remembered: at most
        DERIVED_SENDERS_MAX, the least recently used forgotten first)."""
        key = self._keys.get(sender)
        if key is not None or self._key_of is None or sender == self._local_peer:
            return key
        key = self._derived.get(sender)
        if key is None:
            key = self._derived[sender] = self._key_of(sender)
            if len(self._derived) > DERIVED_SENDERS_MAX:
                forgotten, _ = self._derived.popitem(last=False)
                self._streams.pop(forgotten, None)
        self._derived.move_to_end(sender)
        return key

    def verify_head(self, headers: Mapping[str, str], *, method: str, path: str) -> PeerCredential:
        """The checks a request head allows; raises PeerAuthError. Changes nothing."""
        scheme, _, fields = headers.get(AUTHORIZATION_HEADER, "").partition(" ")
        if scheme != SCHEME:
            raise PeerAuthError(Refusal.UNSIGNED)
        found = _FIELDS.fullmatch(fields)
        fingerprint = headers.get(CLUSTER_FINGERPRINT_HEADER, "")
        if found is None or not _FINGERPRINT.fullmatch(fingerprint):
            claimed = _CLAIMED_SENDER.match(fields)
            raise PeerAuthError(Refusal.MALFORMED, self._named(claimed[1] if claimed else None))
        sender, signature = found["sender"], found["signature"]
        credential = PeerCredential(
            sender=sender,
            incarnation=found["incarnation"],
            sequence=int(found["sequence"]),
            timestamp_ms=int(found["timestamp_ms"]),
            body_sha256=found["body_sha256"],
            fingerprint=fingerprint,
        )
        if credential.sequence > SEQUENCE_MAX:
            raise PeerAuthError(Refusal.MALFORMED, self._named(sender))
        key = self._key(sender)
        if key is None:
            raise PeerAuthError(Refusal.UNKNOWN_SENDER, self._named(sender))
        expected = _signature(key, method, path, self._local_peer, credential)
        if not hmac.compare_digest(expected, signature):
            raise PeerAuthError(Refusal.BAD_SIGNATURE, self._named(sender))
        skew_s = abs(self._clock_s() - credential.timestamp_ms / 1000)
        if not skew_s <= PEER_CLOCK_SKEW_MAX_S:
            raise PeerAuthError(Refusal.OUTSIDE_WINDOW, sender)
        stream = self._streams.get(sender, _NO_STREAMS).get(credential.incarnation)
        if stream is not None and not stream.is_new(credential.sequence):
            raise PeerAuthError(Refusal.REPLAYED, sender)
        return credential

    def verify_body(self, credential: PeerCredential, body: bytes) -> None:
        """The body is the one signed: then, and only then, its sequence is spent."""
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), credential.body_sha256):
            raise PeerAuthError(Refusal.BODY_MISMATCH, credential.sender)
        streams = self._streams.setdefault(credential.sender, collections.OrderedDict())
        stream = streams.get(credential.incarnation)
        if stream is None:
            if len(streams) >= INCARNATIONS_PER_SENDER_MAX:
                streams.popitem(last=False)
            stream = streams[credential.incarnation] = _Stream(highest=credential.sequence)
        elif stream.is_new(credential.sequence):  # again: another batch may have spent it
            stream.accept(credential.sequence)
        else:
            raise PeerAuthError(Refusal.REPLAYED, credential.sender)
        streams.move_to_end(credential.incarnation)

    def incarnations_remembered(self, sender: str) -> int:
        return len(self._streams.get(sender, ()))

    def _named(self, sender: str | None) -> str:
        """The claimed sender as an alarm may name it: a bootstrap peer's id or one that signed
        a batch accepted here, else "unknown" (an attacker's text never becomes a label)."""
        known = sender is not None and (sender in self._keys or sender in self._streams)
        return sender if known and sender is not None else _UNKNOWN_SENDER


def require_source(credential: PeerCredential, source: str) -> None:
    """A batch speaks only for the peer that signed it."""
    if source != credential.sender:
        raise PeerAuthError(Refusal.SOURCE_MISMATCH, credential.sender)


class PeerAlarm:
    """A rate-limited alarm about refused peer batches: `event` lines at level error, at most one
    per (sender, reason) per `PEER_ALARM_INTERVAL_S` (with how many were not logged since), and
    `counter{reason}` counting every refusal. Senders are peer ids or "unknown", reasons a fixed
    set: the memory is bounded by peers x reasons."""

    def __init__(
        self,
        *,
        event: str,
        counter: str,
        help_text: str,
        log: EventLog,
        metrics: Metrics,
        reasons: Iterable[str],
        clock_s: Callable[[], float] = time.monotonic,
    ) -> None:
        self._event = event
        self._counter = counter
        self._log = log
        self._metrics = metrics
        self._throttle = LogThrottle(PEER_ALARM_INTERVAL_S, clock_s=clock_s)
        known = [(("reason", reason),) for reason in reasons]  # every series from the start, at 0
        metrics.counter(counter, help_text, labelled=True, known=known)

    def raise_alarm(self, *, reason: str, sender: str, client: str, where: str) -> None:
        """One refusal: counted; logged unless this (sender, reason) was logged lately. `where`
        says which check refused it, or where a batch failed (a codec path, never a value)."""
        self._metrics.inc(self._counter, (("reason", reason),))
        suppressed = self._throttle.allow((sender, reason))
        if suppressed is None:
            return
        self._log.emit(
            self._event,
            level="error",
            reason=reason,
            sender=sender,
            client=client,
            where=where,
            suppressed=suppressed,
        )
