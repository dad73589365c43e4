# Two commands set up everything on a fresh machine: `make run` and `make test`.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# libtcmalloc-minimal4: `make run` preloads tcmalloc (see run below)
APT_PACKAGES := espeak-ng flac libsndfile1 libtcmalloc-minimal4
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup run test test-fast test-reliability compile pipeline-local lint clean hash-lock

setup: .apt-stamp $(STAMP)  ## install system packages + the venv from the lock (idempotent)

.apt-stamp: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMP): requirements.lock pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check pip==26.3 setuptools==84.2.1 wheel==0.47.0
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --require-hashes -r requirements.lock
	$(BIN)/pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	@touch $@

# tcmalloc instead of glibc malloc: PyTorch's CPU training allocates tensors of ever-changing shapes, and
# glibc's heap fragments (RSS 2.8 GB after 140 CTC steps, 1.5 GB with tcmalloc); measured side by side on the
# default data (benchmarks/ has no timed assertion): CTC step 0.775 -> 0.629 s, SmolLM2 stage-two step
# 0.872 -> 0.828 s, joint decoding of 64 dev utterances 21.0 -> 20.3 s. The allocator changes speed and
# memory, not results (PyTorch aligns its CPU tensors itself). LLM_ASR_MALLOC=glibc turns it off.
# make run PROFILE=whisper: the same DAG for configs/<PROFILE>.yaml, as a DVC experiment in the workspace when
# params.yaml names another profile (dvc exp run -S profile=<PROFILE>: params.yaml keeps profile: <PROFILE>
# afterwards, `dvc exp show` lists the experiment); without PROFILE, params.yaml's own profile (dvc repro)
PROFILE ?=
run: setup  ## the default DAG on this machine (dvc repro), its stages grouped under one MLflow parent run
	@lib=$$([ "$${LLM_ASR_MALLOC:-tcmalloc}" = glibc ] || /sbin/ldconfig -p | awk '/libtcmalloc_minimal\.so\.4 /{print $$NF; exit}'); \
	echo "allocator: $${lib:-glibc malloc}"; \
	stamp=$$(date +%Y%m%d-%H%M%S); \
	now=$$(awk '/^profile:/{print $$2; exit}' params.yaml); \
	if [ -n "$(PROFILE)" ] && [ "$(PROFILE)" != "$$now" ]; then \
	  [ "$(PROFILE)" = default ] || [ -f "configs/$(PROFILE).yaml" ] || { echo "PROFILE=$(PROFILE): no configs/$(PROFILE).yaml (profiles: $$(ls configs | sed 's/\.yaml//' | tr '\n' ' '))"; exit 2; }; \
	  cmd="$(BIN)/dvc exp run -S profile=$(PROFILE) -n $(PROFILE)-$$stamp"; \
	else cmd="$(BIN)/dvc repro"; fi; \
	echo "$$cmd"; \
	LD_PRELOAD="$$lib" LLM_ASR_PIPELINE_RUN="$${LLM_ASR_PIPELINE_RUN:-repro-$$stamp}" $$cmd

test: setup  ## the whole test suite (unit + micro-profile integration)
	$(BIN)/python -m pytest -q

test-fast: setup
	$(BIN)/python -m pytest -q -m "not integration"

test-reliability: setup  ## only the reliability checks (fuzzing, kill/resume, reruns, concurrency, security); `make test` runs them too
	$(BIN)/python -m pytest -q tests/reliability

compile: setup  ## KFP pipelines -> IR YAML under build/
	$(BIN)/python -m pipelines.compile --out build

pipeline-local: setup  ## the training pipeline on micro through kfp.local (no cluster)
	$(BIN)/python -m pipelines.local_run --profile micro

hash-lock:  ## re-hash requirements.lock after editing a pin (the archives pip would install here)
	$(BIN)/python tools/hash_lock.py requirements.lock

clean:
	rm -rf build .pytest_cache
