"""cluster_fingerprint: equal for every file of one cluster, different when placement or
tokenization would differ."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from tokenvault.cluster_init import init_cluster
from tokenvault.config import (
    SECRET_FILE_ENVIRONMENT_VARIABLE,
    ClusterConfig,
    ConfigError,
    OwnerConfig,
    cluster_fingerprint,
    load_config,
)
from tokenvault.node import peer_limits
from tokenvault.quorum.quorum_config import QuorumConfig


@pytest.fixture
def config(tmp_path: Path) -> ClusterConfig:
    return load_config(init_cluster(tmp_path / "c", nodes=3, base_port=7400).config_path)


def test_is_32_hex_digits_and_stable(config: ClusterConfig, tmp_path: Path) -> None:
    fingerprint = cluster_fingerprint(config)
    assert len(fingerprint) == 32 and int(fingerprint, 16) >= 0
    assert cluster_fingerprint(load_config(config.path)) == fingerprint


def test_what_each_peer_may_set_for_itself_does_not_count(config: ClusterConfig) -> None:
    moved = tuple(
        dataclasses.replace(p, host="10.0.0.9", port=9000 + i, data_dir=Path("/elsewhere"))
        for i, p in enumerate(config.peers)
    )
    rekeyed = tuple(dataclasses.replace(o, key_sha256="0" * 64) for o in config.owners)
    same = dataclasses.replace(
        config,
        peers=tuple(reversed(moved)),
        owners=tuple(reversed(rekeyed)),
        anti_entropy_interval_s=0.0,
        transfer_rate_mb_s=1.5,
        admin_key_sha256="1" * 64,
        secret=b"x" * 32,
    )
    assert cluster_fingerprint(same) == cluster_fingerprint(config)


def _with_owner_fields(config: ClusterConfig, fields: frozenset[str]) -> ClusterConfig:
    first, *rest = config.owners
    return dataclasses.replace(
        config, owners=(OwnerConfig(id=first.id, key_sha256=first.key_sha256, fields=fields), *rest)
    )


@pytest.mark.parametrize(
    "change",
    [
        lambda c: dataclasses.replace(c, name="other"),
        lambda c: dataclasses.replace(c, vnodes_per_peer=65),
        lambda c: dataclasses.replace(
            c, quorum=QuorumConfig(replica_count=3, write_quorum=3, read_quorum=1)
        ),
        lambda c: dataclasses.replace(c, peers=c.peers[:2]),
        lambda c: dataclasses.replace(
            c, peers=(dataclasses.replace(c.peers[0], id="n9"), *c.peers[1:])
        ),
        lambda c: dataclasses.replace(c, owners=c.owners[:1]),
        lambda c: _with_owner_fields(c, frozenset({"ssn"})),
    ],
    ids=["name", "vnodes", "quorum", "peer removed", "peer renamed", "owner removed", "fields"],
)
def test_what_decides_placement_or_tokens_counts(config: ClusterConfig, change: object) -> None:
    assert callable(change)
    assert cluster_fingerprint(change(config)) != cluster_fingerprint(config)


def test_the_secret_file_may_be_named_by_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TOKENVAULT_SECRET_FILE overrides [cluster] secret_file: the secret may live outside the
    cluster directory (a container's secret mount)."""
    init = init_cluster(tmp_path / "c", nodes=3, base_port=7100)
    elsewhere = tmp_path / "mounted-secret"
    elsewhere.write_bytes(b"e" * 32)
    monkeypatch.setenv(SECRET_FILE_ENVIRONMENT_VARIABLE, str(elsewhere))
    assert load_config(init.config_path).secret == b"e" * 32
    elsewhere.write_bytes(b"short")
    with pytest.raises(ConfigError, match="at least 32 bytes"):
        load_config(init.config_path)
    monkeypatch.setenv(SECRET_FILE_ENVIRONMENT_VARIABLE, str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="cannot read the secret file"):
        load_config(init.config_path)
    monkeypatch.delenv(SECRET_FILE_ENVIRONMENT_VARIABLE)
    assert load_config(init.config_path).secret != b"e" * 32


def test_the_transfer_rate_defaults_to_10_mb_s_and_is_bounded(
    config: ClusterConfig, tmp_path: Path
) -> None:
    assert config.transfer_rate_mb_s == 10.0
    text = config.path.read_text()
    assert "[cluster]\n" in text
    for rate, valid in (("2.5", True), ("0", False), ("true", False), ('"fast"', False)):
        config.path.write_text(
            text.replace("[cluster]\n", f"[cluster]\ntransfer_rate_mb_s = {rate}\n")
        )
        if valid:
            loaded = load_config(config.path)
            assert loaded.transfer_rate_mb_s == float(rate)
            assert peer_limits(loaded).transfer.rate_bytes_s == float(rate) * 1_000_000
        else:
            with pytest.raises(ConfigError, match="transfer_rate_mb_s"):
                load_config(config.path)
