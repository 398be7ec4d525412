"""``echoctl doctor``: prove every component of the stack works on this machine, for real.

Each check exercises the component (a Spark job, an MLflow write, an Airflow migration and DAG
parse, a DeepSpeed accelerator probe) and returns a one-line detail, or raises with the reason.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from echo_lib.core.config import EchoConfig

MIN_JAVA = 17


class CheckFailed(RuntimeError):
    """A doctor check failed; the message is the one-line reason shown to the user."""


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    seconds: float


def _run(cmd: list[str], *, env: dict[str, str] | None = None, timeout: float = 300, label: str = "") -> str:
    label = label or " ".join(Path(cmd[0]).name if i == 0 else c for i, c in enumerate(cmd[:3]))
    full_env = {**os.environ, **(env or {})}
    try:
        proc = subprocess.run(cmd, env=full_env, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise CheckFailed(f"{cmd[0]} not found on PATH") from exc
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{label} timed out after {timeout:.0f} s") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CheckFailed(f"{label} exited {proc.returncode}: {tail[0][:200]}")
    return proc.stdout + proc.stderr


def check_java(cfg: EchoConfig) -> str:
    out = _run(["java", "-version"])
    match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
    if not match:
        raise CheckFailed(f"cannot read the Java version from: {out.strip()[:120]}")
    major = int(match.group(1))
    if major < MIN_JAVA:
        raise CheckFailed(
            f"Java {major} found; Spark needs {MIN_JAVA}+ (apt-get install openjdk-17-jre-headless)"
        )
    return out.splitlines()[0].strip()


def check_spark(cfg: EchoConfig) -> str:
    from echo_lib.core.spark import get_session

    spark = get_session(cfg, "echo-doctor")
    with tempfile.TemporaryDirectory(dir=cfg.var_path, prefix="doctor-spark-") as tmp:
        path = str(Path(tmp) / "roundtrip.parquet")
        spark.range(1000).selectExpr("id", "id * 2 AS doubled").write.mode("overwrite").parquet(path)
        back = spark.read.parquet(path)
        total = back.agg({"doubled": "sum"}).collect()[0][0]
    if total != 999 * 1000:
        raise CheckFailed(f"Parquet round-trip returned sum {total}, expected {999 * 1000}")
    return f"Spark {spark.version} on {spark.sparkContext.master}: wrote and read 1000 rows of Parquet"


def check_mlflow(cfg: EchoConfig) -> str:
    import mlflow

    from echo_lib.core.tracking import configure_mlflow, ensure_experiment

    configure_mlflow(cfg)
    experiment_id = ensure_experiment(cfg, "echo-doctor")
    with mlflow.start_run(experiment_id=experiment_id, run_name="doctor") as run:
        mlflow.log_metric("doctor_ok", 1.0)
    logged = mlflow.MlflowClient().get_run(run.info.run_id).data.metrics.get("doctor_ok")
    if logged != 1.0:
        raise CheckFailed(f"metric written but read back as {logged!r}")
    return (
        f"MLflow {mlflow.__version__} at {cfg.mlflow_tracking_uri}: run {run.info.run_id[:8]} logged a metric"
    )


_PARSE_DAGS = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
bag = DagBag(dag_folder=sys.argv[1])
print(json.dumps({"dags": sorted(bag.dag_ids), "errors": {k: v.splitlines()[-1] for k, v in bag.import_errors.items()}}))
"""


def check_airflow(cfg: EchoConfig) -> str:
    env = cfg.airflow_env()
    cfg.airflow_home.mkdir(parents=True, exist_ok=True)
    airflow_bin = str(Path(sys.executable).with_name("airflow"))
    _run([airflow_bin, "db", "migrate"], env=env)
    out = _run(
        [sys.executable, "-c", _PARSE_DAGS, env["AIRFLOW__CORE__DAGS_FOLDER"]], env=env, label="DagBag parse"
    )
    result = json.loads(out.strip().splitlines()[-1])
    if result["errors"]:
        first, reason = next(iter(result["errors"].items()))
        raise CheckFailed(f"{len(result['errors'])} DAG import error(s); {Path(first).name}: {reason}")
    import importlib.metadata as md

    return (
        f"Airflow {md.version('apache-airflow')}: DB migrated at {cfg.airflow_sql_alchemy_conn}; "
        f"{len(result['dags'])} DAG(s) parsed, no import errors"
    )


def check_deepspeed(cfg: EchoConfig) -> str:
    os.environ.setdefault("DS_ACCELERATOR", "cpu" if cfg.train.num_gpus == 0 else "cuda")
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    name, backend = accelerator.device_name(), accelerator.communication_backend_name()
    if cfg.train.num_gpus == 0 and name != "cpu":
        raise CheckFailed(f"expected the CPU accelerator with num_gpus=0, got {name}")
    return f"DeepSpeed {deepspeed.__version__}: accelerator {name}, comm backend {backend}"


def check_torch(cfg: EchoConfig) -> str:
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(cfg.train.torch_threads)
    x = torch.randn(256, 256)
    start = time.perf_counter()
    for _ in range(20):
        x = torch.tanh(x @ x)
    per_matmul_ms = (time.perf_counter() - start) / 20 * 1000
    if not torch.isfinite(x).all():
        raise CheckFailed("a 256x256 matmul produced non-finite values")
    bf16 = "bf16 ok" if _bf16_works(torch) else "no bf16"
    return (
        f"torch {torch.__version__}: {before} threads by default, set to {torch.get_num_threads()} "
        f"(train.torch_threads); 256x256 matmul {per_matmul_ms:.2f} ms; {bf16}"
    )


def _bf16_works(torch) -> bool:
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return torch.ones(4, 4) @ torch.ones(4, 4) is not None
    except RuntimeError:
        return False


CHECKS: dict[str, Callable[[EchoConfig], str]] = {
    "java": check_java,
    "spark": check_spark,
    "mlflow": check_mlflow,
    "airflow": check_airflow,
    "deepspeed": check_deepspeed,
    "torch": check_torch,
}


def run_checks(cfg: EchoConfig, names: list[str] | None = None) -> list[CheckResult]:
    cfg.ensure_dirs()
    results = []
    for name in names or list(CHECKS):
        start = time.perf_counter()
        try:
            detail, ok = CHECKS[name](cfg), True
        except CheckFailed as exc:
            detail, ok = str(exc), False
        except Exception as exc:  # a broken component: report it, keep checking the rest
            detail, ok = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}", False
        results.append(CheckResult(name, ok, detail, time.perf_counter() - start))
    return results
