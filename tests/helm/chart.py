#!/usr/bin/env python3
"""Renders helm/canaryd with Helm's own template engine and checks what comes out.

Helm's engine comes from the `helm-python-sdk` package (Helm's Go SDK behind a C ABI, so
`text/template`, sprig, `include`, `lookup`, `fail` and values.schema.json validation behave as
in `helm template`); no `helm` binary is needed. scripts/test.sh installs it, with jsonschema
and kubernetes-validate.

For the default values and each helm/canaryd/ci/*-values.yaml this
  - validates the values (defaults merged with the file, as Helm merges them) against
    values.schema.json with the `jsonschema` package and with Helm's own validator,
  - renders the chart and runs `helm lint --strict` for Kubernetes 1.29.0,
  - validates every rendered object and the chart's CRDs with kubernetes-validate (strict,
    Kubernetes 1.29.0); only the Prometheus Operator kinds have no schema there,
  - writes the objects to OUT/<case>/manifests.yaml, NOTES.txt and values.json for
    tests/e2e/helm.rs, which checks them against the real canaryd binary.
It also checks that bad values are refused by the schema and by Helm.

Usage: python3 tests/helm/chart.py OUT_DIR     (exit status 1 on any failure)
"""

import glob
import json
import os
import sys

import jsonschema
import kubernetes_validate
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHART = os.path.join(ROOT, "helm", "canaryd")
KUBE_VERSION = "1.29.0"
# Kinds kubernetes-validate has no schema for (CRDs of the Prometheus Operator): tests/e2e/helm.rs
# checks their content (promtool for the rules, field checks for the ServiceMonitor).
NO_SCHEMA = {("monitoring.coreos.com/v1", "ServiceMonitor"), ("monitoring.coreos.com/v1", "PrometheusRule")}
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "IngressClass", "CustomResourceDefinition"}

# (case, values file or None, release name, namespace)
CASES = [("default", None, "canaryd", "ingress")]
for path in sorted(glob.glob(os.path.join(CHART, "ci", "*-values.yaml"))):
    case = os.path.basename(path)[: -len("-values.yaml")]
    CASES.append((case, path, "edge" if case == "metallb" else "canaryd", f"canaryd-{case}"))

# Values the schema must refuse (and so must Helm), with why.
BAD_VALUES = [
    ({"replicaCount": "two"}, "a string replica count"),
    ({"replicas": 2}, "a misspelt top-level key"),
    ({"service": {"externalTrafficPolicy": "local"}}, "a policy Kubernetes does not know"),
    ({"service": {"metallb": {"adress-pool": "x"}}}, "a misspelt MetalLB option"),
    ({"config": {"listen": {"http": "0.0.0.0:80"}}}, "a config key the chart owns"),
    ({"config": {"timeouts": {"drain": "thirty seconds"}}}, "a duration canaryd cannot read"),
    ({"adminTokens": {"tokens": [{"name": "ci", "role": "admin", "token": "0123456789abcdef"}]}}, "a role that is neither read nor write"),
    ({"adminTokens": {"tokens": [{"name": "ci", "role": "write", "token": "short"}]}}, "a token shorter than 16 characters"),
    ({"https": {"certificates": [{"secretName": "x-tls"}]}}, "a certificate without hosts"),
    ({"podAntiAffinity": "always"}, "an unknown anti-affinity preset"),
    ({"ports": {"admin": 70000}}, "a port above 65535"),
]


class Failures:
    def __init__(self):
        self.items = []
        self.checks = 0

    def check(self, ok, what):
        self.checks += 1
        if not ok:
            self.items.append(what)
            print(f"FAIL {what}", flush=True)
        return ok


def load_yaml(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f) or {}


def documents(text):
    return [d for d in yaml.safe_load_all(text) if d]


def validate_object(fails, obj, where):
    api_kind = (obj.get("apiVersion"), obj.get("kind"))
    try:
        kubernetes_validate.validate(obj, KUBE_VERSION, strict=True)
        fails.check(True, where)
    except kubernetes_validate.SchemaNotFoundError:
        fails.check(api_kind in NO_SCHEMA, f"{where}: kubernetes-validate has no schema for {api_kind}")
    except kubernetes_validate.ValidationError as e:
        path = "/".join(str(p) for p in e.path)
        fails.check(False, f"{where}: {e.message} (at {path})")


