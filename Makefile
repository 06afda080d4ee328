# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install the package (CPU torch 2.13.0) on first use; `make test` adds the extras.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUDGET ?= 0.5x
# The machine's local CPU torch wheel, where it has one: torch==2.13.0 resolves to it.
FIND_LINKS := $(if $(wildcard /opt/wheels/torch-*.whl),--find-links /opt/wheels)

# uv installs in seconds what pip takes a minute and a half for (measured on a 2-core machine: the
# core package 10 s against 87 s); pip stays the fallback wherever uv cannot be had or fails.
# --compile-bytecode writes the .pyc files once, at install (pip does so by default, uv does not):
# where PYTHONDONTWRITEBYTECODE is set, as on these machines, every process would otherwise compile
# torch's Python source again on import, about 15 s of each `compress` run (62 -> 47 s for a
# 1-epoch run of the demo), for 15 s once at install.
define install
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	($(BIN)/pip install -q uv 2>/dev/null \
		&& $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python $(FIND_LINKS) -e '$(1)') \
		|| $(BIN)/pip install -q -e '$(1)'
endef

# the demo needs the package alone; the tests need every extra (their tests run rather than skip)
$(BIN)/.core: pyproject.toml
	$(call install,.)
	touch $@

$(BIN)/.dev: pyproject.toml
	$(call install,.[dev])
	touch $@ $(BIN)/.core

install: $(BIN)/.core

teacher.pt: | $(BIN)/.core
	$(BIN)/compress example-teacher --out teacher.pt

# Half the example teacher's own measured latency: forces compression on a fast host and a slow one alike.
demo: $(BIN)/.core teacher.pt
	$(BIN)/compress --teacher teacher.pt --budget $(BUDGET) --int8

test: $(BIN)/.dev
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs teacher.pt *.egg-info
