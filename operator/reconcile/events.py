"""Kubernetes Events on faultlab resources (what `kubectl describe` shows), deduplicated."""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
import time
from datetime import UTC, datetime
from typing import Any

from faultlab.operator.reconcile.kube import ApiError, Kube, path

log = logging.getLogger("faultlab.operator.events")
COMPONENT = "faultlab-operator"


class EventRecorder:
    """Posts core/v1 Events; the same reason and message on one object is posted at most once a minute."""

    def __init__(self, kube: Kube, *, instance: str | None = None, repeat_after_s: float = 60.0) -> None:
        self.kube = kube
        self.instance = instance or socket.gethostname()
        self.repeat_after_s = repeat_after_s
        self._recent: dict[tuple[str, str, str], float] = {}

    def _body(self, obj: dict[str, Any], reason: str, message: str, kind: str) -> dict[str, Any]:
        meta = obj["metadata"]
        ts = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        micro = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        return {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{secrets.token_hex(8)}", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": obj.get("apiVersion"), "kind": obj.get("kind"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid"),
                               "resourceVersion": meta.get("resourceVersion")},
            "reason": reason, "message": message[:1024], "type": kind,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": self.instance[:128], "action": reason,
            "firstTimestamp": ts, "lastTimestamp": ts, "eventTime": micro, "count": 1,
        }

    def post_sync(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        meta = obj["metadata"]
        key = (meta.get("uid", meta["name"]), reason, message)
        now = time.monotonic()
        if now - self._recent.get(key, -1e9) < self.repeat_after_s:
            return
        self._recent[key] = now
        if len(self._recent) > 4096:
            self._recent = {k: v for k, v in self._recent.items() if now - v < self.repeat_after_s}
        try:
            self.kube.create_at(path("Event", meta["namespace"]),
                                self._body(obj, reason, message, "Warning" if warning else "Normal"))
        except ApiError as exc:  # events are best effort: never fail a reconcile for one
            log.warning("could not post event %s on %s: %s", reason, meta["name"], exc)

    async def post(self, obj: dict[str, Any], reason: str, message: str, *, warning: bool = False) -> None:
        log.log(logging.WARNING if warning else logging.INFO, "%s/%s: %s: %s", obj.get("kind"),
                obj["metadata"]["name"], reason, message)
        await asyncio.to_thread(self.post_sync, obj, reason, message, warning=warning)
