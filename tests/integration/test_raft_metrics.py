"""Prometheus metrics of real `faultlab-node raft` processes (`--metrics-listen`): the series an
operator alerts on move with the cluster (term, role, commit index, apply lag, proposals, fsync
latency, group commit and pipeline batching)."""

from __future__ import annotations

import asyncio
import re
import urllib.request
from pathlib import Path

import pytest

from tests.integration.cluster import LocalRaftCluster, free_address

pytestmark = pytest.mark.timeout(120)


def scrape(address: str) -> dict[str, float]:
    """``name{labels}`` -> value of every sample at http://address/metrics."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def value(samples: dict[str, float], pattern: str) -> float:
    hits = [v for k, v in samples.items() if re.fullmatch(pattern, k)]
    assert len(hits) == 1, f"{pattern}: {len(hits)} samples among {sorted(samples)[:40]}"
    return hits[0]


async def test_metrics_follow_leadership_writes_and_batches(tmp_path: Path) -> None:
    c = LocalRaftCluster(tmp_path, 3)
    metrics = {}
    for mid, m in c.members.items():
        metrics[mid] = free_address()
        m.args = ["--metrics-listen", metrics[mid]]
    c.start()
    try:
        leader = await c.wait_leader()
        async with c.client(pipeline=True) as kv:
            await asyncio.gather(*(kv.put(f"k{i}", "v") for i in range(200)))
        await c.wait_caught_up()
        lead = scrape(metrics[leader])
        member = f'member="{leader}"'
        assert value(lead, f"faultlab_raft_is_leader{{{member}}}") == 1
        assert value(lead, f"faultlab_raft_role{{{member}}}") == 4
        assert value(lead, f"faultlab_raft_term{{{member}}}") >= 1
        assert value(lead, f"faultlab_raft_commit_index{{{member}}}") >= 200
        assert value(lead, f"faultlab_raft_apply_lag{{{member}}}") == 0
        assert value(lead, f'faultlab_raft_proposals_total{{{member},result="ok"}}') >= 200
        assert value(lead, f"faultlab_raft_fsync_seconds_count{{{member}}}") >= 1
        # 200 writes from one client in one gather travel in far fewer messages than writes.
        messages = value(lead, f"faultlab_raft_pipeline_batch_operations_count{{{member}}}")
        operations = value(lead, f"faultlab_raft_pipeline_batch_operations_sum{{{member}}}")
        assert operations >= 200 and messages <= operations / 2, (messages, operations)
        documented = ("faultlab_raft_applied_index", "faultlab_raft_linearizable_reads_total",
                      "faultlab_raft_leader_changes_total", "faultlab_raft_snapshots_total",
                      "faultlab_raft_ready_entries_bucket",
                      f'faultlab_raft_proposals_total{{{member},result="failed"}}')
        missing = [n for n in documented if not any(k.startswith(n) for k in lead)]
        assert not missing, f"series the README names are not served: {missing}"
        follower = next(m for m in c.members if m != leader)
        other = scrape(metrics[follower])
        assert value(other, f'faultlab_raft_is_leader{{member="{follower}"}}') == 0
        assert value(other, f'faultlab_raft_role{{member="{follower}"}}') == 1
        assert value(other, f'faultlab_raft_commit_index{{member="{follower}"}}') >= 200
    finally:
        c.close()
