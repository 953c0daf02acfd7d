# Front-ends: the slim default. GPU workers: BASE=pytorch/pytorch:2.5.1-cuda12.4-cudnn9-devel (CUDA + nvcc,
# which exllamav2 needs to build its kernels) and EXTRAS=gpu.
ARG BASE=python:3.11-slim
FROM ${BASE}
WORKDIR /app
ENV PIP_NO_CACHE_DIR=1 HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
COPY pyproject.toml README.md ./
COPY brandbot brandbot
COPY bots bots
COPY worker worker
# One image for every tier; EXTRAS picks what a host gets (front-ends never install torch).
ARG EXTRAS=slack,discord
RUN pip install ".[${EXTRAS}]"
COPY prompts prompts
USER 1000
