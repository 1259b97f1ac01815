"""Building the opensearch-py client from settings, and turning its failures into domain errors."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from opensearchpy import OpenSearch
from opensearchpy.exceptions import (
    AuthenticationException,
    AuthorizationException,
    ConnectionError,
    ConnectionTimeout,
    SSLError,
    TransportError,
)

from ragfleet.runtime.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    RagfleetError,
    ResourceExhausted,
    Unavailable,
)
from ragfleet_retriever.settings import RetrieverSettings

_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"()]+)")


def address_of(url: str) -> str:
    """``scheme://host:port`` of ``url``, without credentials or path: safe to log and to put
    in error messages."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 9200)
    host = f"[{parts.hostname}]" if parts.hostname and ":" in parts.hostname else parts.hostname
    return f"{parts.scheme}://{host}:{port}"


def make_client(settings: RetrieverSettings) -> OpenSearch:
    """A client for ``settings.opensearch_url``: one request timeout for connect and read (an
    RPC's calls get less when its deadline is nearer: ``OpenSearchBackend``), a bounded number
    of retries on connection failures and 502/503/504. A connect timeout is a connection failure
    to opensearch-py, so it is retried; a read timeout (the cluster took the request) is not."""
    options: dict[str, Any] = {
        "timeout": settings.opensearch_timeout_s,
        "max_retries": settings.opensearch_max_retries,
        "retry_on_timeout": False,
        "verify_certs": settings.opensearch_verify_certs,
        "ssl_show_warn": settings.opensearch_verify_certs,
    }
    if settings.opensearch_username:
        options["http_auth"] = (
            settings.opensearch_username,
            settings.opensearch_password.get_secret_value(),
        )
    if settings.opensearch_ca_certs is not None:
        options["ca_certs"] = str(settings.opensearch_ca_certs)
    return OpenSearch(hosts=[settings.opensearch_url], **options)


def _cause(error: TransportError) -> str:
    """The useful part of a transport error: the OS error ("Connection refused"), the
    cluster's root-cause reason, or the client's message."""
    found = _ERRNO.search(str(error.error)) or _ERRNO.search(str(error.info))
    if found:
        return found.group(1).strip()
    info = error.info
    if isinstance(info, Mapping):
        problem = info.get("error")
        if isinstance(problem, Mapping):
            causes = problem.get("root_cause") or [problem]
            first = causes[0] if isinstance(causes[0], Mapping) else {}
            kind, reason = first.get("type", ""), first.get("reason", "")
            return f"{kind}: {reason}" if kind and reason else str(reason or kind or problem)
        if problem:
            return str(problem)
    return str(error.error)


@contextmanager
def translated_errors(address: str, operation: str) -> Iterator[None]:
    """Runs a client call, re-raising its failures as domain errors that name ``address``:

    - no answer within the timeout: ``DeadlineExceeded``;
    - connection refused, DNS or TLS failure: ``Unavailable``;
    - 401/403: ``FailedPrecondition`` (the credentials are wrong; retrying will not help);
    - 429: ``ResourceExhausted``; 5xx: ``Unavailable``;
    - any other status (a request the cluster refuses): ``RagfleetError`` (internal).
    """
    try:
        yield
    except ConnectionTimeout as error:
        raise DeadlineExceeded(
            f"OpenSearch at {address} did not answer {operation} within the timeout: "
            f"{_cause(error)}"
        ) from error
    except SSLError as error:
        raise Unavailable(
            f"OpenSearch at {address}: TLS failed during {operation} ({_cause(error)}); check "
            "RAGFLEET_RETRIEVER_OPENSEARCH_VERIFY_CERTS / _CA_CERTS"
        ) from error
    except ConnectionError as error:
        raise Unavailable(
            f"OpenSearch at {address} is unreachable ({operation}): {_cause(error)}"
        ) from error
    except (AuthenticationException, AuthorizationException) as error:
        raise FailedPrecondition(
            f"OpenSearch at {address} refused {operation} ({error.status_code}): "
            f"{_cause(error)}; check RAGFLEET_RETRIEVER_OPENSEARCH_USERNAME / _PASSWORD and "
            "the user's permissions on the index"
        ) from error
    except TransportError as error:
        status = error.status_code
        message = f"OpenSearch at {address} failed {operation} ({status}): {_cause(error)}"
        if status == 429:
            raise ResourceExhausted(message) from error
        if isinstance(status, int) and status >= 500:
            raise Unavailable(message) from error
        raise RagfleetError(message) from error
