# One-command set-up: `make demo` and `make test` install into .venv first when needed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_SPEC ?= torch==2.13.0

# The venv's bin first on PATH: `stf`, and the `ninja` that DeepSpeed's JIT build needs, are
# found by every process we start, Ray workers included (they inherit the driver's environment).
export PATH := $(abspath $(VENV))/bin:$(PATH)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install test test-lib test-slow test-gpu demo serve lint format bench bench-scale bench-jobs-scale bench-token-budget clean

install: $(STAMP)

# torch first and pinned: unpinned, anything depending on torch pulls a newer CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q "$(TORCH_SPEC)"
	$(PY) -m pip install -q -e ".[dev]" "$(TORCH_SPEC)"
	touch $(STAMP)

# The fast suite: the library tests, the pipeline tests on a real local Ray, S3 and Serve, and the
# project checks (`slow` and `gpu` tests are left out).
test: install
	$(PY) -m pytest -q

# The model library alone (stf_model, no Ray): under a minute.
test-lib: install
	$(PY) -m pytest -q tests/library

# The fault and scale tests (killed jobs and workers, resume, autoscaling, a second Ray head).
test-slow: install
	$(PY) -m pytest -q -m slow

test-gpu: install
	$(PY) -m pytest -q -m gpu

# The embedded default, end to end: synthetic corpus -> Ray Data preprocessing -> Ray Train +
# DeepSpeed pretrain -> finetune (2 CPU workers, tiny model) -> accuracy on the held-out split.
demo: install
	$(PY) -m pipelines.cli synth --set output=demo_out/corpus --set n=1000
	$(PY) -m pipelines.cli preprocess examples/preprocess-pretrain.yaml
	$(PY) -m pipelines.cli preprocess examples/preprocess-finetune.yaml
	$(PY) -m pipelines.cli train examples/train-pretrain.yaml
	$(PY) -m pipelines.cli train examples/train-finetune.yaml
	$(PY) -m pipelines.cli eval examples/eval-demo.yaml
	@$(PY) examples/demo_next.py examples/eval-demo.yaml examples/serve-local.yaml

# The demo's model behind the OpenAI API and the chat page (http://127.0.0.1:8000/); Ctrl-C stops.
serve: install
	$(PY) -m pipelines.cli serve examples/serve-local.yaml

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

bench: install
	$(PY) bench/prefill.py
	$(PY) bench/preprocess.py
	$(PY) bench/train.py
	$(PY) bench/serve.py
	$(PY) bench/infer.py
	$(PY) bench/eval.py
	$(PY) bench/storage_outage.py

# Training a 358M model on CPU (about 20 minutes on 2 CPUs): step time vs a plain loop, peak
# memory vs the pre-flight estimate, checkpoint size and resume time.
bench-scale: install
	$(PY) bench/train_scale.py

# Every job at 1,000 / 10,000 / 100,000 rows (about 45 minutes on 2 CPUs): docs/scale.png.
bench-jobs-scale: install
	$(PY) bench/scale.py

# The quality-vs-speed map (about 40 minutes on 2 CPUs): writes docs/token_budget.{md,png}.
bench-token-budget: install
	$(PY) bench/token_budget.py

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
