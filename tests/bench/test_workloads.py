"""The workloads: names, order, and what each is compared with."""

from __future__ import annotations

import pytest

from tokenvault.cli.bench.workloads import WORKLOAD_NAMES, Shape, parse_workloads


def test_a_subset_runs_in_the_table_order() -> None:
    chosen = parse_workloads(" detokenize-1,tokenize-1 ,tokenize-1")
    assert [w.name for w in chosen] == ["tokenize-1", "detokenize-1"]
    assert [w.name for w in parse_workloads(",".join(WORKLOAD_NAMES))] == list(WORKLOAD_NAMES)


@pytest.mark.parametrize("text", ["tokenize-2", "", " , "])
def test_unknown_or_no_workload_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_workloads(text)


def test_each_workload_has_its_etcd_counterpart() -> None:
    by_name = {w.name: w for w in parse_workloads(",".join(WORKLOAD_NAMES))}
    assert by_name["tokenize-100"].etcd_operation == "put-if-absent-100"
    assert by_name["detokenize-1"].etcd_operation == "range-1"
    assert by_name["detokenize-1"].needs_stored_keys
    assert by_name["spread-tokenize-1"].spread and not by_name["tokenize-1"].spread
    assert Shape.ETCD_RANGE.path(1) == "/v3/kv/range"
    assert Shape.ETCD_RANGE.path(100) == "/v3/kv/txn"
    assert Shape.TOKENVAULT_DETOKENIZE.path(100) == "/v1/detokenize"
