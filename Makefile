# Two commands for a fresh machine: `make demo` and `make test` (README.md).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
ME := $(VENV)/bin/medsam-edge
# Machines without an NVIDIA GPU get torch's small CPU build (on these machines
# `torch==2.13.0` comes from local disk in seconds; an unpinned torch pulls a CUDA build
# of several GB). Where nvidia-smi exists nothing is pinned, so GPU users keep CUDA.
# Override with `make TORCH_PIN=torch==X.Y.Z` or `make TORCH_PIN=`.
TORCH_PIN ?= $(if $(shell command -v nvidia-smi 2>/dev/null),,torch==2.13.0)
MODELS ?= models
DEMO_OUT ?= out/demo
# A chamber of the heart in pydicom's bundled echocardiography cine (320x240, 30 frames).
DEMO_SOURCE ?= pydicom:examples_ybr_color.dcm
DEMO_BOX ?= 160,60,210,125
# Benchmarks read real clips from ../shared/data (see medsam_edge.bench.standard); ViT-B uses your
# checkpoint if MEDSAM_CKPT is set, random weights of the same shape otherwise.
DATA ?= ../shared/data
MEDSAM_CKPT ?=
BENCH_FLAGS ?= --quick

.PHONY: setup test test-fast typecheck demo bench docs clean

setup: $(VENV)/.setup-done

$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	printf '%s\n' $(TORCH_PIN) > $(VENV)/constraints.txt
	$(PY) -m pip install -q -c $(VENV)/constraints.txt -e '.[export,bench,test,triton,openvino,viewer]'
	touch $@

# Every test (CI): at most 12 min of pytest on an idle 2-core machine (docs/testing.md).
test: setup
	$(PY) -m pytest -q -ra --durations=15

# The logic without the slow, integration and fuzz markers: at most 5 min on 2 cores.
test-fast: setup
	$(PY) -m pytest -q -ra -m "not slow and not integration and not fuzz"

# The TensorRT and CUDA code checked against NVIDIA's own APIs, no GPU needed: tensorrt-stubs
# 10.13 (two syntax errors patched: a parameter named `in`, a non-default after defaults) and
# mypy. The stubs go to .typecheck/, not the venv: installed there they would pass for TensorRT.
STUBS := .typecheck
typecheck: setup
	$(PY) -m pip install -q -c $(VENV)/constraints.txt mypy cuda-bindings polygraphy
	$(PY) -m pip install -q --no-deps --upgrade --target $(STUBS) tensorrt-stubs==10.13.0.35.1
	sed -i -E 's/\bin: list\[/in_: list[/; s/power: Weights = None, channel_axis: int\)/power: Weights = None, channel_axis: int = ...)/' \
		$(STUBS)/tensorrt_bindings/tensorrt.pyi
	MYPYPATH=$(STUBS) $(PY) -m mypy

$(MODELS)/lite_medsam/manifest.json: | setup
	$(ME) export --model lite_medsam --out $(MODELS)/lite_medsam --overwrite

demo: setup $(MODELS)/lite_medsam/manifest.json
	$(ME) run $(MODELS)/lite_medsam $(DEMO_SOURCE) --box $(DEMO_BOX) --masks npz --out $(DEMO_OUT)

$(MODELS)/medsam_vit_b/manifest.json: | setup
	$(ME) export --model medsam_vit_b $(if $(MEDSAM_CKPT),--checkpoint $(MEDSAM_CKPT),--random-init) \
		--out $(MODELS)/medsam_vit_b --overwrite

# Measures, then regenerates BENCHMARKS.md (about 11 min with --quick on 2 cores).
bench: setup $(MODELS)/lite_medsam/manifest.json $(MODELS)/medsam_vit_b/manifest.json
	$(PY) -m medsam_edge.bench.standard --lite $(MODELS)/lite_medsam --vitb $(MODELS)/medsam_vit_b --data $(DATA) $(BENCH_FLAGS)

# The flag tables in README.md and docs/*.md, rewritten from each subcommand's --help
# (tests/test_docs.py fails until this has run after a flag changes).
docs: setup
	$(PY) -m medsam_edge.docs_flags

clean:
	rm -rf $(MODELS) out .pytest_cache
