"""Connecting the ingestion driver to Ray: a cluster when given an address, else local Ray."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

LOCAL = "local"


@contextlib.contextmanager
def ray_session(
    address: str = LOCAL, num_cpus: int | None = None, *, keep: bool = False
) -> Iterator[None]:
    """Ray for the duration of the block. Reuses a Ray already initialized in this process
    (and leaves it running); otherwise starts local Ray (``address="local"``, ``num_cpus``
    CPUs, default all) or connects to the cluster at ``address`` (``host:port`` of its GCS,
    or ``ray://`` for Ray Client), and shuts down on exit unless ``keep`` (a long-running
    service reuses it for its next job).

    The fleet's own cluster (``ragfleet up``) requires Ray's token authentication: connect
    with ``RAY_AUTH_MODE=token`` in the environment (the CLI does).
    """
    import ray

    if ray.is_initialized():
        yield
        return
    ray.init(
        address=address,
        num_cpus=(num_cpus or os.cpu_count() or 1) if address == LOCAL else None,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    try:
        yield
    finally:
        if not keep:
            ray.shutdown()
