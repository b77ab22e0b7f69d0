"""Fuzzing: schemathesis against a live 3-peer cluster, from the OpenAPI document the cluster
serves (GET /v1/openapi.json, checked equal to docs/openapi.yaml first).

Every check schemathesis has (no 5xx; status codes, content types, headers and bodies as the
document says; schema-violating requests refused with a 4xx; 405 with `Allow` on every other
method; 401 without a key) runs in its examples, coverage, fuzzing and stateful phases, once with
an owner's key and once with the admin key, each on another peer. Bounded: EXAMPLES_PER_OPERATION
cases per operation and phase, a fixed seed (TOKENVAULT_SCHEMATHESIS_SEED picks another), and a
hard RUN_TIMEOUT_S per run. Afterwards the peers logged no error and no traceback, and a mapping
made before the run still reads back: nothing the fuzzer sent changed what the vault held.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import Cluster
from tests.e2e.test_cluster import detokenize, tokenize
from tests.http.test_openapi import load_source

pytestmark = pytest.mark.e2e

EXAMPLES_PER_OPERATION = 80
# A hang guard, not a speed bound: it scales with the document's operations (25 since HEAD is
# listed beside every GET: a run took 140 s of 150 on a loaded 2-core machine).
RUN_TIMEOUT_S = 300.0
SEED = int(os.environ.get("TOKENVAULT_SCHEMATHESIS_SEED", "20260101"))
# Refusals a request that violates the document may get (schemathesis' default list lacks 413,
# which the document gives for lists and values over their limits).
NEGATIVE_STATUSES = ["400", "401", "403", "404", "405", "413"]
# Operations not fuzzed, by operationId: a membership change the fuzzer found valid would change
# the ring of the cluster under test (its refusals are tests/http/test_api_members.py's).
NOT_FUZZED = {"changeMembers": "POST /v1/admin/members"}


def run_schemathesis(cluster: Cluster, peer: str, key: str, directory: Path) -> None:
    """One schemathesis run against `peer` with `key`; fails the test on any finding."""
    directory.mkdir()
    served = httpx.get(cluster.url(peer) + "/v1/openapi.json", timeout=10, verify=cluster.verify)
    assert served.status_code == 200 and served.json() == load_source()
    (directory / "openapi.json").write_bytes(served.content)
    # The key goes in a file of the run's own directory, not on a command line.
    config = directory / "schemathesis.toml"
    config.write_text(
        f"[headers]\nAuthorization = {json.dumps('Bearer ' + key)}\n\n"
        "[checks.negative_data_rejection]\n"
        f"expected-statuses = {json.dumps(NEGATIVE_STATUSES)}\n"
    )
    config.chmod(0o600)
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(config),
        "run",
        "openapi.json",
        "--url",
        cluster.url(peer),
        "--checks",
        "all",
        "--max-examples",
        str(EXAMPLES_PER_OPERATION),
        "--seed",
        str(SEED),
        "--workers",
        "1",
        "--request-timeout",
        "10",
        *(option for operation in NOT_FUZZED for option in ("--exclude-operation-id", operation)),
        "--report",
        "junit",
        "--report-junit-path",
        "junit.xml",
    ]
    if cluster.ca_path is not None:
        command += ["--tls-verify", str(cluster.ca_path)]
    # Loopback only: no proxy may see these requests.
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    result = subprocess.run(
        command,
        cwd=directory,  # its caches (.hypothesis, .schemathesis) stay in the test's directory
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    report = result.stdout[-12_000:] + result.stderr[-2_000:]
    assert result.returncode == 0, report
    suite = ElementTree.parse(directory / "junit.xml").getroot()
    assert (suite.get("failures"), suite.get("errors")) == ("0", "0"), report
    exercised = {case.get("name") for case in suite.iter("testcase")}
    documented = {
        f"{method.upper()} {path}"
        for path, operations in load_source()["paths"].items()
        for method in operations
    }
    assert documented - set(NOT_FUZZED.values()) <= exercised, (documented - exercised, report)


def test_schemathesis_finds_no_server_error_and_no_answer_outside_the_document(
    cluster: Cluster, tmp_path: Path
) -> None:
    c = cluster
    made = tokenize(c, "n3", "alice", [{"ssn": "before-the-fuzzing"}])
    assert made.status_code == 200
    token = made.json()["records"][0]["ssn"]

    run_schemathesis(c, "n1", c.owner_keys["alice"], tmp_path / "owner")
    run_schemathesis(c, "n2", c.admin_key, tmp_path / "admin")

    for peer in c.peer_ids:
        assert httpx.get(c.url(peer) + "/healthz", timeout=10, verify=c.verify).status_code == 200
        lines = c.log(peer).splitlines()
        assert all(line.startswith("{") for line in lines), peer  # no traceback, no plain text
        assert not [e for e in c.log_events(peer) if e.get("level") == "error"], peer
    answer = detokenize(c, "n3", "alice", [token])
    assert answer.status_code == 200
    assert answer.json()["results"][0]["value"] == "before-the-fuzzing"
