"""Running flows in the test process against a Prefect server the test started (not the harness's)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prefect.concurrency.services import ConcurrencySlotAcquisitionWithLeaseService
from prefect.settings import PREFECT_API_URL, temporary_settings


@contextmanager
def on_server(api_url: str) -> Iterator[None]:
    """Flows run inside the block talk to the server at ``api_url``. Prefect keeps its queue services (a task's
    tag-concurrency slots, events, logs) for the life of the process, each with a client of the server it
    first met; they are drained on the way out (one registry holds them all), so that a later module's flows
    in this xdist worker do not reach for this server once it has stopped (CI: "Unable to acquire
    concurrency slots on ['tag:data', 'tag:stage']", the client's connection refused)."""
    with temporary_settings({PREFECT_API_URL: api_url}):
        try:
            yield
        finally:
            ConcurrencySlotAcquisitionWithLeaseService.drain_all(timeout=60)
