# syntax=docker/dockerfile:1
# tracelake jobs image: Java 17 + Python 3.11 + the locked stack of one Spark line
# + the Delta Lake JARs inside pyspark's jars folder, so spark-submit, the
# standalone master/workers and TorchDistributor all run from this one image.
#
#   docker build -f docker/jobs.Dockerfile -t tracelake-jobs:0.1.0 .           # Spark 4.2 (default)
#   docker build -f docker/jobs.Dockerfile -t tracelake-jobs:0.1.0-spark3.5 \
#     --build-arg LOCK=requirements-spark3.5.lock \
#     --build-arg DELTA_VERSION=3.3.3 --build-arg DELTA_ARTIFACT=delta-spark_2.12 \
#     --build-arg S3A_ARTIFACTS="org.apache.hadoop:hadoop-aws:3.3.4 com.amazonaws:aws-java-sdk-bundle:1.12.262" .
FROM python:3.11-slim-bookworm

# The Spark line: its lock and the matching Delta artifact (since Delta 4.1 the artifact
# name carries the Spark version: delta-spark_4.2_2.13; Delta 3.3.x: delta-spark_2.12).
ARG LOCK=requirements.lock
ARG DELTA_VERSION=4.4.0
ARG DELTA_ARTIFACT=delta-spark_4.2_2.13
# S3A for an s3a:// lake (the Makefile's HADOOP_AWS_ARTIFACTS): hadoop-aws of the Hadoop that
# pyspark ships and the AWS SDK bundle it was built with, as group:artifact:version.
ARG S3A_ARTIFACTS="org.apache.hadoop:hadoop-aws:3.5.0 software.amazon.awssdk:bundle:2.35.4 software.amazon.s3.analyticsaccelerator:analyticsaccelerator-s3:1.3.1"
ARG MAVEN_CENTRAL=https://repo1.maven.org/maven2
# The public index serves torch's CUDA build (GPU hosts); pass
# --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu for a CPU-only image.
ARG TORCH_INDEX_URL=""

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    JAVA_HOME=/usr/lib/jvm/java-17-openjdk \
    TRACELAKE_HOME=/opt/tracelake \
    TRACELAKE_PYTHON=/usr/local/bin/python \
    PYSPARK_PYTHON=/usr/local/bin/python \
    PYSPARK_DRIVER_PYTHON=/usr/local/bin/python \
    TRACELAKE_LAKE_ROOT=/lake

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# Java 17 (supported by both Spark 3.5 and 4.2), tini as PID 1, procps for Spark's scripts.
# Debian's security updates replace these package versions, so they are not pinned
# (the base image tag and requirements.lock pin everything else).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends openjdk-17-jre-headless procps tini curl ca-certificates \
    && ln -s "$(dirname "$(dirname "$(readlink -f "$(command -v java)")")")" /usr/lib/jvm/java-17-openjdk \
    && rm -rf /var/lib/apt/lists/*

RUN groupadd --system --gid 1000 tracelake \
    && useradd --system --uid 1000 --gid tracelake --create-home --home-dir /home/tracelake tracelake

WORKDIR /opt/tracelake

# The locked stack first (its own layer: rebuilt only when the lock changes).
COPY ${LOCK} pyproject.toml ./
RUN pip install --no-cache-dir uv==0.8.* \
    && if [ -n "${TORCH_INDEX_URL}" ]; then \
         uv pip install --system --no-cache --index-strategy unsafe-best-match \
           --extra-index-url "${TORCH_INDEX_URL}" -r "${LOCK}"; \
       else \
         uv pip install --system --no-cache -r "${LOCK}"; \
       fi

# Delta Lake JARs from Maven Central, checked against Maven's SHA-1, into pyspark's jars
# folder: every Spark process of this image (driver, master, workers, executors) has them.
RUN jars="$(python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')" \
    && for artifact in "${DELTA_ARTIFACT}" "delta-storage"; do \
         url="${MAVEN_CENTRAL}/io/delta/${artifact}/${DELTA_VERSION}/${artifact}-${DELTA_VERSION}.jar"; \
         curl -fsSL -o "${jars}/${artifact}-${DELTA_VERSION}.jar" "${url}"; \
         echo "$(curl -fsSL "${url}.sha1" | cut -c1-40)  ${jars}/${artifact}-${DELTA_VERSION}.jar" | sha1sum -c -; \
       done \
    && mkdir -p "$(dirname "${jars}")/conf" \
    && printf 'spark.pyspark.python %s\nspark.pyspark.driver.python %s\n' "${PYSPARK_PYTHON}" "${PYSPARK_PYTHON}" \
         > "$(dirname "${jars}")/conf/spark-defaults.conf"

# Hadoop S3A JARs the same way (group:artifact:version -> Maven Central's path).
RUN jars="$(python -c 'import os, pyspark; print(os.path.join(os.path.dirname(pyspark.__file__), "jars"))')" \
    && for coordinates in ${S3A_ARTIFACTS}; do \
         IFS=: read -r group artifact version <<< "${coordinates}"; \
         url="${MAVEN_CENTRAL}/${group//.//}/${artifact}/${version}/${artifact}-${version}.jar"; \
         curl -fsSL -o "${jars}/${artifact}-${version}.jar" "${url}"; \
         echo "$(curl -fsSL "${url}.sha1" | cut -c1-40)  ${jars}/${artifact}-${version}.jar" | sha1sum -c -; \
       done

# The project itself (no dependency resolution: the lock above is the whole stack).
COPY tracelake ./tracelake
COPY spark_jobs ./spark_jobs
COPY training ./training
COPY batch_scoring ./batch_scoring
COPY schemas ./schemas
COPY dags ./dags
COPY README.md ./
RUN pip install --no-cache-dir --no-deps -e . \
    && mkdir -p /lake /mlflow \
    && chown -R tracelake:tracelake /lake /mlflow /opt/tracelake

USER 1000:1000
VOLUME ["/lake"]
ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["tracelake", "--help"]
