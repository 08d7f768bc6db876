# syntax=docker/dockerfile:1.7
# MLflow tracking server for docker/compose.tracking.yml: PostgreSQL backend store (psycopg2) and an
# S3-compatible artifact store (boto3). Same MLflow minor as the project's pin, so client and server agree.
FROM python:3.11-slim-bookworm

ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 \
    MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false
RUN pip install "mlflow==3.17.2" "psycopg2-binary==2.9.11" "boto3==1.43.11" \
 && useradd --create-home --uid 1000 mlflow
USER mlflow
WORKDIR /home/mlflow
EXPOSE 5000
# /health answers without touching the stores; python is used because the slim image has no curl/wget
HEALTHCHECK --interval=15s --timeout=5s --start-period=90s --retries=5 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5000/health', timeout=4)"]
ENTRYPOINT ["mlflow", "server"]
