"""`tokenvault bench`: tokenvault against etcd on the same machine, with the same external load
generator (wrk where installed), in one sitting; a progress line per figure on stderr and a
table (or JSON) on stdout.

Rules:
- The bench owns every process it starts (peers, etcd members, load generators) and stops each
  by PID on every way out; ports are free loopback ports; nothing it prints shows a key.
- Without wrk, a Python fallback generator drives the same requests, and the report says it is
  not wrk; without etcd, tokenvault is measured alone and the report prints no ratio.

One module per job: workloads (what is measured against what), load (wrk or the fallback, run
as processes), python_load (the fallback itself), figures (a RESULT line and its rates),
tokenvault_side and etcd_side (the clusters), processes (ports, CPU time, waits, stopping),
progress (stderr lines), report (table and JSON), command (the rounds). The wrk scripts are
package data in lua/. This package's __init__ imports nothing: the command line imports
`command` only when `bench` runs (every other command starts without it).
"""

from __future__ import annotations
