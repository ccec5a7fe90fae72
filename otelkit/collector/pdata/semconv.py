"""Attribute names of the OpenTelemetry semantic conventions, stable name first.

Every reader tries the stable name, then the older names that SDKs and
instrumentations still send (DESIGN.md: "read the stable names and fall back"). Keeping
the pairs here means every component falls back the same way.
"""

from __future__ import annotations

HTTP_METHOD = ("http.request.method", "http.method")
HTTP_STATUS_CODE = ("http.response.status_code", "http.status_code")
HTTP_ROUTE = ("http.route",)
URL_FULL = ("url.full", "http.url")
URL_PATH = ("url.path", "http.target")
URL_SCHEME = ("url.scheme", "http.scheme")
SERVER_ADDRESS = ("server.address", "http.host", "net.host.name")
SERVER_PORT = ("server.port", "net.host.port")
CLIENT_ADDRESS = ("client.address", "http.client_ip", "net.peer.ip")
USER_AGENT = ("user_agent.original", "http.user_agent")
DB_SYSTEM = ("db.system.name", "db.system")
DB_QUERY = ("db.query.text", "db.statement")
DEPLOYMENT_ENVIRONMENT = ("deployment.environment.name", "deployment.environment")
