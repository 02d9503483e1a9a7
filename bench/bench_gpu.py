"""GPU benchmark: LLaVA-NeXT-Mistral-7B QLoRA DPO at 1 tile and at full anyres, measured against the memory plan.

    make bench-gpu        (.venv/bin/python bench/bench_gpu.py [--steps 8] [--batch 1])

On a GPU the model is llava-v1.6-mistral-7b's full architecture from the repo's published values
(entrypoint/models/published.py), random weights initialised directly on the GPU in bf16 and saved once to a
local directory; the job then loads it in 4-bit exactly as it loads a Hub checkpoint. Its processor is the
`shapes:llava-next` one (the published image processor, so real image-token counts). Each setting runs the
whole job (`python -m entrypoint`) on `sample:rlaif-v-photos` (real photo sizes) and reports samples/s,
tokens/s, the peak GPU memory torch allocated next to the plan's estimate, and an MFU estimate.

On a CPU it runs the `shapes:llava-next` model itself (a test does, so the script cannot rot); those figures
say nothing about a GPU.

MFU counts the model FLOPs of a DPO step per token of the decoder: the policy's forward (2N) and backward
through frozen weights (2N, activation gradients only), the reference forward (2N), plus attention
(causal: 2 x length x hidden x layers per pass, 3 passes); recomputation by gradient checkpointing is not
counted (the usual convention). The vision tower's share (~2% of the FLOPs) is left out.

On a GPU it also checks what no CPU test can reach, each a line PASS or FAIL (exit 1 on any FAIL):
- TRL's Triton log-prob kernels compile (Triton's C launcher built with the image's gcc) and match torch;
- the trained adapter is fp32 (training/trainer.py, keep_trained_weights_in_fp32);
- the measured peak is within 15% of the memory plan at 1 tile and at full anyres;
- out of memory (torch's allocator capped a little above the weights) is exit 3 with the job's message;
- encoding each image once a step gives TRL's loss and gradients on CUDA, in bf16 (shapes:llava-next);
- the job under accelerate's FSDP on one GPU (tiny:llava-next) trains, evaluates and writes a full fp32 adapter.
All of it, model build included, fits in one prepared command of under 8 minutes on one H100/H200.

    make bench-gpu-rounds (.venv/bin/python bench/bench_gpu.py --rounds)

measures what the on-policy rounds' plan assumes (planning/rounds.py: 150 sampled tokens a second, one judge forward
a claim): one round of the job (DPO_ROUNDS=1) on the same model, the same model judging (DPO_JUDGE=model), its
samples drawn in-process; it reports sampled tokens a second, claims judged a second and the peak GPU memory against
the plan's (training's, and sampling's with its KV cache). A separate command: about 3 minutes more on a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# bf16 dense peak of the GPUs the sky YAMLs rent, TFLOP/s (vendor data sheets; SXM parts).
PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L4": 121.0, "A10G": 70.0}


def build_full_size(out_dir: Path, cache: Path) -> Path:
    """llava-v1.6-mistral-7b's architecture, random bf16 weights made on the GPU, with the shapes processor."""
    import shutil

    import torch
    from transformers import LlavaNextForConditionalGeneration

    from entrypoint.models.published import full_config
    from entrypoint.models.shapes import build_shapes, tokenizer

    if (out_dir / "config.json").is_file():
        return out_dir
    shapes = build_shapes("llava-next", cache / "shapes" / "llava-next")
    tok = tokenizer("llava-next")
    config = full_config("llava-next")
    config.image_token_index = tok.convert_tokens_to_ids("<image>")  # the bench tokenizer's ids, in 32064
    config.text_config.pad_token_id = tok.pad_token_id
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda"):
        model = LlavaNextForConditionalGeneration(config)
    torch.set_default_dtype(torch.float32)
    work = out_dir.with_name(out_dir.name + ".tmp")
    model.save_pretrained(work)
    del model
    torch.cuda.empty_cache()
    for name in shapes.iterdir():
        if name.name not in ("config.json", "model.safetensors", "shapes.json", "generation_config.json"):
            shutil.copy2(name, work / name.name)
    work.rename(out_dir)
    return out_dir


