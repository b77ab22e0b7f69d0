"""The alarm for peer batches from another cluster configuration (a peer started on a stale or
foreign cluster.toml): the peer endpoint refuses them, and this says so to an operator.

Rules: every refusal is counted; at most one `config_mismatch` line (level error) per sender per
`CONFIG_MISMATCH_LOG_INTERVAL_S`, remembering at most `CONFIG_MISMATCH_SENDERS_MAX` senders. The
line names the sending peer (its id, authenticated by the batch's signature), its address, and
both fingerprints (a malformed one is not echoed).
"""

from __future__ import annotations

import re

import trio

from tokenvault.log import EventLog, LogThrottle
from tokenvault.metrics import Metrics

CONFIG_MISMATCH_LOG_INTERVAL_S = 60.0
CONFIG_MISMATCH_SENDERS_MAX = 1_000
_FINGERPRINT = re.compile(r"[0-9a-f]{32}")


class ConfigMismatchAlarm:
    def __init__(self, *, ours: str, log: EventLog, metrics: Metrics) -> None:
        self._ours = ours
        self._log = log
        self._metrics = metrics
        metrics.counter(
            "tokenvault_config_mismatches_total",
            "Peer batches refused because the sender's cluster fingerprint differs.",
        )
        self._throttle = LogThrottle(
            CONFIG_MISMATCH_LOG_INTERVAL_S,
            keys_max=CONFIG_MISMATCH_SENDERS_MAX,
            clock_s=trio.current_time,
        )

    def refused(self, sender: str, address: str, fingerprint: str) -> None:
        self._metrics.inc("tokenvault_config_mismatches_total")
        if self._throttle.allow(sender) is None:
            return
        self._log.emit(
            "config_mismatch",
            level="error",
            sender=sender,
            address=address,
            theirs=fingerprint if _FINGERPRINT.fullmatch(fingerprint) else "missing-or-malformed",
            ours=self._ours,
        )
