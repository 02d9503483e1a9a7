"""Where a finished run goes (DPO_S3_URI, DPO_HUB_REPO) and which of those it has not reached yet.

Each destination is recorded in state.json once published, so a rerun publishes only to one added or changed after
the run finished, without training again; each publisher is idempotent.
"""

from __future__ import annotations

import logging
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.run.paths import RunPaths

log = logging.getLogger("entrypoint")


def destinations(settings: JobSettings) -> dict[str, str]:
    """Where this run goes, by publisher: {"s3": DPO_S3_URI, "hub": DPO_HUB_REPO}, those that are set."""
    return {kind: where for kind, where in (("s3", settings.s3_uri), ("hub", settings.hub_repo)) if where}


def unpublished(wanted: dict[str, str], published: dict[str, Any]) -> dict[str, str]:
    """The destinations not yet published to. A destination added or changed after the run finished is
    published then (the destinations are not among the settings a restart compares), without retraining."""
    def done_to(record: Any) -> str | None:
        return record.get("to") if isinstance(record, dict) else None

    return {kind: where for kind, where in wanted.items() if done_to(published.get(kind)) != where}


def check_destinations(settings: JobSettings, paths: RunPaths) -> None:
    """Start-up checks (a dry run's too): the S3 prefix is writable and holds no other run, the Hub token may push."""
    if settings.s3_uri:
        from entrypoint.publish.s3 import check_prefix

        check_prefix(settings.s3_uri, paths.run_name, settings.overwrite)
    if settings.hub_repo:
        from entrypoint.publish.hub import check_hub

        check_hub(settings.hub_repo)


def publish_run(settings: JobSettings, paths: RunPaths, todo: dict[str, str]) -> dict[str, Any]:
    """Upload the finished run to each destination in `todo`; returns what each publisher recorded."""
    done: dict[str, Any] = {}
    if "s3" in todo:
        from entrypoint.publish.s3 import upload_run

        done["s3"] = {"to": todo["s3"], **upload_run(paths.output_dir, todo["s3"], settings.overwrite)}
    if "hub" in todo:
        from entrypoint.publish.hub import publish_adapter

        url = publish_adapter(paths.adapter_dir, todo["hub"], settings.hub_private, paths.run_name)
        done["hub"] = {"to": todo["hub"], "url": url}
        log.info("hub: %s", url)
    return done
