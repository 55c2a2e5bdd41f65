# `make test` works on a fresh clone: it creates .venv when absent, installs the package with its
# test extras (again whenever setup.cfg changes) and the Debian Fashion-MNIST package, then runs
# pytest. `make demo` runs the README's main job.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz

.PHONY: test lint install data demo demo-v2 bench bench-v2 clean folder-domain artwork libcairo
FOLDER_DOMAIN := runs/folder_domains/fashion_mnist_motion_blur_3_jpeg

$(STAMP): setup.cfg pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -e '.[test]'
	$(VENV)/bin/pip install --quiet --no-deps animal-mnist==0.4
	touch $(STAMP)

install: $(STAMP)

# Fashion-MNIST ships as a Debian package (no downloads at run time).
data: $(FASHION_MNIST)
$(FASHION_MNIST):
	@if command -v apt-get >/dev/null 2>&1; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  echo "Fashion-MNIST is missing: install the Debian package dataset-fashion-mnist" \
	       "(apt-get install dataset-fashion-mnist) or copy its IDX files to $(dir $(FASHION_MNIST))"; \
	  exit 1; \
	fi

# cairosvg draws the SVG artwork through the system's cairo library.
libcairo:
	@ldconfig -p 2>/dev/null | grep -q 'libcairo.so.2 ' || { \
	  if command -v apt-get >/dev/null 2>&1; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libcairo2; \
	  else echo "libcairo2 is missing: install it (apt-get install libcairo2)"; exit 1; fi; }

# Emoji artwork (world v3): fetch the pinned packages, render every style, write the manifest.
artwork: $(STAMP) libcairo
	$(VENV)/bin/python -m metatpt_jax.data.artwork.build

test: $(STAMP) data libcairo
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

# ruff (configured in ruff.toml), then the file and function size limits of tools/check_shape.py.
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python tools/check_shape.py

# The main job, world v3: fetches and renders the emoji artwork on first use (cached), then
# zero-shot, TPT and MetaTPT on the four plain test domains (configs/bench_v3.py:demo).
demo: $(STAMP) libcairo
	$(VENV)/bin/metatpt-bench --config configs/bench_v3.py:demo

# World v2's demo (Fashion-MNIST / Animal-MNIST under synthetic shifts).
demo-v2: $(STAMP) data
	$(VENV)/bin/metatpt-bench --config configs/bench_v2.py:demo

# The main benchmark: world v3's test domains at published settings, 3 seeds (the README's
# figures; resumable).
bench: $(STAMP) libcairo
	$(VENV)/bin/metatpt-bench --config configs/bench_v3.py:test

# World v2's benchmark (the second world).
bench-v2: $(STAMP) data $(FOLDER_DOMAIN)
	$(VENV)/bin/metatpt-bench --config configs/bench_v2.py:test

# The image-folder test domain of configs/bench_v2.py:test (3,000 JPEG files, 12 MB).
folder-domain: $(FOLDER_DOMAIN)
$(FOLDER_DOMAIN): | $(STAMP) data
	$(VENV)/bin/python -m metatpt_jax.data.export --domain=fashion_mnist:motion_blur:3 \
	  --num_images=3000 --size=64 --quality=60 --out=$(FOLDER_DOMAIN)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