def decoder_flops_per_token(config: object, length: float) -> float:
    text = config.get_text_config()
    from entrypoint.models.architecture import meta_model
    from entrypoint.models.families import FAMILIES

    model = meta_model(config, FAMILIES["llava-next"])
    decoder = sum(p.numel() for n, p in model.named_parameters() if "language_model" in n or "lm_head" in n)
    attention = 2 * length * text.hidden_size * text.num_hidden_layers  # causal: half of 4 x length x hidden
    return 3 * (2 * decoder + 2 * attention)  # policy forward + backward (activations) + reference forward


def job_env(model: str, tiles: int | None, args: argparse.Namespace, cache: Path, output: Path) -> dict[str, str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DPO_MODEL": model, "DPO_DATASET": "sample:rlaif-v-photos",
           "DPO_MAX_SAMPLES": str(args.rows), "DPO_MAX_STEPS": str(args.steps),
           "DPO_PER_DEVICE_TRAIN_BATCH_SIZE": str(args.batch), "DPO_GRADIENT_ACCUMULATION_STEPS": "1",
           "DPO_SAVE_STEPS": str(10 * args.steps), "DPO_EVAL_FRACTION": "0", "DPO_EVAL_GENERATIONS": "0",
           "DPO_LOGGING_STEPS": "1", "DPO_OUTPUT_DIR": str(output), "DPO_CACHE_DIR": str(cache),
           "DPO_USE_LIGER_KERNEL": "1" if args.liger else "0"}
    if tiles:
        env["DPO_MAX_IMAGE_TILES"] = str(tiles)
    return env


def run_job(model: str, tiles: int | None, args: argparse.Namespace, cache: Path) -> dict[str, object]:
    output = Path(tempfile.mkdtemp(prefix=f"bench-gpu-{tiles or 'anyres'}-"))
    env = job_env(model, tiles, args, cache, output)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "entrypoint"], env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"job failed ({tiles or 'anyres'}):\n{result.stderr[-3000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    report = json.loads((output / "data_report.json").read_text())
    history = [h for h in metrics["history"] if "num_tokens" in h]
    tokens = history[-1]["num_tokens"] if history else None
    return {"wall_s": time.perf_counter() - started, "train_s": metrics["train"]["train_runtime"],
            "samples_per_s": metrics["train"]["train_samples_per_second"], "tokens": tokens,
            "pair_tokens_p50": report["tokens"]["pair_tokens"]["p50"], "memory": metrics["memory"],
            "adapter": output / "adapter"}


# ---- what only a GPU can check (module docstring)

def check_triton_kernels() -> tuple[bool, str]:
    """TRL's chunked log-prob function on CUDA (its Triton kernels: compiled, their C launcher built) against torch."""
    import torch
    from trl.kernels.chunked_logprob import ChunkedLogProbFunction, _use_triton

    device = torch.device("cuda")
    generator = torch.Generator(device=device).manual_seed(0)
    hidden = torch.randn(96, 256, device=device, generator=generator, requires_grad=True)
    weight = torch.randn(1000, 256, device=device, generator=generator)
    targets = torch.randint(0, 1000, (96,), device=device, generator=generator)
    logps = ChunkedLogProbFunction.apply(hidden, weight, None, targets, 1.0, 256, None, 1.0, ())[0]
    logps.sum().backward()
    expected = torch.log_softmax(hidden.detach() @ weight.T, dim=-1).gather(1, targets[:, None]).squeeze(1)
    error = (logps.detach() - expected).abs().max().item()
    ok = _use_triton(device) and error < 1e-3 and hidden.grad is not None and bool(hidden.grad.isfinite().all())
    return ok, f"Triton used: {_use_triton(device)}; forward max error {error:.1e}; backward ran"


