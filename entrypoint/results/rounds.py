"""The on-policy rounds (DPO_ROUNDS) in the run directory:

    rounds/<r>/samples.jsonl   the round's samples with their scores (and the model judge's verdicts), as kept
    rounds/<r>/pairs.jsonl     the round's pairs, as trained on
    rounds/<r>/images/         the images of the round's example pairs in report.html (JPEG, at most 512 px)

copied from the checkpoint dir (`<checkpoint dir>/rounds/<r>/`, working state) when the results are written, so they
are listed in manifest.json and published like every other result; each pairs file's sha256 goes into the
manifest's provenance (`rounds`). report.html shows up to EXAMPLES_PER_ROUND pairs a round: those whose chosen and
rejected scores are furthest apart, with the prompt, its image and, for the model judge, each claim's verdict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from entrypoint.data.formats import message_text
from entrypoint.evaluation.answers import save_image
from entrypoint.onpolicy.rounds import PAIRS, ROUNDS_DIR, SAMPLES, round_dir
from entrypoint.run.outputs import sha256_file

EXAMPLES_PER_ROUND = 3


def keep_rounds(checkpoint_dir: Path, run_dir: Path, rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each round's samples and pairs copied into `run_dir/rounds/<r>/` (an earlier attempt's copies replaced);
    returns the provenance's `rounds`: each round's pairs file, its pairs and sha256."""
    shutil.rmtree(run_dir / ROUNDS_DIR, ignore_errors=True)
    kept = {}
    for summary in rounds:
        source, target = round_dir(checkpoint_dir, summary["round"]), round_dir(run_dir, summary["round"])
        target.mkdir(parents=True, exist_ok=True)
        for name in (SAMPLES, PAIRS):
            shutil.copy2(source / name, target / name)
        pairs = target / PAIRS
        kept[str(summary["round"])] = {"path": pairs.relative_to(run_dir).as_posix(), "pairs": summary["pairs"],
                                       "sha256": sha256_file(pairs)}
    return kept


def _records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _claims(record: dict[str, Any] | None, answer: str) -> list[dict[str, Any]]:
    """The model judge's verdict on each claim of `answer` (samples.jsonl's "verdicts"); [] for another judge."""
    if not record or not record.get("verdicts") or answer not in record["samples"]:
        return []
    return list(record["verdicts"][record["samples"].index(answer)].get("claims") or [])


def round_examples(run_dir: Path, prompts: Any, rounds: list[dict[str, Any]],
                   per_round: int = EXAMPLES_PER_ROUND) -> dict[int, list[dict[str, Any]]]:
    """Up to `per_round` pairs of each round kept in `run_dir` (keep_rounds), widest score gap first, with the prompt's
    text and image (saved under rounds/<r>/images/) and the claims' verdicts; `prompts`: the training rows the pairs
    name (the prepared pairs' train split)."""
    out: dict[int, list[dict[str, Any]]] = {}
    for summary in rounds:
        root = round_dir(run_dir, summary["round"])
        samples = {record["prompt"]: record for record in _records(root / SAMPLES)}
        pairs = sorted(_records(root / PAIRS), key=lambda p: -(p["chosen_score"] - p["rejected_score"]))[:per_round]
        examples = []
        for pair in pairs:
            row = prompts[pair["prompt"]]
            relative = (root / "images" / f"{pair['prompt']}.jpg").relative_to(run_dir).as_posix()
            examples.append({"prompt_index": pair["prompt"], "prompt": message_text(row["prompt"]),
                             "image": save_image(row, run_dir, relative),
                             "chosen": pair["chosen"], "chosen_score": pair["chosen_score"],
                             "rejected": pair["rejected"], "rejected_score": pair["rejected_score"],
                             "chosen_claims": _claims(samples.get(pair["prompt"]), pair["chosen"]),
                             "rejected_claims": _claims(samples.get(pair["prompt"]), pair["rejected"])})
        out[summary["round"]] = examples
    return out
