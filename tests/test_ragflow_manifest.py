"""The manifest's `ragflow:` keys for applying the stack to a running RAGFlow: where it is, how provision
signs in (secrets only from the environment), the instance name, and whether `up` applies."""

from __future__ import annotations

import pytest

from provision.errors import ManifestError
from provision.manifest import parse

BASE = ("version: 1\nname: rag\nmodels:\n  - role: embedding\n    uid: e\n    name: bge-m3\n    source: BAAI/bge-m3\n"
        "roles: {chat: 0, embedding: 1, rerank: 0}\n")


def problems(ragflow: str) -> list[str]:
    with pytest.raises(ManifestError) as info:
        parse(BASE + ragflow, file="m.yml", environ={})
    return [p.render("m.yml") for p in info.value.problems]


def test_the_keys_and_their_defaults():
    m = parse(BASE + "ragflow:\n  url: http://10.0.0.7:9380/\n  api_token_env: RAGFLOW_TOKEN\n", file="m.yml", environ={})
    assert m.ragflow.url == "http://10.0.0.7:9380"  # no trailing slash
    assert m.ragflow.api_token_env == "RAGFLOW_TOKEN"
    assert m.ragflow.apply is True and m.ragflow_instance == "rag"  # the stack's name
    m = parse(BASE, file="m.yml", environ={})
    assert m.ragflow.url is None and m.ragflow_instance == "rag"


def test_a_login_takes_an_email_and_the_name_of_a_password_variable():
    m = parse(BASE + "ragflow:\n  url: http://r:9380\n  email: ops@example.com\n  password_env: RAGFLOW_PASSWORD\n"
              "  instance: gpu-box\n  apply: false\n", file="m.yml", environ={})
    assert (m.ragflow.email, m.ragflow.password_env, m.ragflow_instance, m.ragflow.apply) == (
        "ops@example.com", "RAGFLOW_PASSWORD", "gpu-box", False)


@pytest.mark.parametrize("ragflow, path, said", [
    ("  url: 10.0.0.7:9380\n", "ragflow.url", "http:// or https:// URL"),
    ("  url: http://r:9380\n  email: ops@example.com\n", "ragflow.password_env", "email needs password_env"),
    ("  url: http://r:9380\n  password_env: P\n", "ragflow.email", "password_env needs email"),
    ("  url: http://r:9380\n  api_token_env: ragflow-wIwIFrpTK85q\n", "ragflow.api_token_env", "NAME of an environment variable"),
    ("  url: http://r:9380\n  instance: default\n", "ragflow.instance", "`default`"),
    ("  url: http://r:9380\n  api_token_env: T\n  email: a@b.c\n  password_env: P\n", "ragflow.api_token_env",
     "either api_token_env or email"),
    ("  api_token_env: T\n", "ragflow.url", "url"),
])
def test_what_is_refused(ragflow, path, said):
    found = problems("ragflow:\n" + ragflow)
    assert any(path in p and said in p for p in found), found
