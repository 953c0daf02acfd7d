# The front-end image: `brandbot slack`, `brandbot discord`, `brandbot status`. No torch, no model, no
# compiler. GPU workers are built from Dockerfile.gpu.
FROM python:3.11-slim-bookworm

ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1
WORKDIR /app

COPY pyproject.toml README.md ./
COPY brandbot brandbot
COPY bots bots
COPY worker worker
RUN pip install ".[slack,discord]" && rm -rf build *.egg-info && brandbot --help >/dev/null

COPY prompts prompts
# An unprivileged user with no home and no shell; compose runs the container read-only.
RUN groupadd --system --gid 10001 brandbot \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
        --shell /usr/sbin/nologin brandbot
USER 10001:10001
CMD ["brandbot", "--help"]
