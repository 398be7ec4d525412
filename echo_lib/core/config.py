"""One typed configuration for every Echo component.

Precedence, lowest to highest: embedded defaults < ``echo.yaml`` < ``ECHO_*`` environment
variables < command-line flags (``echoctl --set key=value`` or a command's own options).
Nested keys use ``__`` in the environment: ``ECHO_SPARK__MASTER=spark://host:7077``.

Embedded defaults keep every byte Echo writes under ``<home>/var``; the scale-out keys
(``spark.master``, ``lake.uri``, ``mlflow.tracking_uri``, ``train.*``) point the same code at a
cluster without code changes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

ENV_PREFIX = "ECHO_"
ENV_NESTED = "__"
CONFIG_FILE_NAME = "echo.yaml"


class ConfigError(ValueError):
    """The configuration cannot be loaded; the message says which key and why."""


def default_home() -> Path:
    """The checkout Echo runs from: the repo root for an editable install, else the cwd."""
    if env := os.environ.get("ECHO_HOME"):
        return Path(env).resolve()
    repo = Path(__file__).resolve().parents[2]
    if (repo / "setup.cfg").is_file() and (repo / "echo_lib").is_dir():
        return repo
    return Path.cwd().resolve()


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SparkSettings(_Section):
    master: str = Field("local[*]", description="Spark master URL: local[*], spark://, yarn, k8s://")
    driver_memory: str = Field("4g", description="spark.driver.memory for jobs Echo submits")
    driver_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="address of this machine that a cluster's executors can reach (spark.driver.host, "
        "SPARK_LOCAL_IP): the driver runs where jobs are submitted. 127.0.0.1 only for one machine",
    )
    shuffle_partitions: int = Field(
        8, gt=0, description="spark.sql.shuffle.partitions (AQE coalesces further)"
    )
    conf: dict[str, str] = Field(
        default_factory=dict, description="extra --conf key=value pairs for spark-submit"
    )


class LakeSettings(_Section):
    uri: str = Field(
        "", description="lake root: a local path or a Hadoop URI (s3a://, hdfs://); default <var>/lake"
    )
    raw_text_days: int = Field(
        30,
        ge=0,
        description="days raw, bronze, silver and quarantine keep users' text (0: forever); gold, "
        "scrubbed, stays. At least 2: the nightly re-mines D-1",
    )

    @field_validator("raw_text_days")
    @classmethod
    def _keeps_what_the_nightly_rereads(cls, days: int) -> int:
        if days == 1:
            raise ValueError("1 day would delete D-1 before the nightly re-mines it: use 0 (forever) or >= 2")
        return days


class IngestSettings(_Section):
    """What one raw file may cost ingest before it is cut (a gzip bomb or a runaway client)."""

    max_line_bytes: int = Field(
        1 << 20, gt=0, description="a longer line is quarantined as oversize_field (its head kept)"
    )
    max_file_bytes: int = Field(
        4 << 30,
        gt=0,
        description="decompressed bytes read per raw file; past it, one oversize_file row says where "
        "reading stopped (the raw file stays for a rerun)",
    )


class MlflowSettings(_Section):
    tracking_uri: str = Field(
        "", description="MLflow tracking/registry URI; default sqlite:///<var>/mlflow/mlflow.db"
    )
    artifact_location: str = Field(
        "", description="artifact root for new experiments; default <var>/mlflow/artifacts"
    )
    experiment: str = Field("echo", min_length=1, description="experiment every Echo run logs to")
    registered_model: str = Field(
        "echo-agent", min_length=1, description="registered model name in the registry"
    )


class AirflowSettings(_Section):
    home: str = Field("", description="AIRFLOW_HOME; default <var>/airflow")
    sql_alchemy_conn: str = Field("", description="metadata DB; default SQLite under the Airflow home")
    host: str = Field("127.0.0.1", description="address the api-server binds")
    port: int = Field(8080, gt=0, lt=65536, description="api-server port")
    executor: str = Field(
        "LocalExecutor",
        min_length=1,
        description="Airflow executor: LocalExecutor, or CeleryExecutor / KubernetesExecutor (their "
        "provider installed) on a cluster",
    )
    execution_api_url: str = Field(
        "",
        description="URL workers reach the api-server's execution API at; default "
        "http://<host>:<port>/execution/ (set it when workers run on other machines)",
    )
    parallelism: int = Field(4, gt=0, description="executor slots (keep low on 2 cores)")
    nightly_cron: str = Field("0 2 * * *", description="schedule of the nightly data DAG")
    world_dag: bool = Field(
        True, description="define the echo_world DAG (simulated traffic): demo only, set false in production"
    )
    raw_wait_timeout_s: int = Field(
        6 * 3600, gt=0, description="how long echo_nightly waits for a day's raw telemetry before failing"
    )
    admin_user: str = Field("admin", min_length=1, description="simple auth manager user (role admin)")


class TrainSettings(_Section):
    preset: str = Field("default", description="model/training preset: tiny, default, or a GPU preset")
    num_procs: int = Field(
        2, gt=0, description="training processes per node (CPU ranks, or GPUs when num_gpus > 0)"
    )
    num_gpus: int = Field(0, ge=0, description="GPUs per node; 0 trains on CPU with gloo")
    num_nodes: int = Field(1, gt=0, description="nodes; >1 needs a hostfile")
    hostfile: str | None = Field(None, description="DeepSpeed hostfile for multi-node runs")
    master_port: int = Field(29500, gt=0, lt=65536, description="rendezvous port of the deepspeed launcher")
    master_addr: str = Field(
        "", description="address of node 0 for multi-node runs; default: the hostfile's first host"
    )
    no_ssh: bool = Field(
        False,
        description="multi-node without ssh (containers, Kubernetes): every node runs its own launcher; "
        "node 0 runs echoctl train, the others `echoctl train-node`",
    )
    node_rank: int = Field(0, ge=0, description="this node's rank with no_ssh (0 runs echoctl train)")
    zero_stage: Literal[0, 1, 2, 3] = Field(2, description="DeepSpeed ZeRO stage")
    torch_threads: int = Field(
        1, gt=0, description="torch intra-op threads per rank (measured: 1 is best on 2 cores)"
    )
    checkpoint_dir: str = Field("", description="training checkpoints; default <var>/checkpoints")
    base_model: str | None = Field(
        None,
        description="a local Hugging Face checkpoint directory or model id: bootstrap starts from its "
        "tokenizer and weights (from_pretrained) instead of training them from scratch",
    )

    @model_validator(mode="after")
    def _multi_node_needs_hostfile(self) -> TrainSettings:
        if self.num_nodes > 1 and not self.hostfile:
            raise ValueError("num_nodes > 1 needs train.hostfile")
        if self.node_rank >= self.num_nodes:
            raise ValueError(f"node_rank {self.node_rank} is not below num_nodes {self.num_nodes}")
        if self.no_ssh and self.num_nodes > 1 and not self.master_addr:
            raise ValueError("no_ssh with num_nodes > 1 needs train.master_addr (node 0's address)")
        return self


class CorpusSettings(_Section):
    public: list[str] = Field(
        default_factory=list, description="public-code directories; empty = this Python's stdlib"
    )
    team_repos: list[str] = Field(
        default_factory=lambda: ["sqlalchemy", "pydantic", "jinja2"],
        description="team repos: installed package names or directories (one repo each)",
    )
    heldout_percent: int = Field(20, ge=1, le=90, description="share of each team repo's files held out")
    calibration_percent: int = Field(
        10, ge=0, le=50, description="share of each team repo's files kept for show-policy calibration"
    )
    public_reserve_percent: int = Field(2, ge=1, le=50, description="share of public code never trained on")

    @model_validator(mode="after")
    def _room_for_experience(self) -> CorpusSettings:
        if self.heldout_percent + self.calibration_percent >= 100:
            raise ValueError("heldout_percent + calibration_percent must leave files for experience")
        return self


class EngineConfig(_Section):
    max_new_tokens: int = Field(48, gt=0, description="generation budget per proposal")
    show_threshold: float = Field(
        0.15,
        ge=0,
        le=1,
        description="confidence below which a proposal is not shown, for a model version without a "
        "calibrated show policy (v0), or for every model when show_policy=threshold",
    )
    show_policy: Literal["model", "threshold"] = Field(
        "model",
        description="model: each version's calibrated show policy (show_policy.json) decides what is "
        "shown; threshold: engine.show_threshold on confidence for every model",
    )
    batch_size: int = Field(32, gt=0, description="requests decoded together")
    torch_threads: int = Field(2, gt=0, description="torch threads for inference (world, evaluation)")
    prompt_window_step: int = Field(
        1,
        gt=0,
        description="prompt truncation step K, shared by serving and training rows: 1 keeps the last "
        "tokens that fit (today's proposals); K > 1 lets the window start stay on a content-chosen token "
        "for ~K/2 tokens typed (keeping budget-K+1 to budget tokens), so cached prompts can be reused",
    )
    prefix_cache: bool = Field(
        True, description="reuse recent prompts' KV caches (same proposals, less prefill compute)"
    )
    prefix_cache_mb: float = Field(
        256, ge=0, description="memory bound of the prefix cache, MiB (least recently used entries go first)"
    )
    draft_tokens: int = Field(
        8,
        ge=0,
        description="prompt-lookup draft tokens verified per decoding step (same proposals; fewer steps "
        "when the code repeats itself); 0 decodes one token per step",
    )
    step_tokens: int = Field(
        32,
        gt=0,
        description="drafts fill a decoding step only up to this many tokens (rows x width): on a CPU a "
        "full batch is compute-bound and gains nothing from them; raise it on a GPU",
    )


class WorldConfig(_Section):
    sessions: int = Field(120, gt=0, description="simulated sessions per day")
    seed: int = Field(0, description="world seed: same seed, same sessions, same events")
    concurrency: int = Field(64, gt=0, description="sessions simulated at once (their requests are batched)")
    acceptance_sessions: int = Field(
        400, gt=0, description="held-out sessions for echoctl acceptance and echoctl evaluate"
    )
    acceptance_seed: int = Field(1000, description="seed of the held-out acceptance sessions")


class DatasetSettings(_Section):
    """``echoctl build-dataset``: the funnel from silver refinements to gold."""

    min_chars: int = Field(3, ge=0, description="settled code shorter than this (stripped) teaches nothing")
    cap_per_user: int = Field(2000, gt=0, description="most rows one developer contributes to a build")
    cap_per_file: int = Field(200, gt=0, description="most rows one file contributes to a build")
    near_dup_distance: float = Field(
        0.2, gt=0, lt=1, description="MinHashLSH Jaccard distance below which rows are near duplicates"
    )
    validation_percent: int = Field(5, ge=0, le=50, description="share of sessions in the validation split")
    opt_out_users: list[str] = Field(
        default_factory=list, description="user ids whose data never reaches gold"
    )
    opt_out_repos: list[str] = Field(
        default_factory=list, description="repo ids whose data never reaches gold"
    )
    harvest: Literal["refinements", "accepted", "raw"] = Field(
        "refinements",
        description="what gold keeps: refinements (Echo: settled code, denoised, deduplicated, capped); "
        "accepted (naive baseline: proposals accepted unchanged); raw (naive baseline: the text as it "
        "first arrived: mining takes the first snapshot, not the settled one). Privacy, opt-out and "
        "decontamination apply to all",
    )


class LearnSettings(_Section):
    """``echoctl train``: refining the champion on gold datasets."""

    objective: Literal["sft", "dpo", "kto", "sft+dpo"] = Field(
        "sft", description="sft (prompt -> kept code), dpo (kept over proposed), kto, or sft then dpo"
    )
    window_days: int = Field(7, gt=0, description="without --from/--to: the newest N gold dates")
    max_steps: int = Field(
        0, ge=0, description="optimizer steps per stage; 0 = about two epochs of the window, capped"
    )
    max_steps_cap: int = Field(300, gt=0, description="most steps per stage when max_steps is 0")
    learning_rate: float = Field(5e-4, gt=0, lt=1, description="peak learning rate when refining")
    weight_decay: float = Field(
        0.0, ge=0, description="AdamW weight decay when refining (decay pulls toward zero, not the parent)"
    )
    replay_share: float = Field(
        0.3,
        ge=0,
        lt=1,
        description="public code replayed against forgetting: share of SFT loss tokens (full-loss blocks), "
        "of KTO rows",
    )
    context_loss: bool = Field(
        True,
        description="SFT also learns the code around each refinement (its prompt), once per stretch of "
        "code, as full-loss blocks",
    )
    team_files_share: float = Field(
        0.0,
        ge=0,
        le=1,
        description="SFT: share of the context blocks replaced by blocks of the team's own files "
        "(experience split), at the same loss tokens; 0 = refinements and their context only",
    )
    recipe: Literal["blocks", "rows"] = Field(
        "blocks",
        description="sft: blocks = every row a full-loss block, refinements weighting the tokens of "
        "the session code around them (equal loss tokens for every arm); rows = the kept code as its own "
        "completion-only rows beside context blocks (the recipe before 2026-12)",
    )
    kept_weight: float = Field(
        2.0, ge=1, description="blocks: loss weight of the code the user kept at a request (others 1)"
    )
    fixed_weight: float = Field(
        4.0, ge=1, description="blocks: ... where the user rejected or edited the shown proposal"
    )
    unlikelihood: float = Field(
        0.0,
        ge=0,
        description="blocks: weight of -log(1 - p) on a rejected proposal's first token that differs "
        "from what the user kept (0 = off)",
    )
    decontaminate_lines: bool = Field(
        True,
        description="blocks: drop lines that also stand in held-out files from every arm's training "
        "text (session code, team files, replay), the rule build-dataset applies to gold rows",
    )
    beta: float = Field(0.1, gt=0, description="DPO/KTO beta")
    save_steps: int = Field(50, gt=0, description="checkpoint every K steps (resume point)")
    seed: int = Field(0, description="seed for data order, replay sampling and init")


class CalibrationSettings(_Section):
    """Fitting a trained model's show policy on canary traffic (the ``calibration`` split)."""

    enabled: bool = Field(True, description="calibrate every trained model before it is registered")
    policy: Literal["logistic", "confidence"] = Field(
        "logistic",
        description="logistic: P(accept) from request-time features, learned from the canary's "
        "outcomes; confidence: a threshold on the model's confidence only",
    )
    sessions: int = Field(200, gt=0, description="canary sessions on the calibration split per model")
    seed: int = Field(2000, description="seed of the canary sessions (the same for every model)")
    min_shown_rate: float = Field(
        0.02, ge=0, le=1, description="a threshold must show at least this share of requests"
    )


