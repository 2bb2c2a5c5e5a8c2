"""Deployment files through real engines, for tests/tests/deploy.rs and for regenerating
deploy/kubernetes/energy-agent.yaml.

  deploy.py render CHART NAME NAMESPACE [VALUES_JSON]
      the chart rendered by Helm's own engine (the Helm v4 Go SDK, through the
      helm-python-sdk wheel: no helm binary), as `helm template` orders it
  deploy.py lint CHART            helm lint --strict's report, as JSON
  deploy.py json FILE...          every YAML document of the files, as one JSON list
  deploy.py dockerfile FILE       the Dockerfile's instructions parsed by BuildKit's
                                  parser (the `dockerfile` wheel), as JSON

Regenerate the plain manifests after changing the chart:
  target/py-venv/bin/python tests/py/deploy.py render deploy/helm/energy-agent \
      energy-agent energy > deploy/kubernetes/energy-agent.yaml
"""
import json
import sys

import yaml

# Helm's install order (pkg/release/util/kind_sorter.go), for the kinds the chart has.
ORDER = ["Namespace", "ServiceAccount", "ConfigMap", "ClusterRole", "ClusterRoleBinding",
         "Service", "DaemonSet"]

HEADER = """# energy-agent: the Helm chart deploy/helm/energy-agent rendered with its default
# values (release energy-agent, namespace energy) by tests/py/deploy.py; do not edit:
# change the chart and render again (tests/tests/deploy.rs checks this file matches).
# Install: kubectl apply -f deploy/kubernetes/namespace.yaml -f deploy/kubernetes/energy-agent.yaml
"""


def render(chart, name, namespace, values=None):
    import helm_python as helm
    with helm.Chart.load(chart) as c:
        manifests = c.render(values, name=name, namespace=namespace, is_install=True)
    docs = []
    for path in sorted(manifests):
        if not path.endswith(".yaml"):
            continue
        for text in manifests[path].split("\n---\n"):
            body = yaml.safe_load(text)
            if body:
                docs.append((ORDER.index(body["kind"]), path, text.strip("\n")))
    docs.sort(key=lambda d: (d[0], d[1]))
    out = HEADER
    for _, path, text in docs:
        out += f"---\n# Source: {path}\n{text}\n"
    return out


def main(argv):
    cmd, args = argv[1], argv[2:]
    if cmd == "render":
        values = json.loads(args[3]) if len(args) > 3 else None
        sys.stdout.write(render(args[0], args[1], args[2], values))
    elif cmd == "lint":
        import helm_python as helm
        print(json.dumps(helm.lint(args[0], strict=True)))
    elif cmd == "json":
        docs = []
        for path in args:
            with open(path) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d is not None)
        print(json.dumps(docs))
    elif cmd == "dockerfile":
        import dockerfile
        print(json.dumps([{"cmd": c.cmd, "flags": list(c.flags), "value": list(c.value)}
                          for c in dockerfile.parse_file(args[0])]))
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main(sys.argv)
