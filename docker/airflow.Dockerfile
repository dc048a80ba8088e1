# syntax=docker/dockerfile:1
# tracelake Airflow image: the jobs image (Java 17, pyspark + Delta JARs, the project)
# plus Airflow's runtime layout. Airflow 3.3.2 and the Spark provider (6.3.4 on the Spark 4.2
# line, 5.6.0 on the 3.5 line) are already in the jobs image's lock; SparkSubmitOperator runs spark-submit from this image in client
# mode, so the driver of every job runs here and its executors on the Spark workers.
#
#   docker build -f docker/jobs.Dockerfile -t tracelake-jobs:0.1.0 .
#   docker build -f docker/airflow.Dockerfile -t tracelake-airflow:0.1.0 .
ARG JOBS_IMAGE=tracelake-jobs:0.1.0
FROM ${JOBS_IMAGE}

ENV AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/tracelake/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    TRACELAKE_HOME=/opt/tracelake

USER 0:0
# Postgres driver for the metadata database of the compose deployment.
RUN pip install --no-cache-dir "psycopg2-binary==2.9.*" \
    && mkdir -p /opt/airflow/logs \
    && chown -R tracelake:tracelake /opt/airflow

USER 1000:1000
WORKDIR /opt/airflow
EXPOSE 8080
ENTRYPOINT ["/usr/bin/tini", "--", "airflow"]
CMD ["version"]
