"""What a real run costs (entrypoint/planning/cost.py): the FLOP formula on hand-computed numbers, the run's pairs
from the data, measured throughput taking precedence over the estimate, and the table a --dry-run prints."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from conftest import ROOT, job_env, run_job
from entrypoint.planning.cost import (
    GPUS,
    MFU,
    ModelSize,
    card_rows,
    estimated_pairs_per_second,
    gpu_costs,
    hub_rows,
    load_measurements,
    model_size,
    offered_gpus,
    pair_flops,
    run_size,
    table,
    total_rows,
    viewer_rows,
)

SMALL = ModelSize(params=1_100_000_000, decoder=1_000_000_000, vision=1_000_000, layers=2, attention_width=10)
LLAVA = "llava-hf/llava-v1.6-mistral-7b-hf"


def test_pair_flops_on_hand_computed_numbers():
    """100 tokens a sequence, N = 1e9, 2 layers of width 10, one image of 20 patches through a 1e6 tower:
    decoder 2 x 100 x 1e9 x (2 + 2 + 2 + 2) = 1.6e12; attention 2 x 2 x 100^2 x 10 x 2 x (1 + 2 + 1 + 1) = 4e6;
    vision, encoded once a step: 1 x 20 x 2 x 1e6 = 4e7. Without checkpointing no recomputed forward: 6N and 4
    attention passes. On TRL's own path the tower goes as the decoder does, for both sequences:
    2 x 20 x 1e6 x (2 + 2 + 2 + 2) = 3.2e8, 2.4e8 without checkpointing."""
    flops = pair_flops(SMALL, 100, images=1, patches_per_image=20)
    assert (flops.decoder, flops.attention, flops.vision) == (1.6e12, 4e6, 4e7)
    assert flops.total == 1.6e12 + 4e6 + 4e7
    plain = pair_flops(SMALL, 100, images=1, patches_per_image=20, checkpointing=False)
    assert (plain.decoder, plain.attention, plain.vision) == (1.2e12, 3.2e6, 4e7)
    assert pair_flops(SMALL, 100).vision == 0  # text only
    assert pair_flops(SMALL, 100, images=1, patches_per_image=20, encode_once=False).vision == 3.2e8
    assert pair_flops(SMALL, 100, images=1, patches_per_image=20, checkpointing=False,
                      encode_once=False).vision == 2.4e8


def test_gpu_hours_and_cost_from_the_estimate():
    """10,000 pairs of 1.6e12 FLOPs on an H100 at 35% of 989 TFLOP/s: 1.6e16 / 3.4615e14 s = 46.2 s = 0.01284 h."""
    h100 = GPUS["H100"]
    assert estimated_pairs_per_second(1.6e12, h100) == pytest.approx(989e12 * 0.35 / 1.6e12)
    [row] = gpu_costs(["H100"], 1.6e12, 3.2e12, 10_000, LLAVA, "4bit", (1000, 2000), 12.0, [])
    assert row.hours == pytest.approx((1.6e16 / (989e12 * MFU) / 3600, 3.2e16 / (989e12 * MFU) / 3600))
    assert row.usd == pytest.approx((row.hours[0] * h100.spot_usd[0], row.hours[1] * h100.spot_usd[1]))
    assert row.source.startswith("estimate: 35% MFU x 989 TFLOP/s") and row.fits.startswith("yes (12.0 of 79")
    assert "the MFU is assumed" in row.source
    # the range the assumption spans: the p50 pair at 45% MFU and the cheapest price to the p95 at 25% and the dearest
    fast, slow = 1.6e16 / (989e12 * 0.45) / 3600, 3.2e16 / (989e12 * 0.25) / 3600
    assert row.spread[0] == pytest.approx((fast, slow))
    assert row.spread[1] == pytest.approx((fast * h100.spot_usd[0], slow * h100.spot_usd[1]))
    assert "| 0.01 - 0.04 h, $0.02 - $0.09 |" in table([row], per_thousand=False)[2]
    [big] = gpu_costs(["A100"], 1.6e12, 1.6e12, 10_000, LLAVA, "4bit", (1000, 1000), 50.0, [])
    assert big.fits.startswith("no (50.0 GiB")
    [unknown] = gpu_costs(["L4"], 1.6e12, 1.6e12, 10_000, LLAVA, "4bit", (1000, 1000), 12.0, [])
    assert unknown.hours is None and "| L4 |" in table([unknown], per_thousand=False)[2]


def test_a_measured_throughput_takes_precedence_over_the_estimate(tmp_path):
    (tmp_path / "bench").mkdir()
    (tmp_path / "bench" / "throughput.json").write_text(json.dumps({"measurements": [
        {"gpu": "H100", "model": LLAVA, "quantization": "4bit", "setting": "1 tile", "pair_tokens_p50": 2000,
         "pairs_per_second": 0.5, "measured": "2026-12-01"},
        {"gpu": "H100", "model": LLAVA, "quantization": "4bit", "pair_tokens_p50": 8000, "pairs_per_second": 0.1},
        {"gpu": "H100", "model": LLAVA, "quantization": "none", "pair_tokens_p50": 1000, "pairs_per_second": 9.0},
        {"gpu": "A100", "model": "another/model", "quantization": "4bit", "pair_tokens_p50": 1000,
         "pairs_per_second": 9.0},
    ]}))
    measurements = load_measurements(roots=(tmp_path,))
    assert len(measurements) == 4 and load_measurements(roots=(tmp_path / "nowhere",)) == []
    h100, a100 = gpu_costs(["H100", "A100"], 1.6e12, 1.6e12, 3600, LLAVA, "4bit", (1000, 2000), 12.0, measurements)
    # the closest measurement in tokens a pair (2,000, not 8,000), scaled to this run's 1,000: the same tokens a second
    assert h100.pairs_per_second == pytest.approx(1.0) and h100.source.startswith("measured: 0.5 pairs/s at 2,000")
    assert h100.hours == pytest.approx((1.0, 2.0))  # 3,600 pairs at 1 and at 0.5 pairs/s (the p95 pair: 2,000 tokens)
    assert h100.spread is None and a100.spread is not None  # no MFU range for a measured throughput
    assert a100.source.startswith("estimate")  # another model's figure is not this one's


def settings(**values):
    defaults = {"max_samples": None, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 8,
                "max_eval_pairs": 256, "eval_fraction": 0.05, "max_steps": -1, "num_train_epochs": 1.0}
    return SimpleNamespace(**{**defaults, **values})


REPORT = {"rows_read": 200, "rows_used": 200, "pairs": 190}  # 95% of the sampled rows made pairs


def test_the_runs_pairs_from_the_row_count_the_sample_and_the_schedule():
    run = run_size(10_000, "every row counted", REPORT, settings())
    assert (run.train_pairs, run.eval_pairs) == (9500 - 256, 256)  # 5% of 9,500 held out, at most 256
    assert run.pairs_trained == 9244 and run.optimizer_steps == 578 and run.schedule == "1 epoch"
    capped = run_size(10_000, "every row counted", REPORT, settings(max_samples=1000, num_train_epochs=2.0))
    assert capped.rows == 1000 and "DPO_MAX_SAMPLES=1000" in capped.rows_source
    assert (capped.train_pairs, capped.eval_pairs, capped.pairs_trained) == (902, 48, 1804)
    guessed = run_size(None, "no row count in the Hub's metadata", REPORT, settings(max_samples=5000))
    assert guessed.rows == 5000 and guessed.rows_source.startswith("DPO_MAX_SAMPLES (the dataset's size is unknown")
    unknown = run_size(None, "no row count in the Hub's metadata", REPORT, settings())
    assert unknown.rows is None and unknown.pairs_trained is None and "unknown" in unknown.rows_source
    steps = run_size(None, "no row count in the Hub's metadata", REPORT, settings(max_steps=500))
    assert (steps.pairs_trained, steps.optimizer_steps, steps.schedule) == (8000, 500, "DPO_MAX_STEPS=500")


def test_the_row_count_local_data_counted_a_hub_dataset_from_its_metadata():
    assert total_rows("sample:rlaif-v", "train", {"rows_read": 48}, 200) == (48, "every row counted")
    assert total_rows("org/name", "train", {"rows_read": 37}, 200)[0] == 37  # the stream ended: the whole split
    assert total_rows("org/name", "train", {"rows_read": 200}, 200) == (None, "no row count in the Hub's metadata")
    assert hub_rows("org/name", "train") is None  # offline (the tests' HF_HUB_OFFLINE=1): not asked
    card = {"dataset_info": [{"config_name": "other", "splits": [{"name": "train", "num_examples": 5}]},
                             {"config_name": "default", "splits": [{"name": "train", "num_examples": 82300},
                                                                   {"name": "test", "num_examples": 832}]}]}
    assert card_rows(card, "train") == 82300 and card_rows(card, "validation") is None
    assert card_rows({}, "train") is None
    viewer = {"size": {"splits": [{"config": "default", "split": "train", "num_rows": 83132}]}}
    assert viewer_rows(viewer, "train") == 83132 and viewer_rows({}, "train") is None


def test_the_gpus_are_those_the_sky_yamls_rent(tmp_path):
    names, source = offered_gpus()
    assert names == ["A100", "A100-80GB", "H100"] and source == "the accelerators of sky/*.yaml"
    (tmp_path / "sky").mkdir()
    (tmp_path / "sky" / "a.yaml").write_text("resources:\n  accelerators: L4:1\n")
    (tmp_path / "sky" / "b.yaml").write_text("resources:\n  accelerators: [H100:8, L4]\n")
    assert offered_gpus(roots=(tmp_path,))[0] == ["L4", "H100"]
    assert offered_gpus(roots=(tmp_path / "none",))[0] == ["A100", "A100-80GB", "H100"]


def test_llava_next_7b_size_counted_on_its_architecture():
    from entrypoint.config.settings import load_settings
    from entrypoint.models.architecture import describe
    from entrypoint.models.families import FAMILIES
    from entrypoint.models.lora import lora_config
    from entrypoint.models.published import full_config

    family = FAMILIES["llava-next"]
    size = model_size(describe(full_config("llava-next"), family, lora_config(load_settings(), family)))
    # 7,566,747,648 in all; CLIP-L tower + projector 324,487,168; embeddings 32,064 x 4,096 = 131,334,144 left out
    assert (size.params, size.vision, size.decoder) == (7_566_747_648, 324_487_168, 7_110_926_336)
    assert (size.layers, size.attention_width) == (32, 4096)


def test_a_dry_run_prints_the_cost_table_of_the_real_model(tmp_path, cache_dir):
    result = run_job(job_env(cache_dir, tmp_path / "out", model="shapes:llava-next", dataset="sample:rlaif-v-photos",
                             num_train_epochs="1"), "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stderr
    assert f"cost estimate for {LLAVA} (at full size" in log and "pairs: 48 rows (every row counted)" in log
    assert "decoder N = 7.11B" in log and "| GPU | fits the memory plan | pairs/s (p50) | GPU hours" in log
    rows = [line.split(": ", 1)[1] for line in log.splitlines() if "entrypoint: | " in line and "|---" not in line]
    assert [row.split(" | ")[0] for row in rows[1:]] == ["| A100", "| A100-80GB", "| H100"]
    assert all("estimate: 35% MFU" in row or "measured:" in row for row in rows[1:])
    assert (ROOT / "bench" / "throughput.json").is_file()