def check_adapter_fp32(adapter: Path) -> tuple[bool, str]:
    from safetensors.torch import load_file

    dtypes = sorted({str(t.dtype) for t in load_file(adapter / "adapter_model.safetensors").values()})
    return dtypes == ["torch.float32"], f"adapter tensors: {', '.join(dtypes)}"


def check_plan(rows: dict[str, dict[str, object]]) -> tuple[bool, str]:
    ratios = {name: row["memory"]["plan"]["peak_gib"] / row["memory"]["peak_allocated_gib"]
              for name, row in rows.items()}
    return all(0.85 <= r <= 1.15 for r in ratios.values()), ", ".join(f"{n}: plan/measured {r:.2f}"
                                                                       for n, r in ratios.items())


def check_out_of_memory(model: str, args: argparse.Namespace, cache: Path, weights_gib: float) -> tuple[bool, str]:
    """The job at full anyres with torch's allocator capped 1.5 GiB above the weights: exit 3 and its message."""
    import torch

    total = torch.cuda.get_device_properties(0).total_memory / 2**30
    fraction = min(0.9, (weights_gib + 1.5) / total)
    output = Path(tempfile.mkdtemp(prefix="bench-gpu-oom-"))
    env = {**job_env(model, None, argparse.Namespace(**{**vars(args), "steps": 2, "batch": 2}), cache, output),
           "DPO_MEMORY_CHECK": "false"}
    code = (f"import sys, torch; torch.cuda.set_per_process_memory_fraction({fraction!r}); "
            "from entrypoint.__main__ import main; sys.exit(main([]))")
    result = subprocess.run([sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True)
    said = next((line for line in result.stderr.splitlines() if line.startswith("out of memory: ")), "")
    ok = result.returncode == 3 and "the GPU ran out of memory in " in said and "To lower memory: " in said \
        and "Traceback" not in result.stderr
    return ok, f"exit {result.returncode}, capped at {fraction * total:.1f} GiB: {said[:300] or result.stderr[-300:]}"


def check_encode_once(cache: Path) -> tuple[bool, str]:
    """One DPO batch of shapes:llava-next (4-bit, as the job loads it) with and without encode-once, on CUDA."""
    import torch

    from entrypoint.config.settings import load_settings
    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    out = {}
    for once in (False, True):
        os.environ.update({"DPO_MODEL": "shapes:llava-next", "DPO_DATASET": "sample:rlaif-v-photos",
                           "DPO_CACHE_DIR": str(cache), "DPO_LORA_DROPOUT": "0", "DPO_MAX_LENGTH": "8192",
                           "DPO_ENCODE_IMAGES_ONCE": str(once).lower()})
        settings = load_settings()
        ref = resolve_model(settings.model, "auto", None, cache)
        processor = load_processor(ref)
        args = dpo_config(settings, cache / "encode-once-checkpoints", "encode-once")
        data = prepare_pairs(settings, cache, processor, ref.family, args.max_length, max_samples=4)
        torch.manual_seed(0)
        trainer = build_trainer(settings, load_model(ref, "4bit", processor=processor), ref.family, processor,
                                data.train, None, args)
        trainer.model.train()
        batch = trainer._prepare_inputs(dict(trainer.data_collator([data.train[i] for i in range(2)])))
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        grads = torch.cat([p.grad.float().flatten() for p in trainer.model.parameters() if p.grad is not None])
        out[once] = (loss.item(), grads)
        del trainer
        torch.cuda.empty_cache()
    (plain, plain_grads), (once_loss, once_grads) = out[False], out[True]
    cosine = torch.nn.functional.cosine_similarity(plain_grads, once_grads, dim=0).item()
    ok = abs(plain - once_loss) <= 1e-2 * abs(plain) and cosine > 0.999
    return ok, f"loss {plain:.5f} vs {once_loss:.5f} once; gradient cosine {cosine:.6f}"


def check_fsdp_one_gpu(cache: Path) -> tuple[bool, str]:
    """The job under accelerate's FSDP (entrypoint/accelerate_configs/fsdp_qlora.yaml, which refuses CPUs) on one GPU:
    tiny:llava-next in 4-bit with bf16 storage, sharded checkpoints, greedy answers under FSDP, and the adapter
    gathered from the full state dict: every LoRA weight there, in fp32, lora_B moved off its zeros."""
    from safetensors.torch import load_file

    from entrypoint.launch import ACCELERATE, ACCELERATE_CONFIGS, CONFIG_DIR

    output = Path(tempfile.mkdtemp(prefix="bench-gpu-fsdp-"))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "DPO_MODEL": "tiny:llava-next", "DPO_DATASET": "sample:rlaif-v",
           "DPO_DISTRIBUTED": "fsdp", "DPO_MAX_SAMPLES": "24", "DPO_MAX_STEPS": "4", "DPO_SAVE_STEPS": "2",
           "DPO_LEARNING_RATE": "1e-3", "DPO_EVAL_GENERATIONS": "1", "DPO_OUTPUT_DIR": str(output),
           "DPO_CACHE_DIR": str(cache)}
    command = [sys.executable, "-m", ACCELERATE, "--config_file", str(CONFIG_DIR / ACCELERATE_CONFIGS["fsdp"]),
               "--num_processes", "1", "-m", "entrypoint"]
    result = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        return False, f"exit {result.returncode}: {result.stderr[-300:]}"
    tensors = load_file(output / "adapter" / "adapter_model.safetensors")
    dtypes = sorted({str(t.dtype) for t in tensors.values()})
    moved = sum(1 for name, t in tensors.items() if "lora_B" in name and t.abs().sum() > 0)
    ok = bool(tensors) and dtypes == ["torch.float32"] and moved > 0 and (output / "manifest.json").is_file()
    return ok, f"{len(tensors)} adapter tensors ({', '.join(dtypes)}), {moved} lora_B moved, manifest written"


