# featcodec: `make install` then `make demo`; `make test` runs the test suite.
VENV ?= .venv
PY := $(VENV)/bin/python
FEATCODEC := $(VENV)/bin/featcodec
DEMO := examples/demo

.PHONY: install demo test lint bench clean

$(PY):
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

install: $(PY)
	$(PY) -m pip install --quiet -e '.[test]'

demo: $(PY)
	@rm -rf $(DEMO) && mkdir -p $(DEMO)
	@$(PY) examples/make_demo_input.py $(DEMO)/acts.npy
	$(FEATCODEC) encode $(DEMO)/acts.npy -o $(DEMO)/raw.fcb -m raw
	$(FEATCODEC) encode $(DEMO)/acts.npy -o $(DEMO)/raw16z.fcb -m raw --dtype float16 --zstd 19
	$(FEATCODEC) encode $(DEMO)/acts.npy -o $(DEMO)/uniform8.fcb -m uniform --levels 8 --clip 0,1.5
	$(FEATCODEC) decode $(DEMO)/uniform8.fcb -o $(DEMO)/uniform8.npy
	$(FEATCODEC) info $(DEMO)/uniform8.fcb
	@ls -l $(DEMO)

test: $(PY)
	$(PY) -m pytest -q

lint: $(PY)
	$(PY) -m ruff check featcodec tests examples

bench: $(PY)
	$(FEATCODEC) --help >/dev/null

clean:
	rm -rf $(DEMO) build *.egg-info .pytest_cache