def main(out_dir):
    import helm_python as helm  # scripts/test.sh: python3 -m pip install helm-python-sdk

    fails = Failures()
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(CHART, "values.schema.json"), encoding="utf-8") as f:
        schema = json.load(f)
    jsonschema.Draft7Validator.check_schema(schema)
    validator = jsonschema.Draft7Validator(schema)
    defaults = load_yaml(os.path.join(CHART, "values.yaml"))
    errors = [e.message for e in validator.iter_errors(defaults)]
    fails.check(not errors, f"values.yaml against values.schema.json: {errors}")

    summary = []
    with helm.Chart.load(CHART) as chart:
        crds = chart.crds
        fails.check(len(crds) == 1, f"the chart carries one CRD, not {len(crds)}")
        crd_objects = [o for c in crds for o in documents(c["data"])]
        for obj in crd_objects:
            validate_object(fails, obj, f"crds/{obj['metadata']['name']}")

        for case, path, release, namespace in CASES:
            overrides = load_yaml(path) if path else {}
            merged = chart.merge_values(overrides)
            errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(merged)]
            fails.check(not errors, f"{case}: values against values.schema.json (jsonschema): {errors}")
            try:
                chart.validate_schema(merged)
                fails.check(True, case)
            except helm.HelmError as e:
                fails.check(False, f"{case}: values against values.schema.json (Helm): {e}")

            lint = helm.lint(CHART, overrides, strict=True, namespace=namespace, kube_version=f"v{KUBE_VERSION}")
            # Severity 1 is information ("icon is recommended"); warnings and errors fail.
            bad = [m for m in lint["messages"] if m["severity"] >= 2] + lint["errors"]
            fails.check(not bad, f"{case}: helm lint --strict: {bad}")

            try:
                rendered = chart.render(overrides, name=release, namespace=namespace, is_install=True)
            except helm.HelmError as e:
                fails.check(False, f"{case}: render: {e}")
                continue
            objects, notes = [], ""
            for name in sorted(rendered):
                if name.endswith("NOTES.txt"):
                    notes = rendered[name]
                    continue
                try:
                    docs = documents(rendered[name])
                except yaml.YAMLError as e:
                    fails.check(False, f"{case}: {name} is not YAML: {e}")
                    continue
                for obj in docs:
                    obj_name = obj.get("metadata", {}).get("name")
                    where = f"{case}: {name}: {obj.get('kind')} {obj_name}"
                    validate_object(fails, obj, where)
                    if obj.get("kind") in CLUSTER_SCOPED:
                        fails.check("namespace" not in obj["metadata"], f"{where}: cluster-scoped with a namespace")
                    elif obj.get("kind") in ("Role", "RoleBinding") and obj_name.endswith("-tls"):
                        # Secrets granted by name live in their own namespaces (tests/e2e/helm.rs).
                        fails.check(obj["metadata"].get("namespace"), f"{where}: no namespace")
                    else:
                        fails.check(obj["metadata"].get("namespace") == namespace,
                                    f"{where}: namespace {obj['metadata'].get('namespace')!r}, not the release's")
                    objects.append(obj)
            fails.check("canaryctl status" in notes, f"{case}: NOTES.txt does not say how to run canaryctl")
            case_dir = os.path.join(out_dir, case)
            os.makedirs(case_dir, exist_ok=True)
            with open(os.path.join(case_dir, "manifests.yaml"), "w", encoding="utf-8") as f:
                yaml.safe_dump_all(crd_objects + objects, f, sort_keys=False)
            with open(os.path.join(case_dir, "NOTES.txt"), "w", encoding="utf-8") as f:
                f.write(notes)
            with open(os.path.join(case_dir, "values.json"), "w", encoding="utf-8") as f:
                json.dump(merged, f, indent=1)
            summary.append({"case": case, "release": release, "namespace": namespace, "objects": len(objects)})
            print(f"{case}: {len(objects)} objects rendered and valid for Kubernetes {KUBE_VERSION}", flush=True)

        for bad, why in BAD_VALUES:
            merged = chart.merge_values(bad)
            fails.check(not validator.is_valid(merged), f"values.schema.json accepts {why}: {bad}")
            try:
                chart.render(bad, name="canaryd", namespace="ingress")
                fails.check(False, f"Helm renders {why}: {bad}")
            except helm.HelmValuesError:
                fails.check(True, why)
        # A grace period shorter than preStop sleep + drain would cut the drain: refused.
        try:
            chart.render({"terminationGracePeriodSeconds": 35}, name="canaryd", namespace="ingress")
            fails.check(False, "Helm renders a grace period shorter than preStop sleep plus drain")
        except helm.HelmRenderError as e:
            fails.check("terminationGracePeriodSeconds (35) must exceed" in str(e), f"unexpected render error: {e}")

    with open(os.path.join(out_dir, "cases.json"), "w", encoding="utf-8") as f:
        json.dump(summary, f, indent=1)
    print(f"helm {helm.helm_sdk_version()} (helm-python-sdk {helm.__version__}), kubernetes-validate "
          f"{KUBE_VERSION} --strict: {fails.checks - len(fails.items)} passed, {len(fails.items)} failed")
    return 1 if fails.items else 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    sys.exit(main(sys.argv[1]))
