"""Failure notifications: both flows' ``on_failure`` and ``on_crashed`` hooks send a message through a
Prefect notification block, so that a multi-day run that stops is noticed the hour it stops.

The block is named (``<block type slug>/<block name>``, e.g. ``slack-webhook/semiface-alerts``) by the
environment variable ``SEMIFACE_NOTIFY_BLOCK`` of the run (a worker's or a work pool's setting) or else by
the Prefect Variable ``semiface_notify_block``, read when the hook fires. Neither set: the run log says that
no notification was sent and how to configure one. A hook runs in the flow-run process, so a process killed
outright (SIGKILL, the kernel's out-of-memory killer) notifies nothing: for that, a server-side automation
(docs/deployment.md) watches the run states instead.
"""

from __future__ import annotations

import logging
import os
from typing import Any

NOTIFY_ENV = "SEMIFACE_NOTIFY_BLOCK"
NOTIFY_VARIABLE = "semiface_notify_block"
SETUP_HINT = (f"set the Prefect variable {NOTIFY_VARIABLE} to a notification block, e.g. `prefect variable set "
              f"{NOTIFY_VARIABLE} slack-webhook/semiface-alerts` (or {NOTIFY_ENV} in the worker's environment); "
              "docs/deployment.md says how to create the block")
# Parameters worth naming in a notification (where the run's files are, which run of a sweep it was).
NAMED_PARAMETERS = ("label", "run_dir", "ratio", "labels", "method", "deployment")


def notification_block_name() -> str | None:
    """The notification block to send through: ``SEMIFACE_NOTIFY_BLOCK``, else the Prefect Variable, else None."""
    name = os.environ.get(NOTIFY_ENV)
    if name:
        return name
    from prefect.variables import Variable

    value = Variable.get(NOTIFY_VARIABLE)
    return str(value) if value else None


def failure_message(flow_name: str, flow_run: Any, state: Any) -> tuple[str, str]:
    """(subject, body) of the notification of ``flow_run`` ending in ``state``."""
    from prefect.settings import PREFECT_UI_URL

    subject = f"semiface: {flow_name} run {flow_run.name} {state.name}"
    parameters = flow_run.parameters or {}
    named = ", ".join(f"{key}={parameters[key]!r}" for key in NAMED_PARAMETERS if key in parameters)
    lines = [f"Flow run {flow_run.name} ({flow_name}) ended {state.name}: {state.message or 'no message'}"]
    if named:
        lines.append(f"Parameters: {named}")
    ui = PREFECT_UI_URL.value()
    if ui:
        lines.append(f"{ui.rstrip('/')}/runs/flow-run/{flow_run.id}")
    lines.append("A rerun with the same parameters resumes at the stage that stopped (finished stages are cached).")
    return subject, "\n".join(lines)


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """``on_failure`` / ``on_crashed`` hook: send the failure through the configured block, or say why not.
    Never raises: a notification that cannot be sent is logged, and the run's own state stands."""
    logger = _run_logger(flow, flow_run)
    try:
        name = notification_block_name()
    except Exception as exc:  # the API unreachable (what may have crashed the run): log it, do not mask the state
        logger.error("failure notification not sent: could not read %s (%s)", NOTIFY_VARIABLE, exc)
        return
    if not name:
        logger.warning("failure notification not sent: no notification block configured; %s", SETUP_HINT)
        return
    subject, body = failure_message(flow.name, flow_run, state)
    try:
        import prefect.blocks.notifications  # noqa: F401  (registers Prefect's notification block types)
        from prefect.blocks.core import Block

        Block.load(name).notify(body=body, subject=subject)
    except Exception as exc:  # a wrong block name or an unreachable service: the run log says which
        logger.error("failure notification through block %r not sent: %s", name, exc)
        return
    logger.info("failure notification sent through block %r", name)


def _run_logger(flow: Any, flow_run: Any) -> logging.Logger | logging.LoggerAdapter:
    """The flow run's logger (its records reach the run's logs on the server), else this module's."""
    try:
        from prefect.logging.loggers import flow_run_logger

        return flow_run_logger(flow_run, flow)
    except Exception:  # no Prefect logging set up (a direct call)
        return logging.getLogger(__name__)
