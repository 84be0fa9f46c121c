# The tracking server, pinned to the client's MLflow version, with the PostgreSQL and S3 drivers; the
# versions tests/test_team_stack.py runs the server with (the `team` extra in pyproject.toml).
FROM python:3.11-slim
# mlflow[auth]: the basic-auth app the compose file runs the server with
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" psycopg2-binary==2.9.13 boto3==1.43.117 && mkdir -p /etc/mlflow
EXPOSE 5000
