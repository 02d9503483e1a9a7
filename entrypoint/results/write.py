"""The run directory's results, written by rank 0 once the adapter is saved, in their order: the rounds' samples and
pairs (DPO_ROUNDS), plots, the model card, report.html, data_report.json, metrics.json, config.json, and manifest.json
last (run/outputs.py's contract)."""

from __future__ import annotations

import shutil
from typing import Any

from entrypoint.config.origin import sources
from entrypoint.config.settings import JobSettings, public_dict
from entrypoint.models.loading import ModelRef
from entrypoint.results.card import write_model_card
from entrypoint.results.plots import write_plots
from entrypoint.results.report import write_report
from entrypoint.results.rounds import keep_rounds, round_examples
from entrypoint.run import outputs
from entrypoint.run.paths import RunPaths


def write_results(settings: JobSettings, paths: RunPaths, model_ref: ModelRef, dpo_config: dict[str, Any],
                  report: dict[str, Any], metrics: dict[str, Any], load_kwargs: dict[str, Any] | None = None,
                  record: dict[str, Any] | None = None, prompts: Any = None) -> None:
    """Everything a person or a pipeline reads after the run; `dpo_config`: the resolved DPOConfig (`to_dict()`),
    `record`: the run record (manifest.json's provenance), `prompts`: the training pairs the on-policy rounds'
    pairs name (their images and prompts shown in report.html)."""
    outputs.remove_unpublished(paths.adapter_dir)
    examples = {}
    if metrics.get("rounds"):  # each round's samples and pairs into the run dir, fingerprinted in the provenance
        kept = keep_rounds(paths.checkpoint_dir, paths.output_dir, metrics["rounds"])
        record = {**record, "rounds": kept} if record is not None else None
        examples = round_examples(paths.output_dir, prompts, metrics["rounds"]) if prompts is not None else {}
    plots = write_plots(metrics["history"], paths.output_dir / outputs.PLOTS_DIR)
    for plot in plots:  # the card travels with the adapter (to the Hub too): so do its pictures
        (paths.adapter_dir / outputs.PLOTS_DIR).mkdir(exist_ok=True)
        shutil.copy2(plot, paths.adapter_dir / outputs.PLOTS_DIR / plot.name)
    write_model_card(paths.adapter_dir, settings, model_ref, report, metrics,
                     [f"{outputs.PLOTS_DIR}/{p.name}" for p in plots], load_kwargs, record)
    page = write_report(paths.output_dir / outputs.REPORT, run_name=paths.run_name, settings=public_dict(settings),
                        data_report=report, metrics=metrics, plots=plots, run_dir=paths.output_dir,
                        round_examples=examples)
    shutil.copy2(page, paths.adapter_dir / outputs.REPORT)  # self-contained: the card links it, on the Hub too
    outputs.write_json(paths.output_dir / outputs.DATA_REPORT, report)
    outputs.write_json(paths.output_dir / outputs.METRICS, metrics)
    outputs.write_json(paths.output_dir / outputs.CONFIG, {**public_dict(settings), "run_name": paths.run_name,
                                                          "sources": sources(settings), "dpo_config": dpo_config})
    outputs.write_manifest(paths.output_dir, paths.run_name, exclude=(paths.checkpoint_dir,), record=record)
