# monovl, one Dockerfile for both images. The CPU image is the default; the CUDA one:
#   --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-runtime-ubuntu24.04 --build-arg TORCH_INDEX=cu128
# TORCH_INDEX_URL takes any index that serves torch (a mirror, a private index); by default it is
# PyTorch's for TORCH_INDEX. A base needs Python 3.11 or later, or apt to install one.
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX=cpu
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/${TORCH_INDEX}
ARG VERSION=0.1.0

LABEL org.opencontainers.image.title="monovl" \
      org.opencontainers.image.description="Mono-InternVL vision-language models behind an OpenAI-compatible API" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"

# MONOVL_GRACEFUL_TIMEOUT stays under `docker stop`'s default 10 s, so a stopped container ends its
# streams properly; raise both together (compose and deploy/kubernetes do).
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:${PATH} \
    HF_HOME=/models/huggingface \
    MONOVL_CACHE=/models/monovl \
    MONOVL_HOST=0.0.0.0 \
    MONOVL_PORT=8000 \
    MONOVL_GRACEFUL_TIMEOUT=8

# Python in a virtual environment: nvidia/cuda images have no Python, and an apt-installed one
# refuses pip (PEP 668). Ubuntu images already have a user with uid 1000 (ubuntu): it is the one used.
# Distribution packages are not pinned: the same line serves Debian and Ubuntu bases.
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
        apt-get update \
        && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \
        && rm -rf /var/lib/apt/lists/*; \
    fi \
    && python3 -m venv /opt/venv \
    && if ! getent passwd 1000 >/dev/null; then useradd --create-home --uid 1000 monovl; fi \
    && mkdir -p /models /app \
    && chown 1000:1000 /models /app

WORKDIR /app
# Largest and least often changed first: torch, then the other dependencies, then the code.
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
COPY pyproject.toml README.md ./
RUN python -c "import tomllib; print(*tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
        > /tmp/requirements.txt \
    && pip install --no-cache-dir -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt
COPY monovl ./monovl
COPY model ./model
COPY engine ./engine
COPY preprocessing ./preprocessing
COPY server ./server
RUN pip install --no-cache-dir --no-deps .

USER 1000:1000
VOLUME ["/models"]
EXPOSE 8000
STOPSIGNAL SIGTERM
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ.get('MONOVL_PORT', '8000')}/health\", timeout=4)"]
ENTRYPOINT ["monovl", "serve"]
