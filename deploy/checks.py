"""Checks of deploy/check.sh that no installed tool does (python3 with PyYAML).

  checks.py relabel prometheus.yml          the degre job's relabelling, on sample pods
  checks.py podmonitor RENDERED.yaml        a PodMonitor against the manifests it scrapes
  checks.py runbooks alerts.yml README.md   every alert's runbook_url names a README section
"""
import re
import sys

import yaml


def fail(message):
    sys.exit(f"checks.py: {message}")


def relabel(labels, rules):
    """Prometheus relabelling (keep, drop, replace); None when the target is dropped."""
    labels = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        value = rule.get("separator", ";").join(labels.get(l, "") for l in rule.get("source_labels", []))
        match = re.fullmatch(str(rule.get("regex", "(.*)")), value)  # Prometheus anchors both ends
        if action == "keep" and not match or action == "drop" and match:
            return None
        if action == "replace" and match:
            group = lambda g: match.group(int(g[1] or g[2])) or ""
            result = re.sub(r"\$(\d+)|\$\{(\d+)\}", group, rule.get("replacement", "$1"))
            if result:
                labels[rule["target_label"]] = result
            else:
                labels.pop(rule["target_label"], None)
        elif action not in ("keep", "drop", "replace"):
            fail(f"relabel action {action} is not simulated here")
    return labels


def check_relabel(config_path):
    """What Kubernetes pod discovery yields for one container port of a pod, and the address
    the degre job must scrape (None: not scraped)."""
    job = next(j for j in yaml.safe_load(open(config_path))["scrape_configs"] if j["job_name"] == "degre")
    pod = {
        "__meta_kubernetes_namespace": "prod",
        "__meta_kubernetes_pod_name": "degre-0",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": "degre",
        "__meta_kubernetes_pod_label_app_kubernetes_io_component": "server",
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": "9095",
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
    }
    cases = [
        ("IPv4 server pod", {**pod, "__address__": "10.1.2.3:50051", "__meta_kubernetes_pod_ip": "10.1.2.3"}, "10.1.2.3:9095"),
        ("IPv6 server pod", {**pod, "__address__": "[fd00:10:244::5]:50051", "__meta_kubernetes_pod_ip": "fd00:10:244::5"}, "[fd00:10:244::5]:9095"),
        ("mining Job pod", {**pod, "__address__": "10.1.2.4:80", "__meta_kubernetes_pod_ip": "10.1.2.4",
                            "__meta_kubernetes_pod_label_app_kubernetes_io_component": "mining"}, None),
    ]
    for name, target, want in cases:
        got = relabel(target, job["relabel_configs"])
        address = got and got["__address__"]
        print(f"{name}: {target['__address__']} -> {address or 'dropped'}")
        if address != want:
            fail(f"{name}: expected {want or 'dropped'}")
        if got and (got.get("namespace"), got.get("pod"), got.get("__metrics_path__")) != ("prod", "degre-0", "/metrics"):
            fail(f"{name}: namespace, pod or metrics path label wrong: {got}")


# PodMonitorSpec / PodMetricsEndpoint fields this project may use (a subset of the CRD's).
SPEC_FIELDS = {"jobLabel", "selector", "namespaceSelector", "podMetricsEndpoints", "podTargetLabels", "sampleLimit"}
ENDPOINT_FIELDS = {"port", "portNumber", "path", "interval", "scrapeTimeout", "scheme", "relabelings", "metricRelabelings", "honorLabels"}


def check_podmonitor(rendered_path):
    docs = [d for d in yaml.safe_load_all(open(rendered_path)) if d]
    monitors = [d for d in docs if d["kind"] == "PodMonitor"]
    deployment = next(d for d in docs if d["kind"] == "Deployment" and d["metadata"]["name"] == "degre")
    job = yaml.safe_load(open("deploy/k8s/base/mining-job.yaml"))
    if len(monitors) != 1:
        fail(f"{rendered_path}: expected one PodMonitor, found {len(monitors)}")
    pm = monitors[0]
    spec = pm.get("spec") or {}
    if pm.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"PodMonitor apiVersion {pm.get('apiVersion')}, expected monitoring.coreos.com/v1")
    if set(spec) - SPEC_FIELDS or not {"selector", "podMetricsEndpoints"} <= set(spec):
        fail(f"PodMonitor spec fields {sorted(spec)}: unknown or missing")
    if pm["metadata"].get("namespace") != deployment["metadata"].get("namespace"):
        fail("the PodMonitor is not in the Deployment's namespace (it selects pods in its own)")
    selector = spec["selector"].get("matchLabels") or fail("PodMonitor selector without matchLabels")
    pod = deployment["spec"]["template"]["metadata"]
    selects = lambda labels: selector.items() <= labels.items()
    if not selects(pod["labels"]):
        fail(f"PodMonitor selector {selector} does not select the server pods {pod['labels']}")
    if selects(job["spec"]["template"]["metadata"]["labels"]):
        fail(f"PodMonitor selector {selector} also selects the mining Job's pods")
    if pod["labels"].get(spec.get("jobLabel")) != "degre":
        fail('jobLabel must name a pod label whose value is "degre" (the alerts select job="degre")')
    containers = deployment["spec"]["template"]["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for c in containers for p in c.get("ports", [])}
    annotations = pod.get("annotations", {})
    for endpoint in spec["podMetricsEndpoints"]:
        if set(endpoint) - ENDPOINT_FIELDS:
            fail(f"PodMetricsEndpoint fields {sorted(endpoint)}: unknown")
        if str(ports.get(endpoint.get("port"))) != annotations.get("prometheus.io/port"):
            fail(f"endpoint port {endpoint.get('port')} is not the container port {annotations.get('prometheus.io/port')}")
        if endpoint.get("path", "/metrics") != annotations.get("prometheus.io/path"):
            fail(f"endpoint path {endpoint.get('path')} differs from prometheus.io/path")
    print(f"{rendered_path}: the PodMonitor selects the server pods only, scrapes "
          f"{[e['port'] for e in spec['podMetricsEndpoints']]} as job=degre")


def check_runbooks(alerts_path, readme_path):
    """GitHub/GitLab heading anchors: lower case, spaces to hyphens, punctuation dropped."""
    anchors = {re.sub(r"[^a-z0-9 _-]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#+ (.+)$", open(readme_path).read(), re.M)}
    for group in yaml.safe_load(open(alerts_path))["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            url = rule.get("annotations", {}).get("runbook_url", "")
            anchor = url.partition("#")[2]
            if not url.split("#")[0].endswith("/" + readme_path) or anchor not in anchors:
                fail(f"{rule['alert']}: runbook_url {url!r} names no section of {readme_path}")
            print(f"{rule['alert']}: {readme_path}#{anchor}")


if __name__ == "__main__":
    commands = {"relabel": check_relabel, "podmonitor": check_podmonitor, "runbooks": check_runbooks}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        fail(__doc__)
    commands[sys.argv[1]](*sys.argv[2:])
