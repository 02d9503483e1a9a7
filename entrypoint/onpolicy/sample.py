"""The `transformers` sampler (DPO_SAMPLER): answers drawn from the current policy (the base with the adapter so far)
by in-process `generate`, DPO_SAMPLES_PER_PROMPT a prompt, at DPO_SAMPLE_TEMPERATURE, at most
DPO_SAMPLE_MAX_NEW_TOKENS tokens each.

Each prompt's samples come from its own seed (the run's seed, the round, the prompt's index): the same prompt in the
same round gives the same samples on any rank and after any restart, so a round cut off while sampling draws the
same samples again. Ranks share the prompts (every `world`-th each) and every rank gets them all back; under FSDP,
where each forward needs every rank, every rank samples every prompt with `synced_gpus`.
"""

from __future__ import annotations

from typing import Any

from entrypoint.evaluation.answers import prompt_inputs
from entrypoint.logs import progress
from entrypoint.run import peers


def prompt_seed(seed: int, round_: int, index: int) -> int:
    return (seed * 1_000_003 + round_ * 10_007 + index) % 2**63


def sample_answers(model: Any, processor: Any, prompts: Any, *, seed: int, round_: int, samples: int,
                   temperature: float, max_new_tokens: int, rank: int = 0, world: int = 1,
                   sharded: bool = False) -> list[list[str]]:
    """`samples` answers for each row of `prompts` (rows with `prompt` and `images`), in row order, on every rank."""
    import torch

    tokenizer = getattr(processor, "tokenizer", processor)
    mine = range(len(prompts)) if sharded else range(rank, len(prompts), world)
    drawn: dict[int, list[str]] = {}
    was_training = model.training
    model.eval()
    with progress(f"round {round_}: sampling", len(mine), "prompts") as advance:
        for index in mine:
            inputs = prompt_inputs(model, processor, prompts[index])
            torch.manual_seed(prompt_seed(seed, round_, index))
            with torch.no_grad():
                output = model.generate(**inputs, do_sample=True, temperature=temperature, top_p=1.0, top_k=0,
                                        max_new_tokens=max_new_tokens, num_return_sequences=samples,
                                        pad_token_id=tokenizer.pad_token_id, synced_gpus=sharded)
            start = inputs["input_ids"].shape[1]
            drawn[index] = [tokenizer.decode(row[start:], skip_special_tokens=True).strip() for row in output]
            advance(1)
    model.train(was_training)
    if not sharded:
        for part in peers.from_every_rank(drawn):
            drawn.update(part)
    return [drawn[index] for index in range(len(prompts))]
