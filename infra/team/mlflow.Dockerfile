# The tracking server, pinned to the client's MLflow version, with the PostgreSQL and S3 drivers.
FROM python:3.11-slim
RUN pip install --no-cache-dir mlflow==3.17.2 psycopg2-binary==2.9.11 boto3==1.40.0
EXPOSE 5000