def run_rounds(model: str, args: argparse.Namespace, cache: Path, gpu: bool) -> dict[str, object]:
    """One on-policy round of the job (module docstring): its metrics.json "rounds" entry, the claims judged, the
    memory it took and planned."""
    output = Path(tempfile.mkdtemp(prefix="bench-gpu-rounds-"))
    env = {**job_env(model, None, args, cache, output), "DPO_ROUNDS": "1", "DPO_EVAL_FRACTION": "0.2",
           "DPO_SAMPLES_PER_PROMPT": "4" if gpu else "2", "DPO_SAMPLE_MAX_NEW_TOKENS": "64" if gpu else "4",
           "DPO_SAMPLE_TEMPERATURE": "1.0", "DPO_JUDGE": "model", "DPO_JUDGE_MODEL": model,
           "DPO_MIX_DATASET_PAIRS": "true"}
    result = subprocess.run([sys.executable, "-m", "entrypoint"], env=env, cwd=ROOT, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"rounds job failed:\n{result.stderr[-3000:]}")
    metrics = json.loads((output / "metrics.json").read_text())
    samples = [json.loads(line) for line in (output / "rounds" / "1" / "samples.jsonl").read_text().splitlines()]
    claims = sum(len(verdict["claims"]) for record in samples for verdict in record.get("verdicts", []))
    return {"round": metrics["rounds"][0], "claims": claims, "memory": metrics["memory"]}


