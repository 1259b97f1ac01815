"""Which URLs ingestion fetches: the policy's rules, and fetching under them from a real HTTP
server on a free port (redirects re-checked, the checked address connected to, time and size
bounded)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ragfleet.ingest.domain import ItemKind, SourceItem
from ragfleet.ingest.sources import ItemError, ReadLimits, load_text
from ragfleet.ingest.urls import UrlPolicy, UrlRefused

PUBLIC = "93.184.215.14"
NAMES = {"intranet.test": [PUBLIC, "10.0.0.7"], "docs.test": [PUBLIC], "files.test": [PUBLIC]}


def names(host: str, _port: int) -> list[str]:
    """A fixed name table instead of DNS; an address literal resolves to itself."""
    if host.endswith(".test"):
        if host not in NAMES:
            raise UrlRefused(f"host {host!r} does not resolve")
        return NAMES[host]
    return [host]


@pytest.mark.parametrize(
    ("url", "rule"),
    [
        ("http://127.0.0.1:8080/admin", "127.0.0.1, a loopback address"),
        ("http://[::1]/", "::1, a loopback address"),
        ("http://[::ffff:127.0.0.1]/", "a loopback address"),
        ("http://169.254.169.254/latest/meta-data/", "a link-local address"),
        ("http://10.1.2.3/", "a private address"),
        ("http://192.168.0.1/", "a private address"),
        ("http://0.0.0.0/", "unspecified"),
        ("http://intranet.test/", "10.0.0.7, a private address"),
        ("ftp://files.test/a", "only http and https"),
        ("http://user:secret@docs.test/", "credentials"),
        ("http:///nohost", "has no host"),
        ("http://docs.test:99999/", "port"),
        ("http://nowhere.test/", "does not resolve"),
    ],
)
def test_non_public_and_malformed_urls_are_refused_naming_the_rule(url: str, rule: str) -> None:
    with pytest.raises(UrlRefused, match=rule.replace("[", r"\[")):
        UrlPolicy(resolver=names).check(url)


def test_allowed_hosts_and_allow_private() -> None:
    policy = UrlPolicy(
        allowed_hosts=("docs.example.com", ".wiki.example.org"),
        resolver=lambda _host, _port: [PUBLIC],
    )
    assert policy.check("https://docs.example.com/a").address == PUBLIC
    assert policy.check("https://en.wiki.example.org/a").host == "en.wiki.example.org"
    assert policy.check("https://wiki.example.org/a").port == 443
    with pytest.raises(UrlRefused, match="not among the allowed hosts"):
        policy.check("https://evil.example.com/")
    with pytest.raises(UrlRefused, match="not among the allowed hosts"):
        policy.check("https://docs.example.com.evil.test/")
    loopback = UrlPolicy(allow_private=True, resolver=lambda _host, _port: ["127.0.0.1"])
    assert loopback.check("http://localhost:8080/x").connect_url == "http://127.0.0.1:8080/x"


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        if self.path == "/page":
            body = f"hello from {self.headers['Host']}".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        elif self.path.startswith("/to/"):
            self.send_response(302)
            self.send_header("Location", self.path[len("/to/") :].replace("_", "://", 1))
            self.end_headers()
        elif self.path == "/loop":
            self.send_response(302)
            self.send_header("Location", "/loop")
            self.end_headers()
        elif self.path == "/drip":
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.05)

    def log_message(self, *_args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd.server_address[1]
    httpd.shutdown()


def _read(url: str, policy: UrlPolicy | None, timeout_s: float = 5.0) -> str:
    item = SourceItem(source=url, kind=ItemKind.URL, locator=url)
    return load_text(item, ReadLimits(http_timeout_s=timeout_s, url_policy=policy))[0]


def test_the_checked_address_is_connected_to_under_the_hosts_name(server: int) -> None:
    policy = UrlPolicy(
        allowed_hosts=("docs.test",), allow_private=True, resolver=lambda h, p: ["127.0.0.1"]
    )
    # docs.test exists in no DNS: the fetch reaches the server only through the checked address.
    assert _read(f"http://docs.test:{server}/page", policy) == f"hello from docs.test:{server}"


def test_every_redirect_is_checked(server: int) -> None:
    private = UrlPolicy(allowed_hosts=("docs.test",), allow_private=True)
    to_loopback = f"http://localhost:{server}/to/http_127.0.0.1:{server}/page"
    with pytest.raises(ItemError, match=r"127\.0\.0\.1 is not among the allowed hosts"):
        _read(to_loopback.replace("localhost", "docs.test"), _pinned(private))
    public_only = UrlPolicy(resolver=lambda host, _port: [PUBLIC if host == "docs.test" else host])
    with pytest.raises(ItemError, match=r"127\.0\.0\.1, a loopback address"):
        _read(f"http://127.0.0.1:{server}/page", public_only)
    # Without a policy (the operator's CLI) redirects are followed to wherever they lead.
    assert _read(to_loopback, None).startswith("hello from 127.0.0.1")


def _pinned(policy: UrlPolicy) -> UrlPolicy:
    return UrlPolicy(
        allowed_hosts=policy.allowed_hosts,
        allow_private=True,
        max_redirects=policy.max_redirects,
        resolver=lambda host, _port: ["127.0.0.1"] if host == "docs.test" else [host],
    )


def test_redirect_loops_and_slow_bodies_are_bounded(server: int) -> None:
    policy = UrlPolicy(allow_private=True, max_redirects=3)
    with pytest.raises(ItemError, match="more than 3 redirects"):
        _read(f"http://127.0.0.1:{server}/loop", policy)
    started = time.monotonic()
    with pytest.raises(ItemError, match=r"timed out after 0\.5s"):
        _read(f"http://127.0.0.1:{server}/drip", policy, timeout_s=0.5)
    assert time.monotonic() - started < 1.5
