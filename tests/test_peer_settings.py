"""A peer's settings: flags over the environment over cluster.toml, errors naming their source;
and the healthcheck's answer when there is no peer to ask."""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tokenvault.cli import main
from tokenvault.cluster_init import InitResult, init_cluster
from tokenvault.config import ConfigError
from tokenvault.healthcheck import EXIT_UNHEALTHY, check
from tokenvault.peer_settings import (
    PER_PEER_ENVIRONMENT_VARIABLES,
    NodeFlags,
    resolve_peer_settings,
)


@pytest.fixture
def made(tmp_path: Path) -> InitResult:
    result = init_cluster(tmp_path / "c", nodes=3, base_port=7500)
    text = result.config_path.read_text()
    # n2 binds elsewhere by file
    old = 'address = "127.0.0.1:7502"'
    result.config_path.write_text(text.replace(old, f'{old}\nlisten = "0.0.0.0:7602"'))
    return result


def test_the_file_alone(made: InitResult) -> None:
    environment = {"TOKENVAULT_CONFIG": str(made.config_path), "TOKENVAULT_ID": "n2"}
    settings = resolve_peer_settings(NodeFlags(), environment)
    peer = settings.config.peer("n2")
    assert settings.peer_id == "n2"
    assert peer.address == "127.0.0.1:7502" and peer.listen_address == ("0.0.0.0", 7602)
    assert peer.data_dir == made.config_path.parent / "data" / "n2"
    n1 = settings.config.peer("n1")
    assert n1.listen_address == ("127.0.0.1", 7501)  # no `listen`: its address


def test_flags_win_over_the_environment_which_wins_over_the_file(
    made: InitResult, tmp_path: Path
) -> None:
    secrets = {name: tmp_path / name for name in ("by-flag", "by-variable")}
    for index, path in enumerate(secrets.values()):
        path.write_bytes(bytes([65 + index]) * 32)
    environment = {
        "TOKENVAULT_CONFIG": str(made.config_path),
        "TOKENVAULT_ID": "n1",
        "TOKENVAULT_LISTEN": "0.0.0.0:7600",
        "TOKENVAULT_DATA_DIR": str(tmp_path / "variable-data"),
        "TOKENVAULT_SECRET_FILE": str(secrets["by-variable"]),
    }
    by_variables = resolve_peer_settings(NodeFlags(), environment)
    peer = by_variables.config.peer("n1")
    assert peer.listen_address == ("0.0.0.0", 7600)
    assert peer.data_dir == tmp_path / "variable-data"
    assert by_variables.config.secret == b"B" * 32
    assert peer.address == "127.0.0.1:7501"  # what the others dial is the file's

    flags = NodeFlags(
        config=made.config_path,
        peer_id="n3",
        listen="[::]:7700",
        data_dir=tmp_path / "flag-data",
        secret_file=secrets["by-flag"],
    )
    by_flags = resolve_peer_settings(flags, {**environment, "TOKENVAULT_CONFIG": "/nowhere"})
    peer = by_flags.config.peer("n3")
    assert by_flags.peer_id == "n3"
    assert peer.listen_address == ("::", 7700)
    assert peer.data_dir == tmp_path / "flag-data"
    assert by_flags.config.secret == b"A" * 32
    # Only the started peer's entry changes.
    assert by_flags.config.peer("n1").data_dir == made.config_path.parent / "data" / "n1"


@pytest.mark.parametrize(
    ("flags", "environment", "message"),
    [
        (NodeFlags(), {"TOKENVAULT_ID": "n1"}, "give --config or set TOKENVAULT_CONFIG"),
        (NodeFlags(config=Path("CONFIG")), {}, "give --id or set TOKENVAULT_ID"),
        (NodeFlags(config=Path("CONFIG")), {"TOKENVAULT_ID": ""}, "TOKENVAULT_ID is given but"),
        (NodeFlags(config=Path("CONFIG")), {"TOKENVAULT_ID": "n9"}, "n9.*from TOKENVAULT_ID"),
        (NodeFlags(config=Path("CONFIG"), peer_id="n9"), {}, r"n9.*from --id"),
        (
            NodeFlags(config=Path("CONFIG"), peer_id="n1"),
            {"TOKENVAULT_LISTEN": "0.0.0.0"},
            "TOKENVAULT_LISTEN must be host:port",
        ),
        (
            NodeFlags(config=Path("CONFIG"), peer_id="n1", listen="host:99999"),
            {},
            "--listen must be host:port",
        ),
        (
            NodeFlags(config=Path("CONFIG"), peer_id="n1"),
            {"TOKENVAULT_DATA_DIR": ""},
            "TOKENVAULT_DATA_DIR is given but empty",
        ),
        (
            NodeFlags(config=Path("CONFIG"), peer_id="n1", secret_file=Path("/no/such")),
            {},
            "cannot read the secret file /no/such",
        ),
    ],
)
def test_bad_settings_say_where_they_came_from(
    made: InitResult, flags: NodeFlags, environment: dict[str, str], message: str
) -> None:
    if flags.config is not None:  # CONFIG: this test's cluster
        flags = dataclasses.replace(flags, config=made.config_path)
    with pytest.raises(ConfigError, match=message):
        resolve_peer_settings(flags, environment)


