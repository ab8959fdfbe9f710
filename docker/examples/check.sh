#!/usr/bin/env bash
# Checks the orchestrator examples with the tools that install here: docker-compose
# (Debian's, which validates against the compose schema) and kubernetes-validate (PyPI,
# the Kubernetes schemas, offline). Installs what is missing.
set -euo pipefail
cd "$(dirname "$0")"

if ! command -v docker-compose >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null
fi
if ! command -v kubernetes-validate >/dev/null; then
    pip install --quiet --disable-pip-version-check kubernetes-validate
fi

docker-compose -f compose.yaml config --quiet
echo "ok    compose.yaml: valid for docker-compose $(docker-compose version --short)"
kubernetes-validate --strict kubernetes.yaml
echo "ok    kubernetes.yaml: valid"