class PromotionSettings(_Section):
    """The gate between @challenger and @champion (``echoctl evaluate`` / ``echoctl promote``)."""

    enabled: bool = Field(
        False, description="move @champion when the gate passes; false = every promote is a dry run"
    )
    min_acceptance_gain: float = Field(
        0.0, description="challenger minus champion held-out acceptance must exceed this (absolute)"
    )
    require_ci_above_zero: bool = Field(
        True, description="the paired 95% CI of the acceptance gain must lie above zero"
    )
    max_similarity_regression: float = Field(
        0.02, ge=0, description="largest allowed drop of offline edit similarity (absolute)"
    )
    max_retained_regression: float = Field(
        0.0,
        ge=0,
        description="largest allowed relative drop of retained accepted characters per request "
        "(what users got); 0 = not lower than the champion's",
    )
    max_forgetting_regression: float = Field(
        0.02, ge=0, description="largest allowed drop of next-line edit similarity on reserved public code"
    )
    forgetting_samples: int = Field(
        1000, gt=0, description="lines of reserved public code in the forgetting check"
    )
    offline_max_rows: int = Field(
        1000, gt=0, description="held-out refinements scored offline (a fixed sample when there are more)"
    )


class EchoConfig(BaseSettings):
    """The effective configuration. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED, extra="forbid", validate_assignment=True
    )

    home: Path = Field(default_factory=default_home, description="checkout root; var/ lives beneath it")
    var_dir: str = Field("", description="where Echo writes everything by default; default <home>/var")
    spark: SparkSettings = Field(default_factory=SparkSettings)
    lake: LakeSettings = Field(default_factory=LakeSettings)
    ingest: IngestSettings = Field(default_factory=IngestSettings)
    mlflow: MlflowSettings = Field(default_factory=MlflowSettings)
    airflow: AirflowSettings = Field(default_factory=AirflowSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    corpus: CorpusSettings = Field(default_factory=CorpusSettings)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    dataset: DatasetSettings = Field(default_factory=DatasetSettings)
    learn: LearnSettings = Field(default_factory=LearnSettings)
    calibration: CalibrationSettings = Field(default_factory=CalibrationSettings)
    promotion: PromotionSettings = Field(default_factory=PromotionSettings)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # load_config merges file and flags into init kwargs itself (so it can record provenance);
        # the environment sits between them.
        return (init_settings, env_settings)

    # Derived locations: empty settings fall back to embedded defaults under var/.
    @property
    def var_path(self) -> Path:
        return Path(self.var_dir) if self.var_dir else self.home / "var"

    @property
    def lake_uri(self) -> str:
        return self.lake.uri or str(self.var_path / "lake")

    @property
    def mlflow_tracking_uri(self) -> str:
        return self.mlflow.tracking_uri or f"sqlite:///{self.var_path / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_is_server(self) -> bool:
        """The tracking URI is an MLflow server (it stores artifacts where it was told to)."""
        return self.mlflow_tracking_uri.startswith(("http://", "https://", "databricks"))

    @property
    def mlflow_artifact_location(self) -> str:
        """Artifact root for new experiments; empty with a server and no explicit setting, so the
        server's own ``--artifacts-destination`` (``mlflow-artifacts:/``) is used, never a path of
        the client's file system."""
        if self.mlflow.artifact_location or self.mlflow_is_server:
            return self.mlflow.artifact_location
        return (self.var_path / "mlflow" / "artifacts").as_uri()

    @property
    def airflow_execution_api_url(self) -> str:
        return self.airflow.execution_api_url or f"http://{self.airflow.host}:{self.airflow.port}/execution/"

    @property
    def airflow_home(self) -> Path:
        return Path(self.airflow.home) if self.airflow.home else self.var_path / "airflow"

    @property
    def airflow_sql_alchemy_conn(self) -> str:
        return self.airflow.sql_alchemy_conn or f"sqlite:///{self.airflow_home / 'airflow.db'}"

    @property
    def airflow_on_sqlite(self) -> bool:
        return self.airflow_sql_alchemy_conn.startswith("sqlite")

    @property
    def checkpoint_dir(self) -> Path:
        return Path(self.train.checkpoint_dir) if self.train.checkpoint_dir else self.var_path / "checkpoints"

    @property
    def torch_extensions_dir(self) -> Path:
        return self.var_path / "cache" / "torch_extensions"

    def ensure_dirs(self) -> None:
        """Create the local folders the embedded defaults use (remote URIs are left alone)."""
        for path in (self.var_path, self.airflow_home, self.checkpoint_dir, self.torch_extensions_dir):
            path.mkdir(parents=True, exist_ok=True)
        if "://" not in self.lake_uri:
            Path(self.lake_uri).mkdir(parents=True, exist_ok=True)

    def airflow_env(self) -> dict[str, str]:
        """Environment for any Airflow process Echo starts (CLI, components, tests)."""
        sqlite = {
            f"AIRFLOW__DATABASE__SQL_ALCHEMY_CONNECT_ARGS{suffix}": f"{__name__}.SQLITE_CONNECT_ARGS"
            for suffix in ("", "_ASYNC")
        }
        return {
            **(sqlite if self.airflow_on_sqlite else {}),
            "AIRFLOW_HOME": str(self.airflow_home),
            "AIRFLOW__CORE__DAGS_FOLDER": str(self.home / "dags"),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": self.airflow.executor,
            "AIRFLOW__CORE__PARALLELISM": str(self.airflow.parallelism),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.airflow_sql_alchemy_conn,
            "AIRFLOW__API__HOST": self.airflow.host,
            "AIRFLOW__API__PORT": str(self.airflow.port),
            "AIRFLOW_CONN_ECHO_SPARK": f'{{"conn_type": "spark", "host": "{self.spark.master}"}}',
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{self.airflow.admin_user}:admin",
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": self.airflow_execution_api_url,
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "30",
            "AIRFLOW__SCHEDULER__ENABLE_HEALTH_CHECK": "False",
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(self.airflow.port + 13),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(self.airflow.port + 14),
            # read by the DAG files at parse time (environment only: no config file, no DB)
            "ECHO_AIRFLOW__NIGHTLY_CRON": self.airflow.nightly_cron,
            "ECHO_AIRFLOW__WORLD_DAG": str(self.airflow.world_dag).lower(),
            "ECHO_AIRFLOW__RAW_WAIT_TIMEOUT_S": str(self.airflow.raw_wait_timeout_s),
            "ECHO_SPARK__DRIVER_MEMORY": self.spark.driver_memory,
            "ECHO_HOME": str(self.home),
        }

    def runtime_env(self) -> dict[str, str]:
        """Environment every Echo subprocess (spark-submit, deepspeed, Airflow) should inherit."""
        return {
            **{k: os.environ.get(k, v) for k, v in QUIET_LIBRARIES.items()},  # what the user set wins
            "ECHO_HOME": str(self.home),
            "SPARK_LOCAL_IP": self.spark.driver_host,
            "TORCH_EXTENSIONS_DIR": os.environ.get("TORCH_EXTENSIONS_DIR", str(self.torch_extensions_dir)),
            "MLFLOW_TRACKING_URI": self.mlflow_tracking_uri,
        }


