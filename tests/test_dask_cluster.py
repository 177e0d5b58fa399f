"""Cluster selection: options and environment, a real LocalCluster, real scheduler and worker processes."""

from __future__ import annotations

import pytest

from lucid.dask.cluster import ClusterError, ClusterSpec, connect

pytest.importorskip("distributed")


def test_nothing_asked_means_this_machine_and_the_environment_joins():
    assert ClusterSpec.from_options(env={}) is None
    spec = ClusterSpec.from_options(env={"DASK_SCHEDULER_ADDRESS": "tcp://127.0.0.1:1"})
    assert spec.scheduler == "tcp://127.0.0.1:1"
    assert ClusterSpec.from_options(workers=2, env={"DASK_SCHEDULER_ADDRESS": "x"}).workers == 2
    with pytest.raises(ValueError, match="not scheduler and workers"):
        ClusterSpec("tcp://127.0.0.1:1", workers=2)


def test_local_cluster_is_loopback_only_without_dashboard_and_stops():
    with connect(ClusterSpec(workers=2, memory_limit="1GiB")) as client:
        info = client.scheduler_info()
        assert len(info["workers"]) == 2
        assert all(w.startswith("tcp://127.0.0.1:") for w in info["workers"])
        assert client.scheduler.address.startswith("tcp://127.0.0.1:")
        assert client.dashboard_link is None or "127.0.0.1" in client.dashboard_link
        assert sorted(client.gather(client.map(lambda x: x * 2, range(4)))) == [0, 2, 4, 6]
        cluster = client.cluster
    assert cluster.status.name == "closed"


def test_joins_real_scheduler_processes_by_address_and_file(dask_processes):
    for spec in (ClusterSpec(scheduler=dask_processes.address),
                 ClusterSpec(scheduler_file=dask_processes.scheduler_file)):
        with connect(spec) as client:
            assert len(client.scheduler_info()["workers"]) == 2


def test_unreachable_scheduler_is_one_line(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(ClusterError, match=f"cannot reach the scheduler tcp://127.0.0.1:{port}") as err:
        with connect(ClusterSpec(scheduler=f"tcp://127.0.0.1:{port}"), timeout=2):
            pass
    assert "\n" not in str(err.value)
    with pytest.raises(ClusterError, match="no such scheduler file"):
        with connect(ClusterSpec(scheduler_file=str(tmp_path / "none.json"))):
            pass


def test_cluster_errors_are_one_line_not_internal_errors():
    from lucid_cli.main import _describe_error

    assert _describe_error(ClusterError("cannot reach the scheduler tcp://h:1: refused"), "in.h5") == (
        "cannot reach the scheduler tcp://h:1: refused", 1)
