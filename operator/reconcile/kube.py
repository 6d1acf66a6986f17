"""A small Kubernetes REST client over plain dicts (the builders' currency).

Credentials come from the official client's loaders (kubeconfig or in-cluster);
requests are synchronous — async code calls them through `asyncio.to_thread`.
"""

from __future__ import annotations

import builtins
import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client, config

JSON = dict[str, Any]
MERGE = "application/merge-patch+json"
STRATEGIC = "application/strategic-merge-patch+json"
JSON_PATCH = "application/json-patch+json"

# kind -> (apiVersion, plural) for what faultlab touches.
RESOURCES: dict[str, tuple[str, str]] = {
    "Pod": ("v1", "pods"),
    "Service": ("v1", "services"),
    "ConfigMap": ("v1", "configmaps"),
    "Secret": ("v1", "secrets"),
    "PersistentVolumeClaim": ("v1", "persistentvolumeclaims"),
    "Event": ("v1", "events"),
    "Node": ("v1", "nodes"),
    "Namespace": ("v1", "namespaces"),
    "ServiceAccount": ("v1", "serviceaccounts"),
    "PodDisruptionBudget": ("policy/v1", "poddisruptionbudgets"),
    "Lease": ("coordination.k8s.io/v1", "leases"),
    "RaftCluster": ("faultlab.dev/v1alpha1", "raftclusters"),
    "ChaosExperiment": ("faultlab.dev/v1alpha1", "chaosexperiments"),
    "Role": ("rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("rbac.authorization.k8s.io/v1", "rolebindings"),
    "ClusterRole": ("rbac.authorization.k8s.io/v1", "clusterroles"),
    "ClusterRoleBinding": ("rbac.authorization.k8s.io/v1", "clusterrolebindings"),
    "CustomResourceDefinition": ("apiextensions.k8s.io/v1", "customresourcedefinitions"),
}
CLUSTER_SCOPED = {"Node", "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


class ApiError(Exception):
    """The API server refused a request; `status` is the HTTP code, the message is the server's."""

    def __init__(self, status: int, message: str, reason: str = "", body: JSON | None = None) -> None:
        super().__init__(f"{status} {reason}: {message}" if reason else f"{status}: {message}")
        self.status = status
        self.reason = reason
        self.body = body or {}

    @property
    def not_found(self) -> bool:
        return self.status == 404

    @property
    def conflict(self) -> bool:
        return self.status == 409


def path(kind: str, namespace: str | None = None, name: str | None = None, subresource: str | None = None) -> str:
    """REST path of a kind (a collection when `name` is None)."""
    api_version, plural = RESOURCES[kind]
    base = f"/api/{api_version}" if "/" not in api_version else f"/apis/{api_version}"
    if namespace and kind not in CLUSTER_SCOPED:
        base += f"/namespaces/{namespace}"
    base += f"/{plural}"
    if name:
        base += f"/{name}"
    if subresource:
        base += f"/{subresource}"
    return base


def object_path(obj: JSON, subresource: str | None = None) -> str:
    meta = obj["metadata"]
    return path(obj["kind"], meta.get("namespace"), meta["name"], subresource)


class Kube:
    """Synchronous REST calls with the credentials of a kubeconfig (or the pod's service account)."""

    def __init__(self, configuration: client.Configuration) -> None:
        self.configuration = configuration
        self._api = client.ApiClient(configuration)

    @classmethod
    def load(cls, kubeconfig: str | Path | None = None, context: str | None = None) -> Kube:
        """From `kubeconfig` (or $KUBECONFIG / ~/.kube/config), else the in-cluster service account."""
        cfg = client.Configuration()
        try:
            config.load_kube_config(config_file=str(kubeconfig) if kubeconfig else None, context=context,
                                    client_configuration=cfg)
        except config.ConfigException:
            if kubeconfig:
                raise
            config.load_incluster_config(client_configuration=cfg)
        cfg.connection_pool_maxsize = 32
        return cls(cfg)

    def close(self) -> None:
        self._api.close()

    def _headers(self, content_type: str | None = None) -> dict[str, str]:
        headers = {"Accept": "application/json"}
        token = self.configuration.get_api_key_with_prefix("BearerToken", alias="authorization")
        if token:
            headers["Authorization"] = token
        if content_type:
            headers["Content-Type"] = content_type
        return headers

    def raw(self, method: str, url_path: str, body: Any = None, *, query: dict[str, Any] | None = None,
            content_type: str | None = None, timeout: float | tuple[float, float] = 30) -> Any:
        url = self.configuration.host + url_path
        if query:
            url += "?" + urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        if body is not None and content_type is None:
            content_type = "application/json"
        resp = self._api.rest_client.request(method, url, headers=self._headers(content_type),
                                             body=body, _request_timeout=timeout)
        data = resp.read()
        parsed: Any = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                parsed = {"message": data.decode(errors="replace")}
        if not 200 <= resp.status <= 299:
            parsed = parsed if isinstance(parsed, dict) else {}
            raise ApiError(resp.status, parsed.get("message", resp.reason or ""), parsed.get("reason", ""), parsed)
        return parsed

    # ---------------------------------------------------------------- verbs

    def get(self, url_path: str) -> JSON | None:
        """The object, or None when it does not exist."""
        try:
            result: JSON = self.raw("GET", url_path)
            return result
        except ApiError as exc:
            if exc.not_found:
                return None
            raise

    def list(self, url_path: str, *, labels: dict[str, str] | str | None = None,
             fields: str | None = None) -> list[JSON]:
        return self.list_with_version(url_path, labels=labels, fields=fields)[0]

    def list_with_version(self, url_path: str, *, labels: dict[str, str] | str | None = None,
                          fields: str | None = None) -> tuple[builtins.list[JSON], str]:
        selector = ",".join(f"{k}={v}" for k, v in labels.items()) if isinstance(labels, dict) else labels
        result = self.raw("GET", url_path, query={"labelSelector": selector, "fieldSelector": fields})
        kind = result.get("kind", "List").removesuffix("List")
        items = result.get("items", [])
        for item in items:  # list items come without kind/apiVersion
            item.setdefault("kind", kind)
            item.setdefault("apiVersion", result.get("apiVersion", "v1"))
        return items, result.get("metadata", {}).get("resourceVersion", "")

    def create(self, obj: JSON, *, dry_run: bool = False) -> JSON:
        meta = obj["metadata"]
        result: JSON = self.raw("POST", path(obj["kind"], meta.get("namespace")), obj,
                                query={"dryRun": "All" if dry_run else None})
        return result

    def create_at(self, url_path: str, body: JSON) -> JSON:
        result: JSON = self.raw("POST", url_path, body)
        return result

    def ensure(self, obj: JSON) -> tuple[JSON, bool]:
        """Creates `obj` unless it exists; returns (the object, created?)."""
        try:
            return self.create(obj), True
        except ApiError as exc:
            if not exc.conflict:
                raise
        existing = self.get(object_path(obj))
        if existing is None:  # deleted in between: try once more
            return self.create(obj), True
        return existing, False

    def patch(self, url_path: str, body: Any, content_type: str = MERGE) -> JSON:
        result: JSON = self.raw("PATCH", url_path, body, content_type=content_type)
        return result

    def replace(self, url_path: str, body: JSON) -> JSON:
        result: JSON = self.raw("PUT", url_path, body)
        return result

    def delete(self, url_path: str, *, grace_seconds: int | None = None, uid: str | None = None,
               propagation: str | None = None) -> bool:
        """Deletes; False when it was already gone. `uid` guards against deleting a newer namesake."""
        options: JSON = {"kind": "DeleteOptions", "apiVersion": "v1"}
        if grace_seconds is not None:
            options["gracePeriodSeconds"] = grace_seconds
        if uid:
            options["preconditions"] = {"uid": uid}
        if propagation:
            options["propagationPolicy"] = propagation
        try:
            self.raw("DELETE", url_path, options)
            return True
        except ApiError as exc:
            if exc.not_found or (uid and exc.conflict):
                return False
            raise

    def watch(self, url_path: str, resource_version: str, *, labels: str | None = None, fields: str | None = None,
              timeout_s: int = 60) -> Iterator[JSON]:
        """Events ({type, object}) after `resource_version` until the server ends the watch."""
        query = {"watch": "1", "resourceVersion": resource_version, "timeoutSeconds": timeout_s,
                 "allowWatchBookmarks": "true", "labelSelector": labels, "fieldSelector": fields}
        url = self.configuration.host + url_path + "?" + urllib.parse.urlencode(
            {k: v for k, v in query.items() if v is not None})
        resp = self._api.rest_client.request("GET", url, headers=self._headers(),
                                             _request_timeout=(10, timeout_s + 10))
        raw = resp.response
        try:
            if not 200 <= resp.status <= 299:
                data = raw.read()
                raise ApiError(resp.status, data.decode(errors="replace"))
            buffer = b""
            for chunk in raw.stream(4096, decode_content=False):
                buffer += chunk
                while b"\n" in buffer:
                    line, buffer = buffer.split(b"\n", 1)
                    if line.strip():
                        yield json.loads(line)
        finally:
            raw.release_conn()
