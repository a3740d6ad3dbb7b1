# Two commands set everything up on a fresh machine:
#   make demo   train on MovieLens-100k if no model exists, export, serve on embedded Redis, query it
#   make test   run the whole test suite (what CI runs)
#   make deploy-check   build the images, run the compose stack, check it, leave nothing running
#                       (docker/check.sh; needs root or docker, minutes; not part of make test)
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test deploy-check clean

$(BIN)/cmnrec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[train,serve,dev]'
	touch $(BIN)/cmnrec

install: $(BIN)/cmnrec

demo: install
	$(BIN)/cmnrec demo

test: install
	$(BIN)/python -m pytest tests

deploy-check:
	docker/check.sh

clean:
	rm -rf $(VENV) runs artifacts .cache
