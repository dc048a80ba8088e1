# tracelake: `make demo` sets everything up and runs the pipeline; `make test` runs the tests.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tracelake-setup
# The Delta JARs must match the delta-spark Python package pinned in pyproject.toml.
DELTA_VERSION := $(shell sed -n 's/.*"delta-spark==\([0-9.]*\)".*/\1/p' pyproject.toml)
SCALA_VERSION := 2.12
JARS_DIR := .jars
DEMO_ARGS ?=

.PHONY: setup demo test bench clean-lake

setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock
	@command -v java >/dev/null || { echo "Java 17 is required (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch the Delta JARs (apt-get install maven)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	# requirements.lock pins the whole resolved stack (uv pip compile of pyproject.toml).
	$(VENV)/bin/uv pip install --python $(PY) -r requirements.lock -e '.[airflow,dev]'
	# Delta Lake JARs from Maven Central, into pyspark's own jars folder so that
	# spark-submit and standalone workers started from this install have them.
	mkdir -p $(JARS_DIR)
	for artifact in io.delta:delta-spark_$(SCALA_VERSION):$(DELTA_VERSION) io.delta:delta-storage:$(DELTA_VERSION); do \
	  mvn -q dependency:copy -Dartifact=$$artifact -DoutputDirectory=$(JARS_DIR) || exit 1; \
	done
	# (pyspark's folder is looked up when this line runs: make expands a recipe before running it.)
	pyspark_home=$$($(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') && \
	  test -d "$$pyspark_home/jars" && cp $(JARS_DIR)/delta-*.jar "$$pyspark_home/jars/" && \
	  mkdir -p "$$pyspark_home/conf" && \
	  printf 'spark.pyspark.python %s\nspark.pyspark.driver.python %s\n' "$(abspath $(PY))" "$(abspath $(PY))" \
	    > "$$pyspark_home/conf/spark-defaults.conf"
	touch $(STAMP)

demo: setup
	$(VENV)/bin/tracelake demo $(DEMO_ARGS)

test: setup
	$(PY) -m pytest

bench: setup
	@echo "see benchmarks/README.md for each benchmark's command"

clean-lake:
	rm -rf lake
