# dpo-job: DPO + QLoRA on LLaVA-NeXT, one image for `docker run --gpus all` and SkyPilot.
# torch's CUDA 13 wheels bring their own CUDA libraries: the host needs only an NVIDIA driver
# that supports CUDA 13 (R580 or newer) and the NVIDIA container toolkit.
# Base pinned by tag and by the digest of its multi-architecture index (taken offline from public
# Dockerfiles pinning the same tag; refresh with `docker buildx imagetools inspect python:3.11.14-slim-bookworm`).
FROM python:3.11.14-slim-bookworm@sha256:65a93d69fa75478d554f4ad27c85c1e69fa184956261b4301ebaf6dbb0a3543d

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/cache/huggingface \
    TRITON_CACHE_DIR=/cache/triton \
    DPO_CACHE_DIR=/cache/dpo-job \
    DPO_OUTPUT_DIR=/outputs

# On CUDA, TRL computes log-probabilities with Triton kernels, and Triton builds each kernel's C launcher with gcc
# (or $CC) at first use, against Python.h (the base has it): gcc and the C library's headers, no more. Their
# versions are the base's Debian release's, as its own libc6 is (pinning them would break at the next point
# release); `make image-smoke` builds a C extension with Triton's own build function, as uid 1000.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*

RUN useradd --create-home --uid 1000 dpo \
    && mkdir -p /cache /outputs /app \
    && chown dpo:dpo /cache /outputs /app

WORKDIR /app

# The stack first, from the hashed lock only: a code change does not reinstall it.
COPY requirements.lock ./
RUN python -m pip install --require-hashes --no-deps -r requirements.lock

# Then the project itself, without dependencies (they are all in the lock; setuptools too, hence
# no build isolation: nothing is fetched that the lock does not pin). The installed package is what runs (the
# source copy goes), with requirements.lock beside it: the run record hashes it (run/record.py, lock_file).
COPY pyproject.toml README.md ./
COPY entrypoint ./entrypoint
RUN python -m pip install --no-deps --no-build-isolation . \
    && cp requirements.lock "$(python -P -c 'import entrypoint, os; print(os.path.dirname(entrypoint.__file__))')/" \
    && rm -rf build entrypoint

USER 1000:1000
# Downloads (HF_HOME) and results outlive the container: mount volumes here.
VOLUME ["/cache", "/outputs"]
# The launcher: the job itself on one GPU (or none), one process per GPU through torchrun with several
# (`docker run --gpus all --ipc=host`: NCCL needs more shared memory than Docker's default 64 MiB).
ENTRYPOINT ["python", "-m", "entrypoint.launch"]

# Last, so that a new commit changes only metadata (`make image` passes both). The job records the commit in
# manifest.json's provenance (there is no git checkout in the image); requirements.lock is in the package for its hash.
# Whoever starts the container can pass its digest as DPO_IMAGE_DIGEST: an image cannot know its own.
ARG VERSION=0.1.0
ARG REVISION=unknown
ENV DPO_CODE_REVISION=${REVISION}
LABEL org.opencontainers.image.title="dpo-job" \
      org.opencontainers.image.description="DPO with QLoRA on LLaVA-NeXT (and LLaVA 1.5, Idefics2, text LMs); publishes adapters to S3 and the Hub" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.source="https://github.com/dpo-job/dpo-job" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.base.name="docker.io/library/python:3.11.14-slim-bookworm"
