#!/usr/bin/env bash
# make cluster-smoke: build Echo's image and run the compose stack where a container runtime and
# the base images are available (not part of CI: this machine cannot pull images).
set -euo pipefail
cd "$(dirname "$0")/.."
command -v docker >/dev/null || { echo "cluster-smoke needs docker (with compose v2)"; exit 2; }
compose=(docker compose -f docker/compose.yaml)
echo "building echo-agent:latest ..."
docker build -f docker/Dockerfile --target cpu -t echo-agent:latest .
trap '"${compose[@]}" --profile train down --volumes' EXIT
echo "starting PostgreSQL, MLflow, Spark (2 workers) and Airflow; waiting for their health checks ..."
"${compose[@]}" up -d --wait
"${compose[@]}" ps
echo "two trainer nodes (no ssh) bootstrap the tiny preset and register it through MLflow ..."
ECHO_TRAIN__PRESET=tiny "${compose[@]}" --profile train up --abort-on-container-exit --exit-code-from trainer-0 trainer-0 trainer-1
"${compose[@]}" exec -T airflow-scheduler echoctl history
echo "cluster smoke: ok"
