"""Wire contracts: generated code is fresh and the services carry the names other tools rely on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from faultlab.protos.agent.v1 import agent_pb2
from faultlab.protos.raft.v1 import raft_pb2

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_fresh() -> None:
    result = subprocess.run([sys.executable, "tools/gen_protos.py", "--check"], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr + result.stdout


def test_packages_and_services() -> None:
    assert raft_pb2.DESCRIPTOR.package == "faultlab.raft.v1"
    assert set(raft_pb2.DESCRIPTOR.services_by_name.keys()) == {"Peer", "KV", "Cluster"}
    methods = set(agent_pb2.DESCRIPTOR.services_by_name["FaultAgent"].methods_by_name.keys())
    assert methods == {
        "Inject", "Recover", "List", "RecoverAll"}


def test_field_names_other_tools_rely_on() -> None:
    put = raft_pb2.PutRequest(key=b"k", value=b"v")
    get = raft_pb2.GetResponse(found=True, value=b"v")
    assert (put.key, get.found, get.value) == (b"k", True, b"v")
    assert raft_pb2.Role.Name(raft_pb2.ROLE_LEADER).endswith("LEADER")
    status = raft_pb2.StatusResponse(leader_id="n1", term=3, role=raft_pb2.ROLE_LEADER)
    assert status.leader_id == "n1" and status.term == 3
