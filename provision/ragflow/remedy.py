"""What to do about a RAGFlow verdict on a model: one table of RAGFlow's messages and their remedies.

The messages are RAGFlow's own (v0.27, measured; older versions say the same through the same model
clients): RAGFlow reports a refused connection, an unknown model UID and a 4xx from a chat model all as
"No valid response received", so that remedy names every cause.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from .. import netaddr

DOCKER_HOST = "host.docker.internal"
_CONNECTION = re.compile(r"(?i)connection (error|refused|reset|aborted)|max retries exceeded|failed to establish"
                         r"|name or service not known|temporary failure in name resolution|nodename nor servname"
                         r"|no route to host|network is unreachable|cannot connect")
_AUTH = re.compile(r"(?i)error code: 40[13]\b|\b40[13] client error|could not validate credentials|unauthorized"
                   r"|invalid api key|incorrect api key")
_TIMEOUT = re.compile(r"(?i)timeout accessing|timed out|verification aborted")
_NOT_FOUND = re.compile(r"(?i)model not found|error code: 404\b|\b404 client error|not found for url")
_SERVER = re.compile(r"(?i)error code: 5\d\d\b|\b5\d\d server error")
# A proxy between RAGFlow and Xinference: requests names it, or the answer is a gateway's.
_PROXY = re.compile(r"(?i)proxyerror|unable to connect to proxy|tunnel connection failed|error code: 50[24]\b"
                    r"|\b50[24] server error|bad gateway|gateway time-?out")


def root_url(base_url: str) -> str:
    """The server root of a Base URL: no trailing slash, no trailing /v1."""
    url = (base_url or "").strip().rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def remedy(message: str, base_url: str) -> str | None:
    """The fix for RAGFlow's message about a model at base_url (the Base URL RAGFlow was given), or None
    when the message is not one we know."""
    text = message or ""
    parts = urlsplit(base_url or "")
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    if "/v1/v1" in text or (parts.path or "").rstrip("/").endswith("/v1/v1") or (parts.path or "").endswith("/v1/"):
        return (f"the Base URL ends in /v1 and RAGFlow adds another /v1: give RAGFlow {root_url(root_url(base_url))} "
                "(the server root, no /v1, no trailing slash)")
    if "internal server error" in text.lower():
        return ("RAGFlow raised an error while building the model client; most often the API key is empty, which "
                "RAGFlow's chat and embedding clients refuse: give it any non-empty key (`x` when Xinference has "
                "no authentication). Otherwise RAGFlow's server log has the traceback")
    if _PROXY.search(text):
        return (f"an HTTP proxy stands between RAGFlow and {host or 'Xinference'} (RAGFlow's HTTP(S)_PROXY): add "
                f"{host or 'the Xinference host'} to NO_PROXY in RAGFlow's environment (its docker/.env or the "
                "container's environment) and restart RAGFlow")
    if _AUTH.search(text):
        return ("Xinference refused the API key RAGFlow sent: give RAGFlow the stack's key (the manifest's "
                "auth key; `provision ragflow --show-key`), not a placeholder")
    if _CONNECTION.search(text):
        return _connection_remedy(host, port, base_url)
    if _TIMEOUT.search(text):
        return ("the model did not answer within RAGFlow's limit (LLM_TIMEOUT_SECONDS, 10 s by default): a cold "
                "model loads on its first call, so warm it (`provision verify`) and apply again, or raise "
                "LLM_TIMEOUT_SECONDS in RAGFlow's environment; a 5xx from a chat model also ends this way")
    if _NOT_FOUND.search(text):
        return ("Xinference serves no model with this UID: launch it (`provision up`) and give RAGFlow the "
                "exact model UID (`provision status` lists them)")
    if _SERVER.search(text):
        return ("Xinference answered with a server error: a 503 means the model is still loading (wait, then "
                "apply again); otherwise Xinference's log says why")
    if "no valid response received" in text.lower():
        return ("RAGFlow got no answer from the chat model; it says this for a refused connection, an unknown "
                f"model UID and an error answer alike: is the UID running (`provision status`), and can RAGFlow "
                f"reach {base_url}? " + _connection_remedy(host, port, base_url))
    if "no models found for provider" in text.lower() or "no model passed verification" in text.lower():
        return (f"RAGFlow found no model at {base_url}: Xinference's model list was empty or refused (a wrong "
                "key, or a Base URL ending in /v1, which makes RAGFlow ask /v1/v1/models)")
    if "already exists" in text.lower():
        return "RAGFlow already has this model or provider: nothing to add (apply checks before it creates)"
    return None


def _connection_remedy(host: str, port: int | None, base_url: str) -> str:
    where = f"port {port}" if port else "the port"
    if host and netaddr.is_loopback(host):
        return (f"RAGFlow cannot reach {base_url}. If RAGFlow runs in Docker, {host} is the container itself: give "
                f"RAGFlow http://{DOCKER_HOST}:{port} (RAGFlow's compose file maps it with extra_hosts: "
                f"\"{DOCKER_HOST}:host-gateway\") and bind Xinference to 0.0.0.0 (manifest server.host: 0.0.0.0). "
                "If RAGFlow runs on this machine, is Xinference up (`provision status`)?")
    if host == DOCKER_HOST:
        return (f"RAGFlow's container cannot reach {base_url}: give RAGFlow's service extra_hosts: "
                f"\"{DOCKER_HOST}:host-gateway\", bind Xinference to 0.0.0.0 (manifest server.host: 0.0.0.0; a "
                f"loopback bind is invisible from containers), and open {where} in the host's firewall")
    return (f"RAGFlow cannot reach {base_url}: bind Xinference to 0.0.0.0 or to {host or 'that address'} (manifest "
            f"server.host), open {where} in the firewall, and check that RAGFlow (its container, if in Docker) "
            f"can route to {host or 'that host'}")
