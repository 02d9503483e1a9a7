"""The prepared pairs kept beside the checkpoints (`<checkpoint dir>/prepared`), so that a restarted job skips
preparing them: rank 0 prepares and saves them once; a restarted job, and the other ranks, load what it saved."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from entrypoint.config.settings import JobSettings
from entrypoint.data.prepare import PreparedData, load_prepared, save_prepared
from entrypoint.data.stage import prepare_pairs
from entrypoint.models.families import Family
from entrypoint.run.state import RunState

log = logging.getLogger("entrypoint")


def prepared_data(settings: JobSettings, cache_dir: Path, state: RunState, processor: Any, family: Family,
                  max_length: int | None) -> PreparedData:
    """Pairs ready for the trainer: reused from the checkpoint dir when a previous attempt made them."""
    state.reload()
    if state.done("prepared") and state.prepared_dir.is_dir():
        try:
            data = load_prepared(state.prepared_dir, state.get("prepared"))
            log.info("reusing prepared data from %s", state.prepared_dir)
            return data
        except (OSError, ValueError) as exc:  # on a bucket mount: cut off by a preemption, or not there yet
            log.warning("prepared data in %s is incomplete (%s): preparing again", state.prepared_dir, exc)
    data = prepare_pairs(settings, cache_dir, processor, family, max_length, settings.max_samples)
    if state.writer:
        save_prepared(data, state.prepared_dir)
    state.mark("prepared", data.report)
    return data