def test_node_without_a_configuration_is_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("TOKENVAULT_CONFIG", raising=False)
    assert main(["node", "--id", "n1"]) == 2
    error = capsys.readouterr().err
    assert error.strip().count("\n") == 0 and "TOKENVAULT_CONFIG" in error


def test_the_healthcheck_without_a_peer_is_unhealthy(made: InitResult) -> None:
    code, line = check({})
    assert code == EXIT_UNHEALTHY and line.startswith("unhealthy: no configuration")
    environment = {"TOKENVAULT_CONFIG": str(made.config_path), "TOKENVAULT_ID": "n1"}
    code, line = check(environment)  # nothing listens on n1's port
    assert code == EXIT_UNHEALTHY and "127.0.0.1:7501" in line


def test_up_hands_its_peers_no_per_peer_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    """`up` starts every peer from its own environment: one TOKENVAULT_LISTEN or _DATA_DIR
    there would send all its peers to one port or one store. The shared secret's file stays."""
    from tokenvault.cli.peer_processes import _child_environment

    for name in PER_PEER_ENVIRONMENT_VARIABLES:
        monkeypatch.setenv(name, "x")
    monkeypatch.setenv("TOKENVAULT_SECRET_FILE", "/run/secrets/s")
    environment = _child_environment()
    assert not set(PER_PEER_ENVIRONMENT_VARIABLES) & set(environment)
    assert environment["TOKENVAULT_SECRET_FILE"] == "/run/secrets/s"


def test_sigterm_while_the_peer_starts_exits_0_at_once(made: InitResult) -> None:
    """Between `node`'s start and the peer's own handler (stand-in: a run_node that signals
    itself and hangs) SIGTERM ends the process with exit 0, not the default death."""
    script = (
        "import os, signal, sys, time\n"
        "import tokenvault.peer_process as peer_process\n"
        "from tokenvault.cli import main\n"
        "def starting(*args, **kwargs):\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(30)\n"
        "peer_process.run_node = starting\n"
        f"sys.exit(main(['node', '--config', {str(made.config_path)!r}, '--id', 'n1']))\n"
    )
    started = time.monotonic()
    completed = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert completed.returncode == 0, completed.stderr
    assert time.monotonic() - started < 20


def test_a_bad_listen_in_the_file_is_refused(made: InitResult) -> None:
    text = made.config_path.read_text()
    made.config_path.write_text(text.replace('listen = "0.0.0.0:7602"', 'listen = "0.0.0.0"'))
    with pytest.raises(ConfigError, match=r"\[\[peer\]\] n2: listen must be host:port"):
        resolve_peer_settings(NodeFlags(config=made.config_path, peer_id="n1"), {})


def test_a_joining_peer_is_its_own_entry_and_the_file_stays_the_bootstrap(
    made: InitResult, tmp_path: Path
) -> None:
    flags = NodeFlags(config=made.config_path, peer_id="n4", join=True, address="10.0.0.4:7404")
    settings = resolve_peer_settings(flags, {})
    assert settings.joining is not None
    assert (settings.joining.id, settings.joining.address) == ("n4", "10.0.0.4:7404")
    assert settings.joining.data_dir == made.config_path.parent / "data" / "n4"
    assert [p.id for p in settings.config.peers] == ["n1", "n2", "n3"]  # the fingerprint's
    environment = {
        "TOKENVAULT_CONFIG": str(made.config_path),
        "TOKENVAULT_ID": "n5",
        "TOKENVAULT_JOIN": "true",
        "TOKENVAULT_ADDRESS": "10.0.0.5:7405",
        "TOKENVAULT_DATA_DIR": str(tmp_path / "n5-data"),
    }
    by_variables = resolve_peer_settings(NodeFlags(), environment)
    assert by_variables.joining is not None
    assert by_variables.joining.address == "10.0.0.5:7405"
    assert by_variables.joining.data_dir == tmp_path / "n5-data"
    not_joining = environment | {"TOKENVAULT_JOIN": "0"}
    assert resolve_peer_settings(NodeFlags(peer_id="n1"), not_joining).joining is None
    bootstrap = resolve_peer_settings(NodeFlags(config=made.config_path, peer_id="n1"), {})
    assert bootstrap.joining is None


@pytest.mark.parametrize(
    ("flags", "environment", "message"),
    [
        (NodeFlags(peer_id="n1", join=True, address="10.0.0.9:7409"), {}, "bootstrap peer"),
        (NodeFlags(peer_id="n4", join=True), {}, "needs its address"),
        (NodeFlags(peer_id="n4", address="10.0.0.4:7404"), {}, "give --join too"),
        (NodeFlags(peer_id="n4"), {}, "a new peer joins with --join"),
        (NodeFlags(peer_id="n4", join=True, address="nowhere"), {}, "--address must be host"),
        (NodeFlags(peer_id="n4", join=True, address="127.0.0.1:7501"), {}, "bootstrap peer's"),
        (NodeFlags(peer_id="n4"), {"TOKENVAULT_JOIN": "yes"}, "TOKENVAULT_JOIN must be"),
        (NodeFlags(peer_id="n4", join=True), {"TOKENVAULT_ADDRESS": ""}, "is given but empty"),
    ],
)
def test_join_settings_that_cannot_be_are_errors(
    made: InitResult, flags: NodeFlags, environment: dict[str, str], message: str
) -> None:
    flags = dataclasses.replace(flags, config=made.config_path)
    with pytest.raises(ConfigError, match=message):
        resolve_peer_settings(flags, environment)