# SQLite lets one writer in at a time; a second waits ``timeout`` seconds, then fails with "database
# is locked" (sqlite3's default is 5 s). Four Airflow components, their task runners and Spark jobs
# share 2 cores here, so a write can wait longer than that: an Airflow process then errors out
# where it should only have waited (the POST of a backfill answered 503, the scheduler's loop).
SQLITE_CONNECT_ARGS = {"timeout": 60}

# Libraries' own download, loading and map bars are not Echo's progress (Echo prints its own
# lines): in a log they are hundreds of carriage-return lines. Off in every Echo process.
QUIET_LIBRARIES = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "HF_DATASETS_DISABLE_PROGRESS_BARS": "1",
    "TQDM_DISABLE": "1",
}


def quiet_libraries() -> None:
    """Switch third-party progress bars off in this process (what the user set wins)."""
    for key, value in QUIET_LIBRARIES.items():
        os.environ.setdefault(key, value)


# --------------------------------------------------------------------------- loading


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping) and value and dotted != "spark.conf":
            flat.update(_flatten(value, f"{dotted}."))
        else:
            flat[dotted] = value
    return flat


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for dotted, value in flat.items():
        node = tree
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{dotted}: '{part}' is a value, not a section")
        node[leaf] = value
    return tree


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """``["spark.master=yarn", "train.num_procs=4"]`` -> flat dict (values parsed as YAML scalars)."""
    flat: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set expects KEY=VALUE, got {pair!r}")
        flat[key.strip()] = yaml.safe_load(raw) if raw.strip() else ""
    return flat


