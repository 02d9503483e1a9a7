"""The `transformers` sampler (DPO_SAMPLER): answers drawn from the current policy (the base with the adapter so far)
by in-process `generate`, DPO_SAMPLES_PER_PROMPT a prompt, at DPO_SAMPLE_TEMPERATURE, at most
DPO_SAMPLE_MAX_NEW_TOKENS tokens each.

Each prompt's samples come from its own seed (the run's seed, the round, the prompt's index): the same prompt in the
same round gives the same samples on any rank and after any restart, so a round cut off while sampling draws the
same samples again. Ranks share the prompts (every `world`-th each) and every rank gets them all back. A round
samples before its trainer wraps the model: each rank's policy is the whole copy loading gave it (under FSDP, where
loading leaves the placing to the trainer, sampling has not met a GPU yet).
"""

from __future__ import annotations

from typing import Any

from entrypoint.evaluation.answers import prompt_inputs
from entrypoint.logs import progress
from entrypoint.run import peers


def prompt_seed(seed: int, round_: int, index: int) -> int:
    return (seed * 1_000_003 + round_ * 10_007 + index) % 2**63


def generated_tokens(rows: Any, eos_token_id: Any) -> int:
    """The tokens `generate` made in `rows` (the output past the prompt): each row's up to and with its first end of
    sequence (what follows is padding, a row having ended before the batch's longest)."""
    import torch

    ends = torch.isin(rows, torch.as_tensor(eos_token_id if isinstance(eos_token_id, list) else [eos_token_id]))
    first = torch.where(ends.any(dim=1), ends.int().argmax(dim=1) + 1, torch.full_like(ends[:, 0], rows.shape[1],
                                                                                        dtype=torch.long))
    return int(first.sum())


def sample_answers(model: Any, processor: Any, prompts: Any, *, seed: int, round_: int, samples: int,
                   temperature: float, max_new_tokens: int, rank: int = 0,
                   world: int = 1) -> list[tuple[list[str], int]]:
    """`samples` answers for each row of `prompts` (rows with `prompt` and `images`), in row order, on every rank,
    each row's with the tokens generated for them."""
    import torch

    tokenizer = getattr(processor, "tokenizer", processor)
    mine = range(rank, len(prompts), world)
    drawn: dict[int, tuple[list[str], int]] = {}
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = tokenizer.eos_token_id if eos is None else eos
    was_training = model.training
    model.eval()
    with progress(f"round {round_}: sampling", len(mine), "prompts") as advance:
        for index in mine:
            inputs = prompt_inputs(model, processor, prompts[index])
            torch.manual_seed(prompt_seed(seed, round_, index))
            with torch.no_grad():
                output = model.generate(**inputs, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                        max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                        pad_token_id=tokenizer.pad_token_id)
            start = inputs["input_ids"].shape[1]
            drawn[index] = ([tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in output],
                            generated_tokens(output[:, start:], eos))
            advance(1)
    model.train(was_training)
    for part in peers.from_every_rank(drawn):
        drawn.update(part)
    return [drawn[index] for index in range(len(prompts))]
