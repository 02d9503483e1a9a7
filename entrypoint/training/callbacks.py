"""The job's Trainer callbacks, one class each: checkpoints and SIGTERM, progress lines, settings to wandb.

Each is a plain `transformers.TrainerCallback` subclass; importing this module imports transformers, which the
job does once the settings are known to be good.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from entrypoint.logs import progress_log, timing
from entrypoint.run import checkpoints, peers

log = logging.getLogger("entrypoint.checkpoints")


class CheckpointCallback(TrainerCallback):
    """Marks checkpoints complete, prunes, saves at the last step, and stops cleanly on SIGTERM.

    SIGTERM is what a spot VM (and SkyPilot) sends before taking the machine: the current step
    finishes, a checkpoint is saved, and training stops; `preempted` tells the caller to exit with
    the code the SkyPilot YAML recovers on. With several ranks the signal may reach only some (a node's notice, or
    one worker): at each step's end the ranks agree (one all-reduce of one number), so every rank saves the same
    step and stops, instead of the others blocking in the next step's collectives until they are killed.
    """

    def __init__(self, root: Path, keep: int | None, resumed_from: Path | None):
        self.root, self.keep, self.resumed_from = root, keep, resumed_from
        self.preempted = False
        self._previous_handler: Any = None

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        log.warning("SIGTERM: finishing this step, saving a checkpoint, then stopping")
        self.preempted = True

    def on_train_begin(self, args, state, control, **kwargs):
        self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)
        # A resumed TrainerState carries the logging, eval and save intervals of the run that saved it; this run's
        # settings apply instead (changing DPO_LOGGING_STEPS on a restart is accepted, so it must take effect).
        saved = {kind: getattr(state, f"{kind}_steps") for kind in ("logging", "eval", "save")}
        state.compute_steps(args, state.max_steps)
        changed = [f"{kind}_steps {was} -> {getattr(state, f'{kind}_steps')}" for kind, was in saved.items()
                   if was != getattr(state, f"{kind}_steps")]
        if state.global_step and changed:
            log.info("resumed with this run's intervals: %s", ", ".join(changed))

    def on_train_end(self, args, state, control, **kwargs):
        if self._previous_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_handler)

    def on_step_end(self, args, state, control, **kwargs):
        if peers.any_rank(self.preempted, args.device) and not self.preempted:
            log.warning("SIGTERM reached another rank: saving a checkpoint at this step, then stopping")
            self.preempted = True
        if self.preempted:
            control.should_save = True
            control.should_training_stop = True
        elif state.global_step >= state.max_steps:
            control.should_save = True  # a finished run resumes to "done" instead of repeating steps
        return control

    def on_save(self, args, state, control, **kwargs):
        # Every rank has written its files once it is here; what each sees goes into the marker (run/checkpoints.py)
        checkpoint = self.root / f"checkpoint-{state.global_step}"
        views = peers.from_every_rank(checkpoints.view(self.root, checkpoint, self.keep))
        if state.is_world_process_zero:
            checkpoints.seal(self.root, state.global_step, self.keep, self.resumed_from, views)
        peers.barrier()  # no rank goes on (and may be preempted) before the marker is written
        return control


class ProgressLogCallback(TrainerCallback):
    """One log line per logging step: step/max, and while training its share, the time since this process
    began training and the time left at the pace so far (a resumed run counts from its first step here);
    then loss, reward accuracy and margin, lr."""

    KEYS = ("loss", "rewards/accuracies", "rewards/margins", "learning_rate", "eval_loss",
            "eval_rewards/accuracies")

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.clock = clock
        self.started: tuple[float, int] | None = None  # (time, global step) when training began

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self.started = (self.clock(), state.global_step)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any):
        self.started = None

    def _where(self, state: Any) -> str:
        if not state.max_steps:
            return "before training"
        where = f"step {state.global_step}/{state.max_steps}"
        if self.started is None or state.global_step <= self.started[1]:
            return where
        pace = timing(self.clock() - self.started[0], state.global_step - self.started[1],
                      state.max_steps - state.global_step)
        return f"{where} ({100 * state.global_step // state.max_steps}%), {pace}"

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any):
        if state.is_world_process_zero and logs:
            shown = ", ".join(f"{k} {logs[k]:.4g}" for k in self.KEYS if isinstance(logs.get(k), int | float))
            if shown:
                progress_log.info("%s: %s", self._where(state), shown)


class SettingsToWandb(TrainerCallback):
    """Adds the job's settings (already redacted) and what made the run (run/record.py: model, data, code,
    environment) to the wandb run the Trainer's callback opened."""

    def __init__(self, settings_dict: dict[str, Any], provenance: dict[str, Any] | None = None):
        self.settings_dict = settings_dict
        self.provenance = provenance

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        import wandb

        if state.is_world_process_zero and wandb.run is not None:
            extra = {"provenance": self.provenance} if self.provenance else {}
            wandb.run.config.update({"job": self.settings_dict, **extra}, allow_val_change=True)
