"""The deterministic simulator: the real sans-IO cores node.py runs (ring, replica, acceptor,
coordinator, epoch coordinator, failure detector, hinted handoff, anti-entropy) and the
in-memory store, routed as node.py routes them and driven by a seeded discrete-event loop. No
trio, no sockets, no wall clock: the same seed gives the same run and the same digest, byte for
byte. See docs/simulation.md.

Modules, one job each: engine (clock, queue, digest), faults (the fault mix and schedule),
network (links and partitions), peer (a peer, the driver rules, node.py's routing and the API's
tokenize loop), cluster (peers, network, faults applied), workload (clients), history (what they
saw), observer (what happened inside the peers), checker (the invariants), runner (one run and
its phases), scenario (hand-built runs), shrink, cli (`tokenvault sim`).
"""

from tokenvault.sim.config import SimConfig
from tokenvault.sim.runner import SimResult, SimStats, run_simulation

__all__ = ["SimConfig", "SimResult", "SimStats", "run_simulation"]
