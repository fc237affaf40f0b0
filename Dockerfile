# monkeyjobs: API, workers and CLI in one image. GPU workers need the NVIDIA container runtime.
# devel, not runtime: flash-attn compiles against CUDA when no prebuilt wheel matches.
FROM nvidia/cuda:12.4.1-cudnn-devel-ubuntu22.04

ENV DEBIAN_FRONTEND=noninteractive PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv python3-pip \
    && rm -rf /var/lib/apt/lists/* \
    && python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

# torch first, as a CUDA build; then the package with its gpu extra (flash-attn).
ARG TORCH_VERSION=2.5.1
ARG TORCH_INDEX=https://download.pytorch.org/whl/cu124
RUN pip install --upgrade pip && pip install "torch==${TORCH_VERSION}" --index-url "${TORCH_INDEX}"

WORKDIR /app
COPY pyproject.toml README.md ./
COPY api ./api
COPY cli ./cli
COPY jobs ./jobs
COPY migrations ./migrations
COPY pipeline ./pipeline
COPY workers ./workers
# flash-attn's build imports torch, so it cannot build in pip's isolated environment.
RUN pip install packaging ninja wheel \
    && pip install "flash-attn>=2.6" --no-build-isolation \
    && pip install ".[gpu]"

# /weights is the gpu-worker's model volume; a named volume takes this directory's owner.
# numba compiles the pre-processing loops (pipeline.resample, pipeline.png) on first use and caches
# them; compiling here spares every new worker container those seconds on its first page.
ENV NUMBA_CACHE_DIR=/opt/numba-cache
RUN useradd --create-home monkeyjobs && mkdir /weights /opt/numba-cache \
    && chown monkeyjobs /weights /opt/numba-cache
USER monkeyjobs
RUN python -c "import io, numpy as np; from PIL import Image; \
from pipeline.png import decode_png; from pipeline.msac import msac_tiles, normalize, plan_tiles; \
from pipeline.requests import InferenceOptions; out = io.BytesIO(); \
Image.new('RGB', (500, 600)).save(out, 'PNG'); page = decode_png(out.getvalue()); \
normalize(msac_tiles(page, plan_tiles(500, 600, InferenceOptions())))"
CMD ["monkeyjobs", "--help"]
