"""Replica address lists (``ragfleet.runtime.channels``) and the local fleet's replicas
(``ragfleet up --replicas N``): targets, ports, names, and what each process is told."""

from __future__ import annotations

from pathlib import Path

import pytest

from ragfleet.runtime.channels import grpc_target
from ragfleet_tools.cli.fleet import Fleet, FleetSettings, replica_name

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("address", "target"),
    [
        ("127.0.0.1:50051", "127.0.0.1:50051"),
        ("dns:///embedder.ragfleet:50051", "dns:///embedder.ragfleet:50051"),
        ("127.0.0.1:50051,127.0.0.1:50061", "ipv4:127.0.0.1:50051,127.0.0.1:50061"),
        (" 10.0.0.5:1 , 10.0.0.6:2 ", "ipv4:10.0.0.5:1,10.0.0.6:2"),
        ("localhost:50051,127.0.0.1:50061", "ipv4:127.0.0.1:50051,127.0.0.1:50061"),
        ("[::1]:50051,[::1]:50061", "ipv6:[::1]:50051,[::1]:50061"),
    ],
)
def test_an_address_list_becomes_one_balanced_target(address: str, target: str) -> None:
    assert grpc_target(address) == target


@pytest.mark.parametrize(
    ("address", "complaint"),
    [
        ("127.0.0.1:50051,", "empty entry"),
        ("127.0.0.1:50051,127.0.0.1", "host:port"),
        ("127.0.0.1:50051,[::1]:50061", "IPv4 and IPv6"),
    ],
)
def test_a_bad_address_list_is_refused(address: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint):
        grpc_target(address)


def _fleet(tmp_path: Path, replicas: int, **ports: int) -> Fleet:
    return Fleet(FleetSettings(home=tmp_path, **ports), replicas)  # type: ignore[arg-type]


def test_replicas_get_consecutive_ports_and_the_retriever_stays_single(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 3)
    ports = {p.name: p.port for p in fleet.services()}
    assert ports == {
        "embedder": 50051,
        "embedder-2": 50061,
        "embedder-3": 50071,
        "retriever": 50052,
        "gateway": 50050,
        "gateway-2": 50060,
        "gateway-3": 50070,
    }
    assert fleet.port_conflicts() == []
    gateway = {p.name: p.env for p in fleet.services()}["gateway-3"]
    assert gateway["RAGFLEET_GATEWAY_REST_PORT"] == "8100"
    assert gateway["RAGFLEET_GATEWAY_EMBEDDER_ADDRESS"] == (
        "127.0.0.1:50051,127.0.0.1:50061,127.0.0.1:50071"
    )
    assert gateway["RAGFLEET_GATEWAY_RETRIEVER_ADDRESS"] == "127.0.0.1:50052"
    assert gateway["RAGFLEET_GATEWAY_FEEDBACK_SPOOL_DIR"].endswith("spool-3")
    assert fleet.gateway_addresses == "127.0.0.1:50050,127.0.0.1:50060,127.0.0.1:50070"
    assert list(fleet.health_targets()) == [*ports, "generator"]


def test_one_replica_is_the_fleet_as_before(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 1)
    assert [p.name for p in fleet.services()] == ["embedder", "retriever", "gateway"]
    assert fleet.embedder_addresses == "127.0.0.1:50051"
    assert "RAGFLEET_GENERATOR_NUM_REPLICAS" not in fleet.generator_env()
    assert "RAGFLEET_GENERATOR_NUM_CPUS" not in fleet.generator_env()


def test_embedder_replicas_split_the_cores(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    fleet = _fleet(tmp_path, 2, ray_num_cpus=4)
    embedders = [p.env for p in fleet.services() if p.module == "ragfleet_embedder"]
    assert [env["OMP_NUM_THREADS"] for env in embedders] == ["2", "2"]
    single = _fleet(tmp_path, 1, ray_num_cpus=4).services()[0]
    assert "OMP_NUM_THREADS" not in single.env


def test_serve_replicas_share_one_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RAGFLEET_GENERATOR_NUM_CPUS", raising=False)
    env = _fleet(tmp_path, 2).generator_env()
    assert env["RAGFLEET_GENERATOR_NUM_REPLICAS"] == "2"
    assert float(env["RAGFLEET_GENERATOR_NUM_CPUS"]) == 0.5


def test_colliding_replica_ports_are_reported(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 2, embedder_port=50040, gateway_port=50050)
    assert fleet.port_conflicts() == ["port 50050: embedder and gateway"]


def test_the_replica_count_is_recorded_and_every_replica_found(tmp_path: Path) -> None:
    fleet = _fleet(tmp_path, 3)
    fleet.record_replicas()
    assert Fleet(FleetSettings(home=tmp_path)).replicas == 3
    for name in ("gateway", "gateway-2", "gateway-10", "gateway-3", "gateway-rest"):
        (fleet.run_dir / f"{name}.pid").write_text("1")
    assert fleet.process_names("gateway") == ["gateway", "gateway-2", "gateway-3", "gateway-10"]
    fleet.forget_replicas()
    assert Fleet(FleetSettings(home=tmp_path)).replicas == 1


def test_replica_names() -> None:
    assert [replica_name("embedder", i) for i in range(3)] == [
        "embedder",
        "embedder-2",
        "embedder-3",
    ]
