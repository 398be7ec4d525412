# Echo: two commands on a fresh machine.
#   make demo   create .venv if needed, install the pinned stack, run the loop on embedded defaults
#   make test   create .venv if needed, install the pinned stack, run the whole test suite
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
# The stamp records what was installed; a changed lock or setup.cfg reinstalls, otherwise nothing happens.
STAMP := $(VENV)/.echo-installed

# Everything the project writes lives under var/ (see README "Where things live").
export ECHO_HOME ?= $(CURDIR)
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/var/cache/torch_extensions
export PYTHONUNBUFFERED := 1

.PHONY: help install demo test flywheel lint doctor airflow airflow-down cluster cluster-down cluster-smoke mlflow clean reset

help:
	@echo "make demo    run Echo end to end on embedded defaults (creates .venv on first use)"
	@echo "make test    run the test suite (creates .venv on first use)"
	@echo "make flywheel  Echo against every baseline, round by round; report in docs/results.md (hours)"
	@echo "make lint    ruff over the tree"
	@echo "make airflow start Airflow (api-server, scheduler, dag-processor, triggerer) on 127.0.0.1"
	@echo "make airflow-down  stop them"
	@echo "make cluster start cluster mode here: PostgreSQL, MLflow server, Spark master + 2 workers, Airflow"
	@echo "make cluster-down  stop it"
	@echo "make cluster-smoke build the image and run docker/compose.yaml (needs docker and base images)"
	@echo "make mlflow  the MLflow UI on 127.0.0.1:5000"
	@echo "make reset   delete var/ (lake, MLflow store, Airflow home, checkpoints); keeps .venv"
	@echo "make clean   delete var/ and .venv"

install: $(STAMP)

$(STAMP): $(LOCK) setup.cfg pyproject.toml scripts/ensure-java.sh
	@bash scripts/ensure-java.sh
	@test -x $(BIN)/python || { echo "Creating $(VENV) with $$($(PYTHON) --version)"; $(PYTHON) -m venv $(VENV); }
	@echo "Installing the pinned stack from $(LOCK) (first time: a few minutes, about 2.6 GB) ..."
	@start=$$(date +%s); \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r $(LOCK) 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; \
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }; \
	echo "Installed in $$(( $$(date +%s) - start )) s; $(VENV) is $$(du -sh $(VENV) | cut -f1)."
	@$(BIN)/python -m pip check --disable-pip-version-check
	@touch $@

demo: $(STAMP)
	@$(BIN)/python -m echo_lib.ops.demo

test: $(STAMP)
	@$(BIN)/python -m pytest

# Override on the command line, e.g. make flywheel FLYWHEEL_ARGS="--rounds 5 --arms echo,control"
FLYWHEEL_ARGS ?= --rounds 3 --arms echo,control,naive-accepted,repo

flywheel: $(STAMP)
	@$(BIN)/echoctl bootstrap
	@$(BIN)/echoctl flywheel $(FLYWHEEL_ARGS) --results-md docs/results.md

lint: $(STAMP)
	@$(BIN)/ruff check .

doctor: $(STAMP)
	@$(BIN)/echoctl doctor

airflow: $(STAMP)
	@$(BIN)/echoctl airflow up

airflow-down: $(STAMP)
	@$(BIN)/echoctl airflow down

cluster: $(STAMP)
	@$(BIN)/echoctl cluster up

cluster-down: $(STAMP)
	@$(BIN)/echoctl cluster down

cluster-smoke:
	@bash scripts/cluster-smoke.sh

mlflow: $(STAMP)
	@echo "MLflow UI: http://127.0.0.1:5000/#/experiments?workflowType=machine_learning (runs and models; the registry: #/models)"
	@$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/var/mlflow/mlflow.db --host 127.0.0.1 --port 5000

reset:
	rm -rf var

clean: reset
	rm -rf $(VENV) *.egg-info
