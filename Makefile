# The project's vocabulary. `make demo` and `make test` work on a fresh machine: they create
# .venv from the locks first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SKY_VENV ?= .venv-sky
# The CUDA build in requirements.lock is for the container; here the same torch version is
# installed on its own (on a CPU machine point pip at a CPU build: TORCH_INDEX=https://download.pytorch.org/whl/cpu).
TORCH_SPEC ?= torch==$(shell sed -n 's/^torch==\([^ ]*\).*/\1/p' requirements.lock)
TORCH_INDEX ?=
IMAGE ?= dpo-job:dev
# What `make demo` runs: the embedded default (tiny LLaVA-NeXT, generated RLAIF-V sample, 4-bit QLoRA on CPU).
DEMO_ENV := DPO_MODEL=tiny:llava-next DPO_DATASET=sample:rlaif-v DPO_MAX_SAMPLES=64 DPO_MAX_STEPS=40 \
	DPO_PER_DEVICE_TRAIN_BATCH_SIZE=4 DPO_GRADIENT_ACCUMULATION_STEPS=1 DPO_LEARNING_RATE=5e-3 \
	DPO_LOGGING_STEPS=5 DPO_SAVE_STEPS=20 DPO_EVAL_FRACTION=0.25 DPO_OUTPUT_DIR=outputs/demo \
	DPO_REPORT_TO=wandb WANDB_MODE=offline WANDB_DIR=outputs/demo-wandb WANDB_PROJECT=dpo-job-demo

.PHONY: install demo test lint lock docs image bench bench-gpu bench-data bench-settings clean

install: $(VENV)/.installed $(SKY_VENV)/.installed

# The runtime lock minus the CUDA-only wheels (torch itself comes from TORCH_SPEC), then the test lock.
build/requirements-cpu.lock: requirements.lock
	mkdir -p build
	awk '/^[a-z0-9]/ { skip = ($$1 ~ /^(torch|triton|nvidia-|cuda-)/) } !skip' $< > $@

$(VENV)/.installed: build/requirements-cpu.lock requirements-dev.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC) $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r build/requirements-cpu.lock
	$(BIN)/python -m pip install -q --no-deps --require-hashes -r requirements-dev.lock
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $@

# SkyPilot in a venv of its own: the tests validate sky/*.yaml with its loader, offline.
$(SKY_VENV)/.installed: requirements-sky.lock
	test -x $(SKY_VENV)/bin/python || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q --no-deps --require-hashes -r requirements-sky.lock
	touch $@

demo: $(VENV)/.installed
	$(DEMO_ENV) $(BIN)/python -m entrypoint

test: install
	$(BIN)/python -m pytest

lint: $(VENV)/.installed
	$(BIN)/ruff check entrypoint tests bench scripts
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck scripts/*.sh .ci/run
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck

# Regenerate both locks from the .in files (no downloads: uv resolves from the index metadata).
lock:
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile requirements.in -o requirements.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads
	$(BIN)/uv pip compile requirements-dev.in -c requirements.lock -o requirements-dev.lock \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads
	$(BIN)/uv pip compile requirements-sky.in -o requirements-sky.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads

# The settings reference and the image-token table in README.md, generated from the code.
docs: $(VENV)/.installed
	$(BIN)/python -m entrypoint.reference --write README.md

# Needs a Docker engine (none runs on the dev machines or in CI here: the tests lint the Dockerfile
# and check it installs and runs exactly what they test).
image:
	@docker info > /dev/null 2>&1 || { echo "make image: no Docker engine running here" >&2; exit 1; }
	docker build -t $(IMAGE) --build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

bench: $(VENV)/.installed
	$(BIN)/python bench/bench_job.py

# LLaVA-NeXT-Mistral-7B QLoRA DPO at 1 tile and full anyres vs the memory plan (on a CPU: the shapes: model).
bench-gpu: $(VENV)/.installed
	$(BIN)/python bench/bench_gpu.py

# Data preparation on 2,000 generated RLAIF-V photo rows: prepare() vs the seed guide's map vs decode + resize alone.
bench-settings: $(VENV)/.installed
	$(BIN)/python bench/bench_settings.py

bench-data: $(VENV)/.installed
	$(BIN)/python bench/bench_data.py --out build/bench-data/results.json

clean:
	rm -rf build outputs .pytest_cache