def find_config_file(explicit: str | Path | None = None) -> Path | None:
    """``--config`` flag, else ``$ECHO_CONFIG``, else ``<home>/echo.yaml`` if it exists."""
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        return path
    if env := os.environ.get("ECHO_CONFIG"):
        path = Path(env)
        if not path.is_file():
            raise ConfigError(f"ECHO_CONFIG points at a missing file: {path}")
        return path
    path = default_home() / CONFIG_FILE_NAME
    return path if path.is_file() else None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of settings, got {type(data).__name__}")
    return data


def _readable(exc: ValidationError, origin: Mapping[str, str]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        where = origin.get(key, "")
        lines.append(f"{key}: {err['msg']}" + (f" (from {where})" if where else ""))
    return "invalid configuration: " + "; ".join(lines)


class LoadedConfig(BaseModel):
    """The effective config plus where every leaf value came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    config: EchoConfig
    origin: dict[str, str]
    file: Path | None = None


def load_config(
    config_file: str | Path | None = None, overrides: Mapping[str, Any] | None = None
) -> LoadedConfig:
    """Load defaults < file < env < flags and remember each value's origin."""
    path = find_config_file(config_file)
    file_flat = _flatten(_read_yaml(path)) if path else {}
    flag_flat = dict(overrides or {})

    env_source = EnvSettingsSource(EchoConfig, env_prefix=ENV_PREFIX, env_nested_delimiter=ENV_NESTED)
    env_flat = _flatten(env_source())

    origin: dict[str, str] = {}
    for key in file_flat:
        origin[key] = f"file {path}"
    for key in env_flat:
        origin[key] = f"env {ENV_PREFIX}{key.upper().replace('.', ENV_NESTED)}"
    for key in flag_flat:
        origin[key] = "flag"

    # Flags beat env: pass them as init kwargs (highest). The file goes in as init kwargs too, but
    # only for keys the environment does not set, so env keeps its place between file and flags.
    merged = {k: v for k, v in file_flat.items() if k not in env_flat}
    merged.update(flag_flat)
    try:
        config = EchoConfig(**_nest(merged))
    except ValidationError as exc:
        raise ConfigError(_readable(exc, origin)) from exc
    return LoadedConfig(config=config, origin=origin, file=path)


def write_effective(cfg: EchoConfig, path: Path) -> Path:
    """The effective config as a YAML file a subprocess loads with ``ECHO_CONFIG``: a job or task
    then sees what this process sees (``--config`` file, environment and ``--set`` flags alike)."""
    import yaml

    effective = cfg.model_dump(mode="json")
    effective["home"] = str(cfg.home)
    effective["var_dir"] = str(cfg.var_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(effective, sort_keys=True))
    return path


def with_overrides(cfg: EchoConfig, overrides: Mapping[str, Any]) -> EchoConfig:
    """``cfg`` with dotted keys replaced (``{"lake.uri": "..."}``), validated again."""
    flat = _flatten(cfg.model_dump())
    flat.update(overrides)
    try:
        return EchoConfig(**_nest(flat))
    except ValidationError as exc:
        raise ConfigError(_readable(exc, {k: "override" for k in overrides})) from exc


def effective_items(loaded: LoadedConfig) -> list[tuple[str, Any, str]]:
    """(key, effective value, origin) for every leaf, derived locations resolved."""
    cfg = loaded.config
    derived = {
        "var_dir": str(cfg.var_path),
        "lake.uri": cfg.lake_uri,
        "mlflow.tracking_uri": cfg.mlflow_tracking_uri,
        "mlflow.artifact_location": cfg.mlflow_artifact_location,
        "airflow.home": str(cfg.airflow_home),
        "airflow.sql_alchemy_conn": cfg.airflow_sql_alchemy_conn,
        "airflow.execution_api_url": cfg.airflow_execution_api_url,
        "train.checkpoint_dir": str(cfg.checkpoint_dir),
    }
    rows = []
    for key, value in _flatten(cfg.model_dump(mode="json")).items():
        origin = loaded.origin.get(key)
        if origin is None:
            origin = "default (derived)" if key in derived and not value else "default"
        rows.append((key, derived.get(key) or value, origin))
    return rows
