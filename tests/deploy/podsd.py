"""The scrape targets Prometheus' Kubernetes discovery (``role: pod``) makes of a pod, as
static targets: Debian's Prometheus is built without ``kubernetes_sd_configs`` and a test
has no cluster, but relabelling sees the same ``__meta_kubernetes_*`` labels either way
(as Prometheus documents them for the pod role: one target per declared container port)."""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

Target = dict[str, Any]


def meta_name(name: str) -> str:
    """A Kubernetes label or annotation name as Prometheus spells it in a meta label."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def pod_targets(
    template: dict[str, Any], pod: str, address: Callable[[int], str], namespace: str = "default"
) -> list[Target]:
    """The targets of one running, ready pod of a pod ``template`` (a Deployment's);
    ``address(containerPort)`` is where the test's stand-in for that port listens."""
    metadata = template["metadata"]
    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_ready": "true",
    }
    for key, value in metadata.get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{meta_name(key)}"] = value
        common[f"__meta_kubernetes_pod_labelpresent_{meta_name(key)}"] = "true"
    for key, value in metadata.get("annotations", {}).items():
        common[f"__meta_kubernetes_pod_annotation_{meta_name(key)}"] = value
        common[f"__meta_kubernetes_pod_annotationpresent_{meta_name(key)}"] = "true"
    targets = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            labels = {
                **common,
                "__meta_kubernetes_pod_container_name": container["name"],
                "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                "__meta_kubernetes_pod_container_port_protocol": port.get("protocol", "TCP"),
            }
            targets.append({"targets": [address(port["containerPort"])], "labels": labels})
    return targets


def discovering(job: dict[str, Any], targets: list[Target]) -> dict[str, Any]:
    """``job`` (a shipped scrape job finding pods) with ``targets`` as what it discovers."""
    job = copy.deepcopy(job)
    assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}], job
    job["static_configs"] = targets
    return job
