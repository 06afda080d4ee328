# Two entry points for a fresh machine: `make demo` and `make test`.
# Both create .venv and install the package (CPU torch 2.13.0) on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUDGET ?= 0.5x

.PHONY: demo test install bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

install: $(BIN)/.installed

teacher.pt: | $(BIN)/.installed
	$(BIN)/compress example-teacher --out teacher.pt

# Half the example teacher's own measured latency: forces compression on a fast host and a slow one alike.
demo: $(BIN)/.installed teacher.pt
	$(BIN)/compress --teacher teacher.pt --budget $(BUDGET) --int8

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q -n 2

clean:
	rm -rf $(VENV) runs teacher.pt *.egg-info
