"""Evaluation: DPO reward metrics on the held-out pairs, and answers generated before and after.

"Before" is the base model: the trained model with its adapter switched off, so no second copy of
the model is loaded. At step 0 the policy equals the reference, so the "before" rewards are 0 and
the loss is ln 2 by construction; the generations show what actually changed.
"""

from __future__ import annotations

from typing import Any

from entrypoint.data.formats import message_text

MAX_NEW_TOKENS = 64


def reward_metrics(trainer: Any) -> dict[str, float]:
    """trainer.evaluate() on the eval pairs, with the `eval_` prefix dropped."""
    if trainer.eval_dataset is None:
        return {}
    metrics = trainer.evaluate()
    return {key.removeprefix("eval_"): float(value) for key, value in metrics.items()
            if isinstance(value, int | float)}


def _generate(model: Any, processor: Any, pair: dict[str, Any]) -> str:
    import torch

    prompt = processor.apply_chat_template(pair["prompt"], add_generation_prompt=True, tokenize=False)
    images = pair.get("images")
    inputs = processor(text=prompt, images=images, return_tensors="pt") if images else processor(
        prompt, return_tensors="pt")
    inputs = inputs.to(model.device)
    tokenizer = getattr(processor, "tokenizer", processor)
    with torch.no_grad():
        output = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()


def sample_generations(model: Any, processor: Any, pairs: Any, count: int) -> list[dict[str, str]]:
    """Greedy answers of the base model and of the tuned model to the first `count` eval prompts."""
    samples = []
    was_training = model.training
    model.eval()
    for pair in pairs.select(range(min(count, len(pairs)))):
        with model.disable_adapter():
            base = _generate(model, processor, pair)
        samples.append({"prompt": message_text(pair["prompt"]), "chosen": message_text(pair["chosen"]),
                        "rejected": message_text(pair["rejected"]), "base": base,
                        "tuned": _generate(model, processor, pair)})
    model.train(was_training)
    return samples