def main_rounds(model: str, device: str, args: argparse.Namespace, cache: Path, gpu: bool) -> int:
    from entrypoint.planning.rounds import DECODE_TOKENS_PER_S

    row = run_rounds(model, args, cache, gpu)
    done, memory = row["round"], row["memory"]
    tokens_per_s = done["sampled_tokens"] / done["sampling_s"]
    print(f"on-policy round on {device}: {done['prompts']} prompts x {done['samples'] // done['prompts']} samples")
    print("| sampled tokens | sampling s | tokens/s (plan assumes) | claims | judging s | claims/s | "
          "peak GiB (measured) | plan GiB (the GPU) | plan GiB while sampling |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {done['sampled_tokens']} | {done['sampling_s']:.1f} | {tokens_per_s:.1f} ({DECODE_TOKENS_PER_S:g}) | "
          f"{row['claims']} | {done['judging_s']:.1f} | {row['claims'] / done['judging_s']:.1f} | "
          f"{memory['peak_allocated_gib'] if memory['peak_allocated_gib'] is not None else 'n/a'} | "
          f"{memory['plan']['device_gib']:.2f} | {memory['plan'].get('sampling_device_gib', 0):.2f} |", flush=True)
    return 0


def main() -> int:
    import torch

    from entrypoint.models.published import full_config

    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--liger", action="store_true", help="DPO_USE_LIGER_KERNEL=1 (needs liger-kernel installed)")
    parser.add_argument("--workdir", default=os.environ.get("BENCH_DIR", tempfile.gettempdir()))
    parser.add_argument("--rounds", action="store_true", help="measure one on-policy round instead (docstring)")
    args = parser.parse_args()
    workdir = Path(args.workdir)
    cache = workdir / "bench-cache"
    gpu = torch.cuda.is_available()
    model = str(build_full_size(workdir / "llava-next-7b-random", cache)) if gpu else "shapes:llava-next"
    device = torch.cuda.get_device_name() if gpu else "CPU (shapes:llava-next, not a GPU figure)"
    peak = next((v for k, v in PEAK_TFLOPS.items() if k in device), None)
    if args.rounds:
        return main_rounds(model, device, args, cache, gpu)
    print(f"device: {device}; model: {model}; batch {args.batch}, {args.steps} steps, 4-bit QLoRA r16")
    print("| setting | samples/s | tokens/s | pair tokens p50 | peak GiB (measured) | plan GiB | plan/measured | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    rows: dict[str, dict[str, object]] = {}
    for tiles in (1, None):
        row = run_job(model, tiles, args, cache)
        tokens_per_s = row["tokens"] / row["train_s"] if row["tokens"] else None
        measured, planned = row["memory"]["peak_allocated_gib"], row["memory"]["plan"]["peak_gib"]
        ratio = f"{planned / measured:.2f}" if measured else "n/a"
        mfu = "n/a"
        if gpu and peak and tokens_per_s:
            flops = decoder_flops_per_token(full_config("llava-next"), row["pair_tokens_p50"])
            mfu = f"{100 * flops * tokens_per_s / (peak * 1e12):.1f}%"
        print(f"| {'1 tile' if tiles else 'full anyres'} | {row['samples_per_s']:.2f} | "
              f"{tokens_per_s or float('nan'):.0f} | {row['pair_tokens_p50']} | {measured if measured else 'n/a'} | "
              f"{planned:.2f} | {ratio} | {mfu} |", flush=True)
        rows["1 tile" if tiles else "full anyres"] = row
    if not gpu:
        print("checks on a GPU: skipped (no GPU here)")
        return 0
    checks = [("TRL's Triton kernels", check_triton_kernels), ("adapter in fp32", lambda: check_adapter_fp32(
        rows["1 tile"]["adapter"])), ("peak within 15% of the plan", lambda: check_plan(rows)),
        ("out of memory: exit 3", lambda: check_out_of_memory(model, args, cache,
                                                              rows["1 tile"]["memory"]["plan"]["weights_gib"])),
        ("encode-once on CUDA", lambda: check_encode_once(cache)), ("FSDP-QLoRA on one GPU",
                                                                     lambda: check_fsdp_one_gpu(cache))]
    failed = 0
    print("| check | result | detail |\n|---|---|---|")
    for name, check in checks:
        try:
            ok, detail = check()
        except Exception as exc:  # noqa: BLE001 - a check that cannot run is a FAIL with its reason
            ok, detail = False, f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        failed += not ok
        print(f"| {name} | {'PASS' if ok else 'FAIL'} | {detail} |", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
