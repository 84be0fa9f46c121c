#!/usr/bin/env bash
# ZenML stack `llmft-team`: runs stay on your machine (local orchestrator), but tracking, the model
# registry and ZenML's artifacts live on shared infrastructure (infra/team/docker-compose.yml).
# Needs: MLFLOW_TRACKING_URI (the shared server) with MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
# (it runs basic auth), S3_ENDPOINT (e.g. http://minio.internal:9000) and AWS_ACCESS_KEY_ID /
# AWS_SECRET_ACCESS_KEY for ZenML's bucket (ZENML_S3_* in .env). Secrets go into ZenML secrets, never
# into the stack's plain configuration. Safe to re-run: existing secrets and components are updated.
# Then: python run.py --pipeline finetune --set compute.stack=llmft-team   (same MLFLOW_* exported)
set -euo pipefail
: "${MLFLOW_TRACKING_URI:?}" "${S3_ENDPOINT:?}" "${AWS_ACCESS_KEY_ID:?}" "${AWS_SECRET_ACCESS_KEY:?}"
: "${MLFLOW_TRACKING_USERNAME:?the server runs basic auth}" "${MLFLOW_TRACKING_PASSWORD:?the server runs basic auth}"
# only when missing (the installer re-resolves every package even when all are there)
python -c "import sys; from zenml.integrations.s3 import S3Integration as S; from zenml.integrations.mlflow import \
MlflowIntegration as M; sys.exit(not (S.check_installation() and M.check_installation()))" 2>/dev/null \
  || zenml integration install s3 mlflow -y

values=$(umask 077 && mktemp)  # secret values go through a private file, not the command line (ps)
trap 'rm -f "$values"' EXIT
secret() {  # NAME KEY=ENV_VAR...: create, or update to these values
  local name=$1; shift
  python -c 'import json, os, sys; print(json.dumps({k: os.environ[v] for k, v in (a.split("=", 1) for a in sys.argv[1:])}))' \
      "$@" > "$values"
  zenml secret create "$name" --values="@$values" >/dev/null 2>&1 || zenml secret update "$name" --values="@$values" >/dev/null
}
component() {  # TYPE NAME FLAVOR OPTION...: register, or update the options of the existing one
  local type=$1 name=$2 flavor=$3; shift 3
  if zenml "$type" describe "$name" >/dev/null 2>&1; then
    [ $# -eq 0 ] || zenml "$type" update "$name" "$@"
  else
    zenml "$type" register "$name" --flavor="$flavor" "$@"
  fi
}

secret llmft_s3 aws_access_key_id=AWS_ACCESS_KEY_ID aws_secret_access_key=AWS_SECRET_ACCESS_KEY
component artifact-store llmft-s3 s3 --path=s3://zenml --authentication_secret=llmft_s3 \
    --client_kwargs="{\"endpoint_url\": \"$S3_ENDPOINT\"}"
# the tracker's config holds references to the secret, never the credentials themselves
secret llmft_mlflow_credentials username=MLFLOW_TRACKING_USERNAME password=MLFLOW_TRACKING_PASSWORD
component experiment-tracker llmft-team-tracker mlflow --tracking_uri="$MLFLOW_TRACKING_URI" \
    --tracking_username='{{llmft_mlflow_credentials.username}}' \
    --tracking_password='{{llmft_mlflow_credentials.password}}'
component model-registry llmft-team-registry mlflow
if zenml stack describe llmft-team >/dev/null 2>&1; then
  zenml stack update llmft-team -o default -a llmft-s3 -e llmft-team-tracker -r llmft-team-registry
  zenml stack set llmft-team
else
  zenml stack register llmft-team -o default -a llmft-s3 -e llmft-team-tracker -r llmft-team-registry --set
fi
echo "stack llmft-team active; run: python run.py --pipeline finetune --set compute.stack=llmft-team"
