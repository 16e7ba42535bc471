"""The manifest's `server:`, `download:` and `ragflow:` sections (schema.py has the models and the whole)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator

from .. import netaddr
from .fields import NAME_RE, VARIABLE_RE, Number, Seconds, _host, _Strict

class ServerSpec(_Strict):
    host: str = Field(
        "127.0.0.1", description="Address xinference-local listens on; 0.0.0.0 only when RAGFlow runs in Docker."
    )
    port: Number = Field(9997, ge=1, le=65535, description="Port of the Xinference REST API.")
    home: str = Field(
        ".provision/xinference",
        description="XINFERENCE_HOME; relative paths resolve against the manifest's folder.",
    )
    virtual_env: bool = Field(
        False,
        description="Xinference's per-model virtualenvs (XINFERENCE_ENABLE_VIRTUAL_ENV / enable_virtual_env); "
        "off by default because they re-install packages at launch.",
    )
    endpoint: str | None = Field(
        None,
        description="URL of an existing server or cluster supervisor; provision neither starts nor stops it.",
    )
    start_timeout: Seconds = Field(300, gt=0, description="Seconds to wait for a started server to answer.")
    env: dict[str, str] = Field(
        default_factory=dict, description="Extra environment variables for the server process."
    )
    auth: bool = Field(
        True,
        description="Authentication on the server provision starts: first-run setup, an admin with a generated "
        "password and an API key for RAGFlow, kept in the state folder (0600). false turns it off "
        "(XINFERENCE_AUTH_ADVANCED=0) and needs allow_open: true with a non-loopback host.",
    )
    allow_open: bool = Field(
        False,
        description="Accept server.auth: false on a non-loopback server.host: anyone who can reach the port "
        "can then launch and delete models.",
    )
    api_key_env: str | None = Field(
        None,
        description="With server.endpoint: NAME of the environment variable holding an API key of that server "
        "(verify and RAGFlow use it).",
    )
    admin_user: str = Field(
        "admin", description="With server.endpoint: the admin account provision logs in as to launch and terminate models."
    )
    admin_password_env: str | None = Field(
        None,
        description="With server.endpoint: NAME of the environment variable holding admin_user's password "
        "(Xinference API keys cannot launch or terminate models).",
    )
    mode: Literal["local", "cluster"] = Field(
        "local",
        description="local: one xinference-local. cluster: an xinference-supervisor on host:port and server.workers "
        "xinference-workers beside it on this machine, each its own process; place models with models[].worker_ip "
        "(a cluster that runs elsewhere is server.endpoint).",
    )
    workers: Number = Field(1, ge=1, le=64, description="With mode: cluster: how many workers to start.")
    supervisor_port: Number | None = Field(
        None, ge=1, le=65535,
        description="With mode: cluster: the supervisor's internal (actor) port the workers join; default server.port + 1.",
    )
    worker_port: Number | None = Field(
        None, ge=1, le=65535,
        description="With mode: cluster: worker 1 listens on worker_port, worker 2 on worker_port + 1, ...; a "
        "model is placed on one with worker_ip: <host>:<its port>. Default server.port + 2.",
    )

    @property
    def cluster_supervisor_port(self) -> int:
        return self.supervisor_port or self.port + 1

    @property
    def worker_host(self) -> str:
        """The address the workers listen on: server.host, loopback for a wildcard (they all run here)."""
        return netaddr.connect_host(self.host)

    @property
    def worker_addresses(self) -> list[str]:
        """What mode: cluster starts, as the supervisor names the workers (and worker_ip names them)."""
        if self.mode != "cluster":
            return []
        first = self.worker_port or self.port + 2
        return [f"{self.worker_host}:{first + i}" for i in range(self.workers)]

    @property
    def url(self) -> str:
        """Where provision talks to the server: server.endpoint, else host:port (a wildcard through loopback)."""
        return self.endpoint or netaddr.url_for(self.host, self.port)

    @field_validator("host")
    @classmethod
    def _listen_host(cls, value: str) -> str:
        return _host(value, "server.host")

    @field_validator("api_key_env", "admin_password_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not VARIABLE_RE.fullmatch(value):
            raise ValueError("this is the NAME of an environment variable (such as XINFERENCE_API_KEY), not the secret")
        return value

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("endpoint must be an http:// or https:// URL such as http://10.0.0.5:9997")
        return value.rstrip("/") if value else value


class DownloadSpec(_Strict):
    hub: Literal["modelscope", "huggingface", "none"] = Field(
        "modelscope", description="Where weights come from: modelscope, huggingface, or none (local folders only)."
    )
    endpoint: str | None = Field(None, description="Another hub address, e.g. an intranet mirror.")
    token_env: str = Field(
        "MODELSCOPE_API_TOKEN", description="Name of the environment variable that holds the hub token."
    )
    models_dir: str = Field(
        "models", description="Folder the weights are downloaded into; relative to the manifest's folder."
    )
    parallel: Number = Field(3, ge=1, le=16, description="Models downloaded at the same time.")
    timeout: Seconds = Field(
        30, gt=0, le=3600,
        description="Seconds one hub listing call may take, retries included: a hub that trickles or says "
        "nothing is then 'timed out'. (The files themselves are fetched by the hub client with its own timeouts.)",
    )

    @field_validator("token_env")
    @classmethod
    def _token_env(cls, value: str) -> str:
        if not VARIABLE_RE.fullmatch(value):
            raise ValueError("token_env is the NAME of an environment variable, not the token itself")
        return value


class RagflowSpec(_Strict):
    docker: bool = Field(False, description="RAGFlow runs in Docker and reaches the server as docker_host.")
    docker_host: str = Field(
        "host.docker.internal", description="Host name RAGFlow's container uses to reach this machine."
    )
    url: str | None = Field(
        None, description="RAGFlow's address (its API server, e.g. http://127.0.0.1:9380): `provision ragflow apply` "
        "and `up` register the stack there.",
    )
    api_token_env: str | None = Field(
        None, description="NAME of the environment variable holding a RAGFlow API token (default: RAGFLOW_API_TOKEN).",
    )
    email: str | None = Field(None, description="Sign in to RAGFlow as this user instead of with an API token.")
    password_env: str | None = Field(None, description="With email: NAME of the environment variable holding its password.")
    instance: str | None = Field(
        None, description="The name of the stack's Xinference instance in RAGFlow; default the stack's name.",
    )
    apply: bool = Field(True, description="With url: `up` registers the stack in RAGFlow when it is done.")

    @field_validator("docker_host")
    @classmethod
    def _docker_host(cls, value: str) -> str:
        return _host(value, "ragflow.docker_host")

    @field_validator("url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("url must be an http:// or https:// URL such as http://127.0.0.1:9380 (RAGFlow's API server)")
        return value.rstrip("/") if value else value

    @field_validator("api_token_env", "password_env")
    @classmethod
    def _variable_name(cls, value: str | None) -> str | None:
        if value is not None and not VARIABLE_RE.fullmatch(value):
            raise ValueError("this is the NAME of an environment variable (such as RAGFLOW_API_TOKEN), not the secret")
        return value

    @field_validator("instance")
    @classmethod
    def _instance(cls, value: str | None) -> str | None:
        if value is not None and (value == "default" or not NAME_RE.fullmatch(value)):
            raise ValueError("instance must be a name of letters, digits, '.', '_', '-', and not `default` "
                             "(RAGFlow keeps that one for itself)")
        return value
