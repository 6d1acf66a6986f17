"""The k8s tier's cluster is a real one: versioned binaries, RBAC, garbage collection, namespace deletion."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterator

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from tests.support.k8s_control_plane import ControlPlane, wait_for

DEADLINE = 60.0


@pytest.fixture(scope="module")
def api(control_plane: ControlPlane) -> Iterator[client.ApiClient]:
    with config.new_client_from_config(config_file=str(control_plane.admin_kubeconfig)) as api_client:
        yield api_client


@pytest.fixture
def core(api: client.ApiClient) -> client.CoreV1Api:
    return client.CoreV1Api(api)


@pytest.fixture
def namespace(core: client.CoreV1Api) -> Iterator[str]:
    name = f"fl-test-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


def _gone(read: Callable[[], object]) -> bool:
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def test_kubectl_lists_namespaces(control_plane: ControlPlane) -> None:
    out = control_plane.kubectl("get", "namespaces", "-o", "json").stdout
    names = {item["metadata"]["name"] for item in json.loads(out)["items"]}
    assert {"default", "kube-system", "kube-public"} <= names


def test_server_reports_its_real_version(control_plane: ControlPlane) -> None:
    info = json.loads(control_plane.kubectl("version", "-o", "json").stdout)
    server = info["serverVersion"]["gitVersion"]
    assert not server.startswith("v0.0.0"), info
    if control_plane.owned:
        assert server == control_plane.version
        assert info["clientVersion"]["gitVersion"] == control_plane.version
        assert control_plane.version.startswith("v1.")


def test_dependent_is_garbage_collected_after_owner_deletion(core: client.CoreV1Api, namespace: str) -> None:
    owner = core.create_namespaced_config_map(
        namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="owner"), data={"role": "owner"})
    )
    assert owner.metadata is not None and owner.metadata.uid
    ref = client.V1OwnerReference(api_version="v1", kind="ConfigMap", name="owner", uid=owner.metadata.uid)
    core.create_namespaced_config_map(
        namespace,
        client.V1ConfigMap(metadata=client.V1ObjectMeta(name="dependent", owner_references=[ref])),
    )
    core.delete_namespaced_config_map("owner", namespace)
    wait_for(
        lambda: _gone(lambda: core.read_namespaced_config_map("dependent", namespace)),
        timeout=DEADLINE,
        what="the garbage collector to delete the dependent ConfigMap",
        interval=0.2,
    )


def test_namespace_deletion_completes(core: client.CoreV1Api) -> None:
    name = f"fl-doomed-{uuid.uuid4().hex[:8]}"
    core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    core.create_namespaced_config_map(name, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="content")))
    core.delete_namespace(name)
    wait_for(
        lambda: _gone(lambda: core.read_namespace(name)),
        timeout=DEADLINE,
        what=f"namespace {name} to finish deleting (namespace controller)",
        interval=0.2,
    )


def test_non_admin_identity_is_forbidden(control_plane: ControlPlane) -> None:
    with (
        config.new_client_from_config(config_file=str(control_plane.user_kubeconfig)) as user_client,
        pytest.raises(ApiException) as raised,
    ):
        client.CoreV1Api(user_client).list_namespaced_pod("default")
    assert raised.value.status == 403, raised.value
    body = json.loads(raised.value.body or "{}")
    assert body["reason"] == "Forbidden"
    assert "faultlab-tester" in body["message"]

    denied = control_plane.kubectl("get", "pods", "-n", "default", user=True, check=False)
    assert denied.returncode != 0
    assert "forbidden" in denied.stderr.lower()


def test_startup_time_is_reported(control_plane: ControlPlane, capsys: pytest.CaptureFixture[str]) -> None:
    with capsys.disabled():
        if control_plane.owned:
            print(
                f"\n[k8s] control plane {control_plane.version} started in"
                f" {control_plane.startup_seconds:.1f}s (binaries cached in {control_plane.bin_dir})"
            )
        else:
            print(f"\n[k8s] reused existing cluster {control_plane.server} ({control_plane.version})")
    if control_plane.owned:
        assert control_plane.startup_seconds > 0
        assert all(pid > 0 for pid in control_plane.pids.values())
        assert os.path.isfile(control_plane.admin_kubeconfig)
