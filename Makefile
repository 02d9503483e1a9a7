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
# What `make demo` runs: the embedded default (tiny LLaVA-NeXT, generated RLAIF-V sample, 4-bit QLoRA on CPU),
# judged on a generated POPE sample (yes/no questions about objects that are and are not in each image).
DEMO_ENV := DPO_MODEL=tiny:llava-next DPO_DATASET=sample:rlaif-v DPO_MAX_SAMPLES=64 DPO_MAX_STEPS=40 \
	DPO_PER_DEVICE_TRAIN_BATCH_SIZE=4 DPO_GRADIENT_ACCUMULATION_STEPS=1 DPO_LEARNING_RATE=5e-3 \
	DPO_LOGGING_STEPS=5 DPO_SAVE_STEPS=20 DPO_EVAL_DATASET=sample:pope DPO_MAX_EVAL_PAIRS=24 \
	DPO_OUTPUT_DIR=outputs/demo \
	DPO_REPORT_TO=wandb WANDB_MODE=offline WANDB_DIR=outputs/demo-wandb WANDB_PROJECT=dpo-job-demo

.PHONY: install browser demo test lint lock docs image image-smoke image-tools bench bench-quant bench-gpu bench-gpu-rounds bench-data bench-settings bench-encode-once package-check clean

install: $(VENV)/.installed $(SKY_VENV)/.installed browser

comma := ,
# $(call debian_packages,<shell test that they are there>,<Debian packages>,<what is missing, for the message>):
# nothing when the test passes; else, as root, apt-get installs the packages; else a message naming them, and failure.
define debian_packages
{ $(1); } > /dev/null \
	|| if [ "$$(id -u)" = 0 ] && command -v apt-get > /dev/null; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(2); \
	else \
		echo "make $@: $(strip $(3)) (Debian: apt-get install -y $(2), as root)" >&2; \
		exit 1; \
	fi
endef

# tests/test_report.py opens report.html in a real headless browser: Debian's chromium, driven by Playwright
# (whose own browser download is not used). Installed here when missing and root; otherwise, what to install.
browser:
	@$(call debian_packages,command -v chromium || command -v chromium-browser || command -v google-chrome,chromium,\
		no chromium on PATH; the report test needs one)

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

# `pip install .` into a fresh venv gives a working job (tests/test_packaging.py, about 70 s; not in `make test`).
package-check: $(VENV)/.installed
	$(BIN)/python -m pytest -m package tests/test_packaging.py

lint: $(VENV)/.installed
	$(BIN)/ruff check entrypoint tests bench scripts
	$(BIN)/lint-imports
	$(BIN)/hadolint Dockerfile
	$(BIN)/shellcheck scripts/*.sh .ci/run
	$(BIN)/actionlint -shellcheck=$(BIN)/shellcheck

# Regenerate the locks (no downloads: uv resolves from the index metadata). The runtime lock: pyproject.toml's
# dependency ranges with requirements.in's pins; the existing lock's other versions are kept (no --upgrade).
lock:
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile pyproject.toml requirements.in -o requirements.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads
	$(BIN)/uv pip compile requirements-dev.in -c requirements.lock -o requirements-dev.lock \
		--python-version 3.11 --python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads
	$(BIN)/uv pip compile requirements-sky.in -o requirements-sky.lock --python-version 3.11 \
		--python-platform x86_64-manylinux_2_28 --generate-hashes --no-python-downloads

# The settings reference and the image-token table in README.md, generated from the code.
docs: $(VENV)/.installed
	$(BIN)/python -m entrypoint.docs --write README.md

# Needs a Docker engine (`make image-smoke` starts one as root).
image:
	@docker info > /dev/null 2>&1 || { echo "make image: no Docker engine running here" >&2; exit 1; }
	docker build -t $(IMAGE) --build-arg VERSION=$$(sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml) \
		--build-arg REVISION=$$(git rev-parse HEAD 2>/dev/null || echo unknown) .

# Build the image from the Dockerfile as shipped (on a stand-in base where the pinned one cannot be pulled) and run
# the demo in it with no network, as uid 1000; checks the run directory from outside. As root it starts dockerd.
image-smoke: image-tools
	$(PYTHON) scripts/image_smoke.py --image $(IMAGE)

# Debian's Docker engine and debootstrap (for the stand-in base), installed when missing and root, as `browser` does.
image-tools:
	@$(call debian_packages,command -v docker && command -v dockerd && command -v debootstrap,docker.io debootstrap,\
		needs docker$(comma) dockerd and debootstrap)

# The job against `trl dpo` (TRL's CLI): same tiny LLaVA-NeXT, pairs and settings, 5 alternating runs each.
bench: $(VENV)/.installed
	$(BIN)/python bench/bench_vs_trl.py --out build/bench-vs-trl.json

# The whole job on the tiny model, 4-bit QLoRA against no quantization (the comparison `make bench` ran before).
bench-quant: $(VENV)/.installed
	$(BIN)/python bench/bench_job.py

# LLaVA-NeXT-Mistral-7B QLoRA DPO at 1 tile and full anyres vs the memory plan (on a CPU: the shapes: model).
bench-gpu: $(VENV)/.installed
	$(BIN)/python bench/bench_gpu.py

# One on-policy round on the same model, judged by it: sampled tokens/s and claims/s against the rounds plan.
bench-gpu-rounds: $(VENV)/.installed
	$(BIN)/python bench/bench_gpu.py --rounds

# Data preparation on 2,000 generated RLAIF-V photo rows: prepare() vs the seed guide's map vs decode + resize alone.
bench-settings: $(VENV)/.installed
	$(BIN)/python bench/bench_settings.py

# One DPO step with each image encoded once against TRL's path, every family's shapes: model on real-size photos.
bench-encode-once: $(VENV)/.installed
	$(BIN)/python bench/bench_encode_once.py --out build/bench-encode-once.json

bench-data: $(VENV)/.installed
	$(BIN)/python bench/bench_data.py --out build/bench-data/results.json

clean:
	rm -rf build outputs .pytest_cache
