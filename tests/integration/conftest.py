"""Fixtures of the integration tier: real Raft clusters on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.cluster import LocalRaftCluster


@pytest.fixture
def raft_cluster(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[..., LocalRaftCluster]]:
    """Factory: ``raft_cluster(size=3, extra_args=...)`` starts a LocalRaftCluster, closed after the test."""
    made: list[LocalRaftCluster] = []

    def make(size: int = 3, **kwargs: object) -> LocalRaftCluster:
        c = LocalRaftCluster(tmp_path / f"cluster{len(made)}", size, **kwargs)  # type: ignore[arg-type]
        made.append(c)
        return c.start()

    yield make
    failed = getattr(request.node, "rep_call", None)
    for c in made:
        if failed is not None and failed.failed:
            print(c.logs())
        c.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):  # type: ignore[no-untyped-def]
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call":
        item.rep_call = rep  # type: ignore[attr-defined]
