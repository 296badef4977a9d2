#!/usr/bin/env bash
# `just test`: renders the Kubernetes manifests (kustomize through kubectl) and validates every
# resource against the Kubernetes schemas (kubernetes-validate, strict: unknown fields fail) of
# the oldest version we support (1.28: `grpc:` probes are GA since 1.27) and the newest the
# validator ships. A broken copy must fail too, so a validator that passes everything is noticed.
set -euo pipefail
cd "$(dirname "$0")/../.."
versions=(1.28.0 1.37.0)
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT

for dir in deploy/k8s/base deploy/k8s/overlays/dev; do
  name="${dir//\//_}"
  kubectl kustomize "$dir" > "$out/$name.yaml"
  kinds="$(grep -c '^kind:' "$out/$name.yaml")"
  for version in "${versions[@]}"; do
    if ! kubernetes-validate --strict --quiet -k "$version" "$out/$name.yaml"; then
      echo "validate-k8s: $dir does not validate against Kubernetes $version" >&2
      exit 1
    fi
  done
  echo "validate-k8s: $dir: $kinds resources valid against Kubernetes ${versions[*]}" >&2
done

sed 's/^\(  *\)replicas:/\1replicaz:/' "$out/deploy_k8s_base.yaml" > "$out/broken.yaml"
if kubernetes-validate --strict --quiet -k "${versions[0]}" "$out/broken.yaml" >/dev/null 2>&1; then
  echo "validate-k8s: a misspelled field passed validation; the validator checks nothing" >&2
  exit 1
fi
