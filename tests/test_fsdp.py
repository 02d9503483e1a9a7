"""DPO_DISTRIBUTED=fsdp (FSDP-QLoRA) on the CPU, with torch's own FSDP over gloo: accelerate refuses FSDP without
GPUs ("no available devices found"), so these tests wrap the job's trainer's model the way accelerate would, with
the plugin built from accelerate_configs/fsdp_qlora.yaml and the wrap policy and mixed precision transformers'
Trainer gives a PEFT model (`update_fsdp_plugin_peft`: peft's `fsdp_auto_wrap_policy`, every trainable leaf its
own unit, and the layers in `_no_split_modules`).

- Every FSDP unit of the tiny 4-bit LLaVA-NeXT, stored in bf16 as on a GPU, is one dtype and one requires_grad
  once build_trainer has run: FSDP1 flattens a unit into one tensor (use_orig_params: false). PEFT's k-bit
  preparation, which the job ran for every quantized base before, upcasts the norms beside the bf16 4-bit weights
  and FSDP refuses the layer.
- Two processes train a few DPO steps under FSDP (the 4-bit weights sharded), with the loss of the job's trainer;
  losses and weights equal one process's on the same batches; the adapter saved from the full state dict, reloaded
  with PEFT, is the trained one; greedy answers and yes/no margins, run on both ranks, are one process's.
- `save_adapter` refuses an adapter without its weights (what `Trainer.save_model` leaves under
  SHARDED_STATE_DICT) with a message naming the cause.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from conftest import job_env
from entrypoint.launch import CONFIG_DIR

STEPS, PAIRS_PER_RANK, WORLD = 3, 2, 2
LEARNING_RATE = 0.5  # SGD: weights move by lr x gradient, linear in it (see _assert_close_to_one_process)


def _fsdp_yaml() -> dict[str, Any]:
    return yaml.safe_load((CONFIG_DIR / "fsdp_qlora.yaml").read_text())["fsdp_config"]


def _job_settings(cache: Path, output: Path, **settings: str) -> Any:
    from entrypoint.config.settings import load_settings

    with pytest.MonkeyPatch.context() as patch:
        for key, value in job_env(cache, output, **settings).items():
            if key.startswith("DPO_"):
                patch.setenv(key, value)
        return load_settings()


def fsdp_trainer(cache: Path, output: Path, pairs: int, **settings: str) -> tuple[Any, Any, Any, Any]:
    """The job's trainer for DPO_DISTRIBUTED=fsdp: the model loaded as job.train loads it (4-bit, `load_model(ref,
    "4bit", "fsdp", processor)`) and build_trainer's; no eval split. Returns (trainer, settings, processor, data)."""
    from transformers import set_seed

    from entrypoint.data.stage import prepare_pairs
    from entrypoint.models.loading import load_model, load_processor, resolve_model
    from entrypoint.training.trainer import build_trainer, dpo_config

    config = _job_settings(cache, output, model="tiny:llava-next", dataset="sample:rlaif-v", distributed="fsdp",
                           eval_fraction="0", lora_dropout="0", **settings)
    ref = resolve_model(config.model, "auto", None, cache)
    processor = load_processor(ref)
    args = dpo_config(config, output / "checkpoints", "fsdp")
    data = prepare_pairs(config, cache, processor, ref.family, args.max_length, max_samples=pairs)
    set_seed(config.seed)  # LoRA's initial weights: the same in every process
    model = load_model(ref, "4bit", config.distributed, processor)
    return build_trainer(config, model, ref.family, processor, data.train, None, args), config, processor, data


def trainers_fsdp_plugin(model: Any) -> Any:
    """accelerate's FSDP plugin from accelerate_configs/fsdp_qlora.yaml, updated for `model` as transformers'
    Trainer updates it for a PEFT model before wrapping (wrap policy, and mixed precision in the 4-bit storage
    dtype)."""
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers.distributed.fsdp import update_fsdp_plugin_peft

    fsdp = _fsdp_yaml()
    # without sync_module_states, which wants a GPU (see wrap_as_accelerate)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=fsdp["fsdp_version"], auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"],
        sharding_strategy=fsdp["fsdp_sharding_strategy"], use_orig_params=fsdp["fsdp_use_orig_params"],
        state_dict_type=fsdp["fsdp_state_dict_type"])
    update_fsdp_plugin_peft(model, SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plugin)))
    return plugin


def wrap_as_accelerate(model: Any, plugin: Any) -> Any:
    """torch's FSDP1 around `model` with the arguments accelerate's `prepare_model` passes, but on the CPU and
    without sync_module_states (torch wants a GPU for it): every process here builds the same model from the same
    seed instead."""
    import torch
    from torch.distributed.fsdp import FullyShardedDataParallel

    return FullyShardedDataParallel(
        model, sharding_strategy=plugin.sharding_strategy, auto_wrap_policy=plugin.auto_wrap_policy,
        mixed_precision=plugin.mixed_precision_policy,
        use_orig_params=plugin.use_orig_params, device_id=torch.device("cpu"))


@contextlib.contextmanager
def one_process_group():
    """A gloo group of one process, in this one (no port)."""
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def units(wrapped: Any) -> list[tuple[str, Any]]:
    """(class of the wrapped module, its FlatParameter) for every FSDP unit that holds parameters."""
    from torch.distributed.fsdp import FullyShardedDataParallel

    return [(type(unit.module).__name__, unit._flat_param) for unit in FullyShardedDataParallel.fsdp_modules(wrapped)
            if unit._has_params]


@pytest.fixture
def bf16_storage(monkeypatch):
    """The dtype a GPU loads in: bf16 compute, so the 4-bit weights are stored in bf16 (bnb_4bit_quant_storage), as
    FSDP needs them to be flattened beside the bf16 norms."""
    import torch

    import entrypoint.models.loading as loading

    monkeypatch.setattr(loading, "compute_dtype", lambda: torch.bfloat16)


def test_every_fsdp_unit_has_one_dtype_and_one_requires_grad(tmp_path, cache_dir, bf16_storage):
    """FSDP wraps the job's model as built for DPO_DISTRIBUTED=fsdp: the frozen units (decoder and vision layers,
    the root) in bf16, each LoRA matrix its own trainable unit in fp32 (issue 22: trained weights stay fp32)."""
    import torch

    trainer, *_ = fsdp_trainer(cache_dir, tmp_path, 4)
    lora = {name: p.numel() for name, p in trainer.model.named_parameters() if p.requires_grad}
    assert lora and all(".lora_" in name for name in lora)
    assert any(type(p).__name__ == "Params4bit" and p.dtype == torch.bfloat16 for p in trainer.model.parameters())
    plugin = trainers_fsdp_plugin(trainer.model)
    with one_process_group():
        found = units(wrap_as_accelerate(trainer.model, plugin))  # ValueError if a unit mixed dtypes
    trained = [(name, flat) for name, flat in found if flat.requires_grad]
    frozen = [(name, flat) for name, flat in found if not flat.requires_grad]
    assert {(name, flat.dtype) for name, flat in trained} == {("Linear", torch.float32)}
    assert sum(flat._unpadded_unsharded_size.numel() for _, flat in trained) == sum(lora.values())
    assert len(trained) == len(lora)  # one unit per LoRA matrix
    assert {flat.dtype for _, flat in frozen} == {torch.bfloat16}
    assert {"MistralDecoderLayer", "CLIPEncoderLayer"} <= {name for name, _ in frozen}


def test_kbit_preparation_is_what_fsdp_refuses(tmp_path, cache_dir, bf16_storage):
    """Why build_trainer skips PEFT's k-bit preparation under FSDP: it upcasts the norms to fp32 beside the bf16
    4-bit weights of the same decoder layer, and FSDP1 cannot flatten the layer."""
    from peft import prepare_model_for_kbit_training

    trainer, *_ = fsdp_trainer(cache_dir, tmp_path, 4)
    prepare_model_for_kbit_training(trainer.model.get_base_model(), use_gradient_checkpointing=False)
    for name, param in trainer.model.named_parameters():  # it froze LoRA too: trainable again, wrapped on its own
        param.requires_grad_(".lora_" in name)
    with one_process_group(), pytest.raises(ValueError, match="uniform dtype"):
        wrap_as_accelerate(trainer.model, trainers_fsdp_plugin(trainer.model))


# ---- two processes under FSDP against one process

def _batch(trainer: Any, data: Any, step: int, rank: int) -> dict[str, Any]:
    """Rank `rank`'s pairs of step `step`, collated and placed by the job's trainer."""
    first = (step * WORLD + rank) * PAIRS_PER_RANK
    return trainer._prepare_inputs(dict(trainer.data_collator([data.train[i] for i in range(first,
                                                                                           first + PAIRS_PER_RANK)])))


def _steps(trainer: Any, data: Any, ranks: list[int]) -> list[float]:
    """STEPS steps of SGD on the DPO loss of the job's trainer (`compute_loss`), over the pairs of `ranks`: this
    process's rank under FSDP (which averages the gradients over the ranks), or every rank's in one process (each
    loss over WORLD, as that average)."""
    import torch

    optimizer = torch.optim.SGD([p for p in trainer.model.parameters() if p.requires_grad], lr=LEARNING_RATE)
    trainer.model.train()
    losses = []
    for step in range(STEPS):
        optimizer.zero_grad()
        for rank in ranks:
            loss = trainer.compute_loss(trainer.model, _batch(trainer, data, step, rank))
            (loss / len(ranks)).backward()
            losses.append(loss.item())
        optimizer.step()
    return losses


def _evaluation(trainer: Any, processor: Any, data: Any, sharded: bool) -> dict[str, Any]:
    """Greedy answers and yes/no margins, base and tuned, on the first pairs (every rank, when sharded)."""
    from entrypoint.evaluation.answers import greedy_answers
    from entrypoint.evaluation.yes_no import yes_margins

    pairs = data.train.select(range(2))
    return {"answers": greedy_answers(trainer.model, processor, pairs, 2, max_new_tokens=6, sharded=sharded),
            "margins": yes_margins(trainer.model, processor, pairs, 2)}


def _fsdp_worker(rank: int, port: int, cache: str, out: str) -> None:
    """One of WORLD processes: the job's trainer wrapped in FSDP as accelerate would, STEPS steps, the adapter saved
    from the full state dict (as `Trainer.save_model` does under FULL_STATE_DICT) and checked, the evaluation on
    every rank. Rank 0 writes what the test compares."""
    import torch
    from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

    from entrypoint.training.trainer import check_adapter

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD),
                      LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(WORLD))
    output = Path(out)
    trainer, _, processor, data = fsdp_trainer(Path(cache), output / f"rank{rank}", STEPS * WORLD * PAIRS_PER_RANK)
    assert trainer.accelerator.num_processes == WORLD  # accelerate's gloo group on the CPU
    unwrapped = trainer.model
    wrapped = wrap_as_accelerate(unwrapped, trainers_fsdp_plugin(unwrapped))
    trainer.model = trainer.model_wrapped = wrapped  # what transformers' Trainer does under FSDP
    quantized = sum(type(m).__name__ == "Linear4bit" for m in unwrapped.modules())
    losses = _steps(trainer, data, [rank])
    # accelerate's get_state_dict, but offload_to_cpu off: the weights are on the CPU already (and torch's offload
    # frees the gathered CPU copy before the state dict is read)
    with FullyShardedDataParallel.state_dict_type(wrapped, StateDictType.FULL_STATE_DICT,
                                                  FullStateDictConfig(offload_to_cpu=False, rank0_only=True)):
        state = wrapped.state_dict()
    if rank == 0:
        trainer._write_adapter(output / "adapter", state)  # what save_adapter writes under FSDP
        check_adapter(output / "adapter", trainer.adapter_weights)
        # What Trainer.save_model writes under FULL_STATE_DICT (PEFT's save_pretrained, choosing by module names):
        unwrapped.save_pretrained(output / "peft-own", state_dict=state)
        try:
            check_adapter(output / "peft-own", trainer.adapter_weights)
            peft_own = "accepted"
        except RuntimeError as exc:
            peft_own = str(exc)
    evaluation = _evaluation(trainer, processor, data, sharded=True)
    gathered = [None] * WORLD
    torch.distributed.all_gather_object(gathered, {"losses": losses, "evaluation": evaluation})
    if rank == 0:
        (output / "fsdp.json").write_text(json.dumps({"ranks": gathered, "quantized_layers": quantized,
                                                     "peft_own": peft_own}))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_under_fsdp_train_and_evaluate_as_one(tmp_path, cache_dir):
    """Two processes, the 4-bit weights sharded between them: the same losses, the same trained adapter (saved from
    FSDP's full state dict and reloaded with PEFT) and the same evaluation as one process on the same pairs."""
    import torch
    from peft import PeftModel

    from entrypoint.models.loading import load_model

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trainer, config, processor, data = fsdp_trainer(cache_dir, tmp_path / "one", STEPS * WORLD * PAIRS_PER_RANK)
        before = {name: p.detach().clone() for name, p in trainer.model.named_parameters() if p.requires_grad}
        torch.multiprocessing.spawn(_fsdp_worker, args=(_free_port(), str(cache_dir), str(tmp_path)), nprocs=WORLD)
        losses = _steps(trainer, data, list(range(WORLD)))
        evaluation = _evaluation(trainer, processor, data, sharded=False)
    finally:
        torch.set_num_threads(threads)
    fsdp = json.loads((tmp_path / "fsdp.json").read_text())
    assert fsdp["quantized_layers"] > 0  # FSDP flattened and sharded bitsandbytes' Params4bit
    # PEFT 0.21's own save of the same state dict holds no weights (JobDPOTrainer.save_adapter's docstring); if this
    # fails, PEFT now finds the weights behind FSDP's nested units: save_adapter could leave the writing to it again.
    assert "of the 28 trained weights missing" in fsdp["peft_own"]
    # Losses: one process's step s, rank r is losses[s * WORLD + r]; each rank's is its own.
    for rank, result in enumerate(fsdp["ranks"]):
        assert result["losses"] == pytest.approx(losses[rank::WORLD], rel=1e-5)
        assert result["evaluation"]["answers"] == evaluation["answers"]
        for name in ("base", "tuned"):
            assert result["evaluation"]["margins"][name] == pytest.approx(evaluation["margins"][name], rel=1e-4,
                                                                          abs=1e-5)
    trained = {name: p.detach() for name, p in trainer.model.named_parameters() if p.requires_grad}
    reloaded = PeftModel.from_pretrained(load_model(trainer_ref(cache_dir), "4bit", "fsdp", processor),
                                         tmp_path / "adapter")
    again = {name: p.detach() for name, p in reloaded.named_parameters() if ".lora_" in name}
    assert again.keys() == trained.keys()
    _assert_close_to_one_process(again, trained, before)


def trainer_ref(cache: Path) -> Any:
    from entrypoint.models.loading import resolve_model

    return resolve_model("tiny:llava-next", "auto", None, cache)


def _assert_close_to_one_process(fsdp: dict[str, Any], one: dict[str, Any], before: dict[str, Any]) -> None:
    """Each weight's update under FSDP equals one process's to 1e-4 of the largest update of that weight.

    fp32 throughout, the same operations on the same numbers: each rank's forward and backward is one process's on
    that rank's pairs; FSDP's reduce-scatter adds the ranks' gradients, halved (exact, a power of two), as one
    process accumulates them. What may differ is the order of additions inside a kernel or a collective, ~1e-7
    relative per operation. A gradient lost or not averaged over the ranks would be off by ~50% of the update."""
    import torch

    moved = 0
    for name, weight in one.items():
        update, expected = fsdp[name] - before[name], weight - before[name]
        scale = expected.abs().max().item()
        moved += scale > 0
        torch.testing.assert_close(update, expected, rtol=0, atol=1e-4 * scale + 1e-9, msg=name)
    assert moved == len(one)  # every LoRA matrix trained


# ---- the adapter's check, and who evaluates

def test_save_adapter_refuses_an_adapter_without_its_weights(tmp_path, cache_dir):
    """The job's trainer saves and checks its adapter; a save that wrote no file (Trainer.save_model under
    SHARDED_STATE_DICT) or a file without the weights is refused with a message naming what is missing and why."""
    from safetensors.torch import save_file

    from entrypoint.training.trainer import ADAPTER_WEIGHTS, check_adapter

    trainer, *_ = fsdp_trainer(cache_dir, tmp_path, 4)
    trainer.save_adapter(tmp_path / "adapter")  # every trained weight there: no error
    assert len(trainer.adapter_weights) == 28
    with pytest.raises(RuntimeError, match=r"the adapter was not saved: .* does not exist"):
        check_adapter(tmp_path / "nothing", trainer.adapter_weights)
    (tmp_path / "empty").mkdir()
    save_file({}, str(tmp_path / "empty" / ADAPTER_WEIGHTS))
    with pytest.raises(RuntimeError, match=r"28 of the 28 trained weights missing .*DPO_DISTRIBUTED=fsdp"):
        check_adapter(tmp_path / "empty", trainer.adapter_weights)
    import torch

    name = next(iter(trainer.adapter_weights))
    (tmp_path / "hollow").mkdir()
    save_file({key: torch.zeros(0) if key == name else torch.zeros(shape)
               for key, shape in trainer.adapter_weights.items()}, str(tmp_path / "hollow" / ADAPTER_WEIGHTS))
    with pytest.raises(RuntimeError, match=r"1 empty or of the wrong shape \(e.g. " + name.replace(".", r"\.")):
        check_adapter(tmp_path / "hollow", trainer.adapter_weights)


@pytest.mark.parametrize("sharded", [False, True])
def test_yes_no_and_answers_run_on_every_rank_only_when_sharded(monkeypatch, sharded):
    """DDP: rank 0 alone asks the yes/no questions and generates (the others wait); FSDP: every rank does, on the
    same prompts, generating with `sharded` (synced steps), and only rank 0 returns them."""
    from datasets import Dataset

    import entrypoint.evaluation.evaluate as evaluate

    calls = []
    monkeypatch.setattr(evaluate, "likelihood_preference", lambda trainer: {"base": {}, "tuned": {}})
    monkeypatch.setattr(evaluate, "evaluate_yes_no", lambda *args, **kw: calls.append("yes_no") or {
        "questions": 1, "base": {"accuracy": 1.0}, "tuned": {"accuracy": 1.0}, "categories": {}})
    monkeypatch.setattr(evaluate, "greedy_answers", lambda *args, sharded: calls.append(("answers", sharded)) or {
        "base": ["a", "b"], "tuned": ["a", "b"]})
    monkeypatch.setattr(evaluate, "yes_no_lines", lambda report: [])
    message = [{"role": "user", "content": "q"}]
    pairs = Dataset.from_dict({"prompt": [message] * 2, "rejected": [message] * 2,
                               "chosen": [[{"role": "assistant", "content": "yes"}],
                                          [{"role": "assistant", "content": "a cat"}]]})
    trainer = SimpleNamespace(is_fsdp_enabled=sharded, model=None, args=SimpleNamespace(per_device_eval_batch_size=1),
                              accelerator=SimpleNamespace(autocast=contextlib.nullcontext))
    for is_main in (True, False):
        calls.clear()
        result = evaluate.base_and_tuned(trainer, None, pairs, ground_truth=True, generations=1, is_main=is_main)
        assert calls == (["yes_no", ("answers", sharded)] if is_main or sharded else [])
        assert ("answers" in result) == is_main and ("task" in result) == is_main
