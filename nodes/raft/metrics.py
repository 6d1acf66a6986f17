"""Prometheus metrics of a Raft node (served by `--metrics-listen`).

One node runs per process, so the metrics live in the default registry and are
created once per process; every series carries the member id as a label.
"""

from __future__ import annotations

from functools import cache

from prometheus_client import Counter, Gauge, Histogram


class RaftMetrics:
    def __init__(self, member: str) -> None:
        m = _metrics()
        self.term = m["term"].labels(member)
        self.role = m["role"].labels(member)
        self.commit = m["commit"].labels(member)
        self.applied = m["applied"].labels(member)
        self.apply_lag = m["apply_lag"].labels(member)
        self.is_leader = m["is_leader"].labels(member)
        self.proposals_ok = m["proposals"].labels(member, "ok")
        self.proposals_failed = m["proposals"].labels(member, "failed")
        self.reads = m["reads"].labels(member)
        self.fsync = m["fsync"].labels(member)
        self.ready_entries = m["ready_entries"].labels(member)
        self.pipeline_batch = m["pipeline_batch"].labels(member)
        self.snapshots = m["snapshots"].labels(member)
        self.leader_changes = m["leader_changes"].labels(member)


@cache
def _metrics() -> dict[str, Gauge | Counter | Histogram]:
    fsync_buckets = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
    return {
        "term": Gauge("faultlab_raft_term", "Current Raft term", ["member"]),
        "role": Gauge("faultlab_raft_role", "Role (1 follower, 2 pre-candidate, 3 candidate, 4 leader, 5 learner)",
                      ["member"]),
        "is_leader": Gauge("faultlab_raft_is_leader", "1 while this member leads", ["member"]),
        "commit": Gauge("faultlab_raft_commit_index", "Highest committed log index", ["member"]),
        "applied": Gauge("faultlab_raft_applied_index", "Highest applied log index", ["member"]),
        "apply_lag": Gauge("faultlab_raft_apply_lag", "Committed but not yet applied entries", ["member"]),
        "proposals": Counter("faultlab_raft_proposals", "Proposals by outcome", ["member", "result"]),
        "reads": Counter("faultlab_raft_linearizable_reads", "Linearizable reads served", ["member"]),
        "fsync": Histogram("faultlab_raft_fsync_seconds", "WAL fsync latency", ["member"], buckets=fsync_buckets),
        "ready_entries": Histogram("faultlab_raft_ready_entries", "Entries persisted per Ready (group commit)",
                                   ["member"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)),
        "pipeline_batch": Histogram("faultlab_raft_pipeline_batch_operations",
                                    "Operations per KV.Pipeline message received (client-side batching)",
                                    ["member"], buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024)),
        "snapshots": Counter("faultlab_raft_snapshots", "Snapshots taken or installed", ["member"]),
        "leader_changes": Counter("faultlab_raft_leader_changes", "Leader changes seen", ["member"]),
    }
