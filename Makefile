# keras-sam: `make demo` runs the demo, `make flatness` measures how flat its
# AdamW and SAM models are, `make test` the whole suite on the tensorflow, jax
# and torch backends in turn, `make docs` the documentation site.

VENV ?= .venv
PY := $(VENV)/bin/python
BACKENDS ?= tensorflow jax torch
# pytest-xdist workers per backend run ("0": in the pytest process); a test
# file goes to one worker, so its module fixtures run once.
WORKERS ?= 2
# The CPU build of torch; an unpinned torch pulls CUDA packages.
TORCH_PIN ?= torch==2.13.0
# tf-keras of tensorflow-cpu's minor version (tests/test_compat.py).
TF_KERAS_PIN ?= tf-keras==2.21.0

.PHONY: install test demo flatness lint docs

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q '$(TORCH_PIN)' -e '.[all]'
	# keras-hub for tests/test_real_models.py, without its tensorflow-text
	# (which pulls the full tensorflow over tensorflow-cpu; ViTBackbone does
	# not use it). pip warns about the dependencies it did not install.
	$(PY) -m pip install -q --no-deps 'keras-hub==0.32.0'
	$(PY) -m pip install -q regex tokenizers
	# tf-keras for tests/test_compat.py (tf-keras's SAM against ours). It
	# requires `tensorflow` of its minor version, which would install the
	# full wheel over tensorflow-cpu: --no-deps, and TF_KERAS_PIN follows
	# the tensorflow-cpu that `.[all]` installed (2.21).
	$(PY) -m pip install -q --no-deps '$(TF_KERAS_PIN)'
	touch $@

# Headless Chromium for tests/test_docs_offline.py (the site opened with no
# network): Debian's `chromium`, installed only when missing (apt-get, as
# root); where it cannot be installed, those tests skip and say why.
install: $(VENV)/.installed
	@command -v chromium >/dev/null || { apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
		--no-install-recommends chromium; } || \
		echo "chromium not installed: tests/test_docs_offline.py skips"

# The documentation site (mkdocs.yml), built strictly: any warning (a broken
# link or anchor, a docstring that griffe cannot parse) fails the target.
# mkdocstrings reads keras_sam statically, so no backend is imported.
DOCS_SITE ?= site

docs: install
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir $(DOCS_SITE)

# The docs build, then one pytest run per backend; any failure (or a run that
# collects no test: pytest exits 5) fails the target.
test: install docs
	@for backend in $(BACKENDS); do \
		echo "=== KERAS_BACKEND=$$backend"; \
		KERAS_BACKEND=$$backend $(PY) -m pytest -q -n $(WORKERS) --dist loadfile tests || exit $$?; \
	done

# The example ViT on digits with 30% wrong labels: the base optimizers and six
# methods; writes keras_sam_demo.png. On JAX (the fastest backend on CPU)
# unless KERAS_BACKEND says otherwise. Arguments: make demo ARGS="--seeds 2".
demo: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(VENV)/bin/keras-sam demo $(ARGS)

# AdamW's and SAM's models of the demo's label-noise run: top Hessian
# eigenvalue, trace, m-sharpness, and keras_sam_flatness.png (the loss
# between them and around each). Arguments: make flatness ARGS="--epochs 20".
flatness: install
	KERAS_BACKEND=$${KERAS_BACKEND:-jax} $(VENV)/bin/keras-sam flatness $(ARGS)

lint: install
	$(PY) -m ruff check keras_sam tests benchmarks examples
	$(PY) -m ruff format --check keras_sam tests benchmarks examples
