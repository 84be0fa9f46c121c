#!/usr/bin/env bash
# ZenML stack `llmft-team`: runs stay on your machine (local orchestrator), but tracking, the model
# registry and ZenML's artifacts live on shared infrastructure (infra/team/docker-compose.yml).
# Needs: MLFLOW_TRACKING_URI (the shared server), S3_ENDPOINT (e.g. http://minio.internal:9000),
# AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for ZenML's artifact bucket. Secrets go into a ZenML
# secret, never into the stack's plain configuration.
set -euo pipefail
: "${MLFLOW_TRACKING_URI:?}" "${S3_ENDPOINT:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
zenml integration install s3 mlflow -y
zenml secret create llmft_s3 --aws_access_key_id="$AWS_ACCESS_KEY_ID" \
    --aws_secret_access_key="$AWS_SECRET_ACCESS_KEY" 2>/dev/null || true
zenml artifact-store register llmft-s3 --flavor=s3 --path=s3://zenml \
    --authentication_secret=llmft_s3 --client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}"
# the tracker's config holds references to the secret, never the credentials themselves
: "${MLFLOW_TRACKING_USERNAME:?the server runs basic auth}" "${MLFLOW_TRACKING_PASSWORD:?the server runs basic auth}"
zenml secret create llmft_mlflow_credentials --username="$MLFLOW_TRACKING_USERNAME" \
    --password="$MLFLOW_TRACKING_PASSWORD" 2>/dev/null \
  || zenml secret update llmft_mlflow_credentials --username="$MLFLOW_TRACKING_USERNAME" \
       --password="$MLFLOW_TRACKING_PASSWORD"
zenml experiment-tracker register llmft-team-tracker --flavor=mlflow --tracking_uri="$MLFLOW_TRACKING_URI" \
    --tracking_username='{{llmft_mlflow_credentials.username}}' \
    --tracking_password='{{llmft_mlflow_credentials.password}}'
zenml model-registry register llmft-team-registry --flavor=mlflow
zenml stack register llmft-team -o default -a llmft-s3 -e llmft-team-tracker -r llmft-team-registry --set
echo "stack llmft-team active; run: python run.py --pipeline finetune"
