"""Benchmark: a DPO step with each image encoded once (DPO_ENCODE_IMAGES_ONCE) against TRL's own path, at real
geometry: every vision family's `shapes:` model (published processor and module tree, narrow widths) on real-size
photos (sample:rlaif-v-photos), batch 2, quantization none, on this machine's device.

    .venv/bin/python bench/bench_encode_once.py [--families llava-next,idefics2] [--steps 2] [--out FILE]

Each step (collate + forward/backward of policy and reference) is timed with both paths on the same batches,
alternating, after one warm-up step each; the two losses are printed side by side as a check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
FAMILIES = ("llava-next", "llava", "idefics2", "qwen2.5-vl", "qwen3-vl", "gemma3")
# Qwen's published max_pixels let a 4000x3000 photo cost ~15,000 tokens: capped as the README's examples do.
SETTINGS = {"qwen2.5-vl": {"DPO_IMAGE_MAX_PIXELS": "802816"}, "qwen3-vl": {"DPO_IMAGE_MAX_PIXELS": "1048576"}}


def trainer_for(family: str, once: bool, cache: Path, work: Path):
    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    for key in {key for extra in SETTINGS.values() for key in extra}:  # one family's settings, not the last's
        os.environ.pop(key, None)
    os.environ.update({"DPO_MODEL": f"shapes:{family}", "DPO_DATASET": "sample:rlaif-v-photos",
                       "DPO_QUANTIZATION": "none", "DPO_LORA_DROPOUT": "0", "DPO_CACHE_DIR": str(cache),
                       "DPO_PER_DEVICE_TRAIN_BATCH_SIZE": "2", "DPO_ENCODE_IMAGES_ONCE": str(once).lower(),
                       **SETTINGS.get(family, {})})
    settings = load_settings()
    ref = resolve_model(settings.model, "auto", None, cache)
    processor = load_processor(ref, settings.max_image_tiles, settings.image_max_pixels)
    args = dpo_config(settings, work / f"{family}-{once}", "bench")
    data = prepare_pairs(settings, cache, processor, ref.family, args.max_length, max_samples=16)
    trainer = build_trainer(settings, load_model(ref, "none", processor=processor), ref.family, processor,
                            data.train, None, args)
    trainer.model.train()
    return trainer, data.train


def step(trainer, pairs, index: int) -> tuple[float, float]:
    """Collate two pairs, forward and backward (policy and reference): seconds and loss."""
    started = time.perf_counter()
    batch = trainer.data_collator([pairs[(2 * index + i) % len(pairs)] for i in range(2)])
    loss = trainer.compute_loss(trainer.model, trainer._prepare_inputs(dict(batch)))
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - started, float(loss)


def bench_family(family: str, steps: int, cache: Path, work: Path) -> dict:
    import torch

    torch.manual_seed(0)
    plain, pairs = trainer_for(family, False, cache, work)
    once, _ = trainer_for(family, True, cache, work)
    once.model.load_state_dict(plain.model.state_dict())
    times: dict[str, list[float]] = {"plain": [], "once": []}
    losses: dict[str, list[float]] = {"plain": [], "once": []}
    for index in range(steps + 1):  # step 0 warms up
        for name, trainer in (("plain", plain), ("once", once)):
            seconds, loss = step(trainer, pairs, index)
            if index:
                times[name].append(seconds)
                losses[name].append(loss)
    plain_s, once_s = statistics.median(times["plain"]), statistics.median(times["once"])
    return {"family": family, "plain_s": plain_s, "once_s": once_s, "ratio": once_s / plain_s,
            "max_loss_diff": max(abs(a - b) for a, b in zip(losses["plain"], losses["once"], strict=True))}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--families", default=",".join(FAMILIES))
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--out")
    options = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    cache = Path(os.environ.get("DPO_CACHE_DIR", Path.home() / ".cache" / "dpo-job"))
    results = []
    with tempfile.TemporaryDirectory() as work:
        print(f"{'family':<12} {'TRL path s/step':>16} {'encode once':>12} {'ratio':>6} {'loss diff':>10}")
        for family in options.families.split(","):
            row = bench_family(family, options.steps, cache, Path(work))
            results.append(row)
            print(f"{family:<12} {row['plain_s']:>16.2f} {row['once_s']:>12.2f} {row['ratio']:>6.2f} "
                  f"{row['max_loss_diff']:>10.2e}", flush=True)
    if options.out:
        Path(options.out).parent.mkdir(parents=True, exist_ok=True)
        Path(options.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
