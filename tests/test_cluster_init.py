"""init_cluster writes a cluster load_config accepts, keeps secrets 0600, and never overwrites."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from tokenvault.cluster_init import ClusterKeys, InitError, init_cluster, load_keys
from tokenvault.config import ConfigError, load_config
from tokenvault.tokens import hash_api_key


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(directory)): path.read_bytes() if path.is_file() else b"<dir>"
        for path in sorted(directory.rglob("*"))
    }


def test_writes_a_cluster_that_load_config_accepts(tmp_path: Path) -> None:
    directory = tmp_path / "cluster"
    result = init_cluster(directory, nodes=3, base_port=7400)

    assert result.config_path == directory / "cluster.toml"
    config = load_config(result.config_path)
    assert [p.id for p in config.peers] == ["n1", "n2", "n3"]
    assert [p.address for p in config.peers] == [
        "127.0.0.1:7401",
        "127.0.0.1:7402",
        "127.0.0.1:7403",
    ]
    assert [p.data_dir for p in config.peers] == [directory / "data" / f"n{i}" for i in (1, 2, 3)]
    assert all(p.data_dir.is_dir() for p in config.peers)
    assert [p.data_dir for p in result.peers] == [p.data_dir for p in config.peers]
    assert config.name == "local"
    assert config.vnodes_per_peer == 64
    assert (config.quorum.replica_count, config.quorum.write_quorum) == (3, 2)
    assert config.quorum.read_quorum == 2
    assert len(config.secret) == 32
    assert [o.id for o in config.owners] == ["alice", "bob"]
    assert all(o.fields == {"ssn", "card_number", "email"} for o in config.owners)


def test_secret_and_keys_are_private_and_keys_match_the_hashes(tmp_path: Path) -> None:
    result = init_cluster(tmp_path, nodes=3, base_port=7400, owners=("alice", "bob", "carol.x"))

    assert _mode(result.secret_path) == 0o600
    assert _mode(result.keys_path) == 0o600
    raw = json.loads(result.keys_path.read_text())
    assert set(raw) == {"admin", "owners"}
    assert list(raw["owners"]) == ["alice", "bob", "carol.x"]
    config = load_config(result.config_path)
    assert hash_api_key(raw["admin"]) == config.admin_key_sha256
    for owner in config.owners:
        assert hash_api_key(raw["owners"][owner.id]) == owner.key_sha256
    keys = [raw["admin"], *raw["owners"].values()]
    assert all(key.startswith("tv_") and len(key) >= 40 for key in keys)
    assert len(set(keys)) == len(keys)
    # The keys never reach the config file in clear.
    config_text = result.config_path.read_text()
    assert not any(key in config_text for key in keys)
    assert not list(tmp_path.glob(".*.tmp"))


def test_two_clusters_get_different_secrets_and_keys(tmp_path: Path) -> None:
    first = init_cluster(
        tmp_path / "a", nodes=1, base_port=7400, replicas=1, write_quorum=1, read_quorum=1
    )
    second = init_cluster(
        tmp_path / "b", nodes=1, base_port=7400, replicas=1, write_quorum=1, read_quorum=1
    )
    assert first.secret_path.read_bytes() != second.secret_path.read_bytes()
    assert load_keys(first.keys_path).admin != load_keys(second.keys_path).admin


def test_single_node_cluster_and_other_host(tmp_path: Path) -> None:
    result = init_cluster(
        tmp_path,
        nodes=1,
        base_port=9000,
        replicas=1,
        write_quorum=1,
        read_quorum=1,
        host="localhost",
    )
    config = load_config(result.config_path)
    assert [p.address for p in config.peers] == ["localhost:9001"]


@pytest.mark.parametrize("name", ["cluster.toml", "keys.json", "secret"])
def test_refuses_to_overwrite_an_existing_cluster(tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_bytes(b"precious")
    before = _snapshot(tmp_path)

    with pytest.raises(InitError, match="already exists"):
        init_cluster(tmp_path, nodes=3, base_port=7400)

    assert _snapshot(tmp_path) == before


def test_a_second_init_changes_nothing(tmp_path: Path) -> None:
    init_cluster(tmp_path, nodes=3, base_port=7400)
    before = _snapshot(tmp_path)

    with pytest.raises(InitError):
        init_cluster(tmp_path, nodes=3, base_port=7400)

    assert _snapshot(tmp_path) == before


def test_refuses_a_data_directory_that_holds_data(tmp_path: Path) -> None:
    (tmp_path / "data" / "n2").mkdir(parents=True)
    (tmp_path / "data" / "n2" / "LOG").write_text("old")
    before = _snapshot(tmp_path)

    with pytest.raises(InitError, match="already holds data"):
        init_cluster(tmp_path, nodes=3, base_port=7400)

    assert _snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"nodes": 0}, "nodes"),
        ({"nodes": 2}, "replicas"),
        ({"replicas": 3, "write_quorum": 2, "read_quorum": 1}, "W \\+ R > N"),
        ({"nodes": 4, "replicas": 4, "write_quorum": 2, "read_quorum": 3}, "majority"),
        ({"replicas": 0}, "at least 1"),
        ({"base_port": 65534}, "ports"),
        ({"base_port": -5}, "ports"),
        ({"owners": ("alice", "alice")}, "unique"),
        ({"owners": ("al ice",)}, "owner id"),
        ({"owners": ()}, "at least one owner"),
        ({"host": "bad host"}, "host"),
    ],
)
def test_bad_parameters_write_nothing(
    tmp_path: Path, parameters: dict[str, Any], message: str
) -> None:
    directory = tmp_path / "new"
    arguments: dict[str, Any] = {"nodes": 3, "base_port": 7400, **parameters}

    with pytest.raises(InitError, match=message):
        init_cluster(directory, **arguments)

    assert not directory.exists()


def test_load_keys_refuses_a_malformed_file(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    with pytest.raises(ConfigError, match="no keys file"):
        load_keys(path)
    path.write_text('{"admin": 1, "owners": {}}')
    with pytest.raises(ConfigError):
        load_keys(path)
    path.write_text("not json")
    with pytest.raises(ConfigError):
        load_keys(path)


def test_cluster_keys_repr_shows_no_key() -> None:
    keys = ClusterKeys(admin="tv_secret_admin", owners={"alice": "tv_secret_alice"})
    assert "tv_secret" not in repr(keys)
    assert "alice" in repr(keys)
