# The tracking server, pinned to the client's MLflow version, with the PostgreSQL and S3 drivers.
FROM python:3.11-slim
# mlflow[auth]: the basic-auth app the compose file runs the server with
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.11 boto3==1.40.0 && mkdir -p /etc/mlflow
EXPOSE 5000
