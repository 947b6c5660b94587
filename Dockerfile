# monovl: CPU image by default; build with --build-arg TORCH_INDEX=cu128 (or another CUDA index
# name) and BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 for the CUDA variant.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_INDEX=cpu
ARG TORCH_VERSION=2.13.0
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    HF_HOME=/models/huggingface \
    MONOVL_CACHE=/models/monovl \
    MONOVL_HOST=0.0.0.0 \
    MONOVL_PORT=8000

RUN useradd --create-home --uid 1000 monovl \
    && mkdir -p /models /app \
    && chown monovl:monovl /models /app

WORKDIR /app
RUN pip install --no-cache-dir "torch==${TORCH_VERSION}" --index-url "https://download.pytorch.org/whl/${TORCH_INDEX}"
COPY pyproject.toml README.md ./
COPY model ./model
COPY engine ./engine
COPY preprocessing ./preprocessing
COPY server ./server
RUN pip install --no-cache-dir .

USER 1000:1000
VOLUME ["/models"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('MONOVL_PORT', '8000')}/health\", timeout=4)"]
ENTRYPOINT ["monovl", "serve"]
