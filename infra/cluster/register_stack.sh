#!/usr/bin/env bash
# ZenML stack `llmft-cluster`: every step in a pod on Kubernetes, the fine-tune step on a GPU node,
# artifacts in S3, tracking on the shared MLflow server, images in your registry.
# Needs: KUBE_CONTEXT, NAMESPACE, REGISTRY_URI (e.g. ghcr.io/acme), plus what infra/team needs.
# Then: python run.py --config configs/gpu.yaml --pipeline finetune --schedule "0 3 * * *"
#   -> the Kubernetes orchestrator supports schedules: ZenML creates a CronJob that runs the pipeline.
set -euo pipefail
: "${KUBE_CONTEXT:?}" "${NAMESPACE:?}" "${REGISTRY_URI:?}" "${MLFLOW_TRACKING_URI:?}"
zenml integration install kubernetes s3 mlflow -y
zenml orchestrator register llmft-k8s --flavor=kubernetes --kubernetes_context="$KUBE_CONTEXT" \
    --kubernetes_namespace="$NAMESPACE"
zenml container-registry register llmft-registry --flavor=default --uri="$REGISTRY_URI"
# the fine-tune step alone goes to a GPU node (configs/gpu.yaml: compute.finetune_step_operator: gpu)
zenml step-operator register gpu --flavor=kubernetes --kubernetes_context="$KUBE_CONTEXT" \
    --kubernetes_namespace="$NAMESPACE" \
    --pod_settings='{"node_selectors": {"nvidia.com/gpu.present": "true"}, "resources": {"limits": {"nvidia.com/gpu": 4}}}'
zenml stack register llmft-cluster -o llmft-k8s -a llmft-s3 -c llmft-registry -s gpu \
    -e llmft-team-tracker -r llmft-team-registry --set
echo "stack llmft-cluster active"
