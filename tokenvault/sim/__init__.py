"""The deterministic simulator: the real sans-IO cores (ring, quorum) and the in-memory store,
driven by a seeded discrete-event loop. No trio, no sockets, no wall clock: the same seed gives
the same run and the same digest, byte for byte. See docs/simulation.md.

Modules, one job each: engine (clock, queue, digest), faults (the fault mix and schedule),
network (links and partitions), peer (a peer and the driver rules), cluster (peers, network,
faults applied), workload (clients), history (what they saw), checker (the invariants), runner
(one run), cli (`tokenvault sim`).
"""

from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, SimStats, run_simulation

__all__ = ["SimConfig", "SimResult", "SimStats", "run_simulation"]
