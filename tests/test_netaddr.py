"""netaddr: the one home of loopback, wildcard and URL rules."""

from __future__ import annotations

import pytest

from provision import netaddr


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"])
def test_loopback(host):
    assert netaddr.is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "example.org", "fe80::1"])
def test_not_loopback(host):
    assert not netaddr.is_loopback(host)


@pytest.mark.parametrize("host, url", [
    ("0.0.0.0", "http://127.0.0.1:80"),
    ("", "http://127.0.0.1:80"),
    ("::", "http://[::1]:80"),
    ("[::]", "http://[::1]:80"),
    ("10.0.0.5", "http://10.0.0.5:80"),
    ("fe80::1", "http://[fe80::1]:80"),
    ("localhost", "http://localhost:80"),
])
def test_url_for_reaches_a_wildcard_through_loopback(host, url):
    assert netaddr.url_for(host, 80) == url
