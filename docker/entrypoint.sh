#!/usr/bin/env bash
# The role a container of Echo's image plays: `echo-entrypoint ROLE [ARGS...]`.
# Settings come from Echo's config (ECHO_CONFIG or ECHO_* variables), never from this file,
# except the few that name this container's own address and ports.
set -euo pipefail

role="${1:-echoctl}"
shift || true
spark_home="$(python -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))')"
export SPARK_HOME="$spark_home"

case "$role" in
  spark-master)
    exec spark-class org.apache.spark.deploy.master.Master \
      --host "${SPARK_MASTER_HOST:-0.0.0.0}" --port "${SPARK_MASTER_PORT:-7077}" \
      --webui-port "${SPARK_MASTER_WEBUI_PORT:-8081}" "$@"
    ;;
  spark-worker)
    exec spark-class org.apache.spark.deploy.worker.Worker "${SPARK_MASTER_URL:?set SPARK_MASTER_URL}" \
      --cores "${SPARK_WORKER_CORES:-1}" --memory "${SPARK_WORKER_MEMORY:-1g}" \
      --work-dir "${SPARK_WORKER_DIR:-/var/echo/spark-work}" "$@"
    ;;
  mlflow)
    exec mlflow server --backend-store-uri "${MLFLOW_BACKEND_STORE_URI:?set MLFLOW_BACKEND_STORE_URI}" \
      --artifacts-destination "${MLFLOW_ARTIFACTS_DESTINATION:-/var/echo/mlflow-artifacts}" \
      --host 0.0.0.0 --port "${MLFLOW_PORT:-5000}" --workers "${MLFLOW_WORKERS:-2}" \
      --allowed-hosts "${MLFLOW_ALLOWED_HOSTS:-*}" "$@"
    ;;
  airflow-init)
    # migrate Airflow's database; Echo's effective config becomes the tasks' ECHO_CONFIG
    exec python -c 'from echo_lib.core.config import load_config
from echo_lib.ops.airflow_services import migrate
migrate(load_config().config)
print("airflow db migrated")'
    ;;
  airflow-api-server|airflow-scheduler|airflow-dag-processor|airflow-triggerer)
    exec python -m echo_lib.ops.airflow_services "${role#airflow-}" "$@"
    ;;
  trainer)
    # node 0 trains (echoctl train / bootstrap); nodes 1..N-1 follow it (no-ssh mode)
    if [ "${ECHO_TRAIN__NODE_RANK:-0}" = "0" ]; then
      exec echoctl "${@:-train}"
    fi
    exec echoctl train-node "$@"
    ;;
  echoctl)
    exec echoctl "$@"
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
