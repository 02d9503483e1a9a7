"""The prepared pairs kept beside the checkpoints (`<checkpoint dir>/prepared`), so that a restarted job skips
preparing them. Rank 0 prepares them (or reuses what an earlier attempt kept) and keeps them there, marked complete
like a checkpoint (run/checkpoints.py); every other rank loads that copy once its own view of the checkpoint dir
shows all of it: on a bucket mount another node sees rank 0's files late, and must neither read them half-synced
nor prepare the whole dataset again itself."""

from __future__ import annotations

import logging
import uuid
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.data.prepare import PreparedData, load_prepared, save_prepared
from entrypoint.data.stage import prepare_pairs
from entrypoint.models.families import Family
from entrypoint.run import checkpoints, peers
from entrypoint.run.state import RunState

log = logging.getLogger("entrypoint")


def prepared_data(settings: JobSettings, cache_dir: Path, state: RunState, processor: Any, family: Family,
                  max_length: int | None) -> PreparedData:
    """Pairs ready for the trainer, on every rank (the writer of `state` is rank 0)."""
    data = _by_rank_0(settings, cache_dir, state, processor, family, max_length) if state.writer else None
    kept, report = peers.from_rank_0((checkpoints.marker(state.prepared_dir), data.report) if data else None) \
        or (None, None)
    if data is not None:
        return data
    folder = state.prepared_dir
    peers.wait_until_visible(f"the prepared data in {folder}",
                             lambda: checkpoints.marker(folder) == kept and checkpoints.is_complete(folder))
    log.info("reusing prepared data from %s (rank 0 prepared it)", folder)
    state.data["stages"]["prepared"] = report  # in memory: this rank does not write state.json
    return load_prepared(folder, report)


def _by_rank_0(settings: JobSettings, cache_dir: Path, state: RunState, processor: Any, family: Family,
               max_length: int | None) -> PreparedData:
    folder = state.prepared_dir
    if state.done("prepared") and checkpoints.is_complete(folder):
        try:
            data = load_prepared(folder, state.get("prepared"))
            log.info("reusing prepared data from %s", folder)
            return data
        except (OSError, ValueError) as exc:
            log.warning("prepared data in %s cannot be read (%s): preparing again", folder, exc)
    elif folder.is_dir():
        log.warning("prepared data in %s is incomplete (cut off by a preemption, or not uploaded): preparing again",
                    folder)
    data = prepare_pairs(settings, cache_dir, processor, family, max_length, settings.max_samples)
    save_prepared(data, folder)
    checkpoints.mark_complete(folder, note={"id": uuid.uuid4().hex})  # this copy, not an earlier attempt's
    state.mark("prepared", data.report)
    return data

