"""Resource detection: service, environment, host, process, container and Kubernetes.

Everything is read from the local environment (no network calls, no cloud metadata
endpoints), so detection is fast and never blocks start-up.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from opentelemetry.sdk.resources import (
    ProcessResourceDetector,
    Resource,
    ResourceDetector,
    ServiceInstanceIdResourceDetector,
    get_aggregated_resources,
)

from otelkit.presets.settings import Settings

_CONTAINER_ID = re.compile(r"([0-9a-f]{64})")
_SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def container_id(
    cgroup: Path = Path("/proc/self/cgroup"), mountinfo: Path = Path("/proc/self/mountinfo")
) -> str | None:
    """The 64-hex container ID from cgroup v1 paths or cgroup v2 mount info."""
    for path in (cgroup, mountinfo):
        try:
            text = path.read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if "docker" in line or "containerd" in line or "kubepods" in line or "crio" in line:
                match = _CONTAINER_ID.search(line)
                if match:
                    return match.group(1)
    return None


def kubernetes_attributes(env: Mapping[str, str]) -> dict[str, str]:
    """Pod, namespace and node from the downward API variables a manifest usually sets."""
    if "KUBERNETES_SERVICE_HOST" not in env:
        return {}
    attributes: dict[str, str] = {}
    pod = env.get("K8S_POD_NAME") or env.get("POD_NAME") or env.get("HOSTNAME")
    if pod:
        attributes["k8s.pod.name"] = pod
    namespace = env.get("K8S_NAMESPACE_NAME") or env.get("POD_NAMESPACE")
    if not namespace:
        try:
            namespace = _SERVICE_ACCOUNT_NAMESPACE.read_text().strip()
        except OSError:
            namespace = None
    if namespace:
        attributes["k8s.namespace.name"] = namespace
    node = env.get("K8S_NODE_NAME") or env.get("NODE_NAME")
    if node:
        attributes["k8s.node.name"] = node
    pod_uid = env.get("K8S_POD_UID") or env.get("POD_UID")
    if pod_uid:
        attributes["k8s.pod.uid"] = pod_uid
    return attributes


class EnvironmentResourceDetector(ResourceDetector):
    """Host name/arch, container ID and Kubernetes attributes."""

    def detect(self) -> Resource:
        import platform
        import socket

        attributes: dict[str, str] = {
            "host.name": socket.gethostname(),
            "host.arch": platform.machine(),
        }
        found = container_id()
        if found:
            attributes["container.id"] = found
        attributes.update(kubernetes_attributes(os.environ))
        return Resource(attributes)


def process_attributes() -> dict[str, str | int]:
    """What changes in a forked worker: its PID and its own service instance."""
    instance = ServiceInstanceIdResourceDetector().detect().attributes["service.instance.id"]
    return {"process.pid": os.getpid(), "service.instance.id": str(instance)}


def build_resource(settings: Settings) -> Resource:
    """Detected attributes < ``OTEL_RESOURCE_ATTRIBUTES`` < explicit ``configure`` arguments."""
    explicit: dict[str, str] = {"deployment.environment.name": settings.environment}
    for key, value in (
        ("service.name", settings.service_name),
        ("service.version", settings.service_version),
        ("service.namespace", settings.service_namespace),
    ):
        if value:
            explicit[key] = value
    explicit.update(settings.resource_attributes)
    detected = get_aggregated_resources(
        [ProcessResourceDetector(), EnvironmentResourceDetector()], Resource.get_empty()
    )
    from_env = Resource.create({})  # OTEL_RESOURCE_ATTRIBUTES, OTEL_SERVICE_NAME, instance id
    return detected.merge(from_env).merge(Resource(explicit)).merge(Resource(process_attributes()))
