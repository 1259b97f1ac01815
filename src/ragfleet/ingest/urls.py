"""Which URLs ingestion may fetch, and fetching them under that rule.

A ``UrlPolicy`` is checked on the URL a caller gave, again on every redirect, and on the address
each host name resolves to: by default only public (globally routable) addresses are fetched, so
a request to ingest ``http://127.0.0.1:8080/admin``, a cloud metadata endpoint
(``169.254.169.254``) or a name that resolves to a private address is refused, naming the rule.
The connection goes to the address that was checked (the request names the host in its
``Host`` header and TLS server name), so a name that resolves differently a moment later
cannot slip past the check.

Without a policy (``None``) ingestion fetches what it is given: the operator's own CLI. The
gateway, which ingests URLs sent by callers, always sets one.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from ragfleet.runtime.errors import InvalidInput

DEFAULT_MAX_REDIRECTS = 5

Resolver = Callable[[str, int], Sequence[str]]
"""(host, port) -> the addresses it resolves to."""


class UrlRefused(InvalidInput):
    """A URL the policy does not allow; the message names the rule."""


def system_resolver(host: str, port: int) -> list[str]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefused(f"host {host!r} does not resolve ({exc.strerror})") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _host_matches(host: str, patterns: Sequence[str]) -> bool:
    """``example.com`` matches that host only; ``.example.com`` matches its subdomains too."""
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern.startswith("."):
            if host == pattern[1:] or host.endswith(pattern):
                return True
        elif host == pattern:
            return True
    return False


@dataclass(frozen=True)
class Target:
    """A checked URL: where to connect (``address``) and what to call the host."""

    url: str
    host: str
    port: int
    address: str

    @property
    def connect_url(self) -> str:
        parts = urlsplit(self.url)
        literal = f"[{self.address}]" if ":" in self.address else self.address
        netloc = f"{literal}:{self.port}"
        return parts._replace(netloc=netloc).geturl()

    @property
    def host_header(self) -> str:
        default = {"http": 80, "https": 443}[urlsplit(self.url).scheme]
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class UrlPolicy:
    """``allowed_hosts``: host names (``docs.example.com``) or domains (``.example.com``) a URL
    may name; empty means any. ``allow_private``: also fetch loopback, private, link-local and
    other non-public addresses. ``max_redirects``: redirects followed per fetch."""

    allowed_hosts: tuple[str, ...] = ()
    allow_private: bool = False
    max_redirects: int = DEFAULT_MAX_REDIRECTS
    resolver: Resolver = system_resolver

    def check(self, url: str, *, resolve: bool = True) -> Target:
        """The ``Target`` to connect to for ``url``; ``UrlRefused`` naming the rule when the
        scheme, host or any address the host resolves to is not allowed. ``resolve=False``
        checks without DNS (a quick check of a request: a host name passes, an address literal
        is classified; the fetch checks again, resolved)."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise UrlRefused(f"url {url!r}: only http and https URLs are fetched")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise UrlRefused(f"url {url!r}: has no host")
        if parts.username or parts.password:
            raise UrlRefused(f"url {url!r}: credentials in URLs are not accepted")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise UrlRefused(f"url {url!r}: the port is not a number in [0, 65535]") from None
        if self.allowed_hosts and not _host_matches(host, self.allowed_hosts):
            raise UrlRefused(
                f"url {url!r}: host {host} is not among the allowed hosts "
                f"({', '.join(self.allowed_hosts)}; RAGFLEET_GATEWAY_INGEST_ALLOWED_URL_HOSTS)"
            )
        if not resolve:
            try:
                addresses: Sequence[str] = [str(ipaddress.ip_address(host.strip("[]")))]
            except ValueError:
                return Target(url, host, port, "")
        else:
            addresses = self.resolver(host, port)
        if not addresses:
            raise UrlRefused(f"url {url!r}: host {host} resolves to no address")
        if not self.allow_private:
            for address in addresses:
                kind = _non_public(address)
                if kind:
                    raise UrlRefused(
                        f"url {url!r}: host {host} resolves to {address}, a {kind} address; "
                        "only public addresses are fetched unless "
                        "RAGFLEET_GATEWAY_INGEST_ALLOW_PRIVATE_URLS is on"
                    )
        return Target(url, host, port, addresses[0])


def _non_public(address: str) -> str:
    """What kind of non-public address ``address`` is; empty when it is globally routable."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    for kind, flag in (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("private", ip.is_private),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
    ):
        if flag:
            return kind
    return "" if ip.is_global else "non-public"


@contextmanager
def fetch_stream(
    client: httpx.Client, url: str, policy: UrlPolicy | None, deadline: float
) -> Iterator[httpx.Response]:
    """GET ``url`` and yield the final response (status not checked), following redirects
    itself so that every hop is checked by ``policy`` (when set) and connects to the address
    that was checked. Raises ``UrlRefused`` for a refused hop or too many redirects and
    ``TimeoutError`` once ``deadline`` (``time.monotonic()``) has passed."""
    redirects = DEFAULT_MAX_REDIRECTS if policy is None else policy.max_redirects
    for _hop in range(redirects + 1):
        if time.monotonic() > deadline:
            raise TimeoutError
        if policy is None:
            request = client.build_request("GET", url)
        else:
            target = policy.check(url)
            request = client.build_request(
                "GET",
                target.connect_url,
                headers={"Host": target.host_header},
                extensions={"sni_hostname": target.host},
            )
        response = client.send(request, stream=True, follow_redirects=False)
        location = response.headers.get("location")
        if response.is_redirect and location:
            response.close()
            url = urljoin(url, location)
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise UrlRefused(f"url {url!r}: more than {redirects} redirects")
