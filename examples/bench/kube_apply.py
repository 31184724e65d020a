"""Creates YAML objects on an API server, for examples/bench/kube_memory.sh: what
`kubectl create -f` does for the kinds the benchmark uses, over the REST API with a
bearer token. CustomResourceDefinitions first (from the files that hold them), then
every other object of a kind it knows (built-in kinds the benchmark uses, and those
of the CRDs); an object the server does not serve yet (its CRD is still being
established) is tried again for up to 60 s.

    kube_apply.py SERVER TOKEN CA_FILE FILE...
"""

import json
import ssl
import sys
import time
import urllib.error
import urllib.request

import yaml

# Built-in kinds: (API path, plural, namespaced).
CORE = {
    ("v1", "Service"): ("/api/v1", "services", True),
    ("v1", "Namespace"): ("/api/v1", "namespaces", False),
    ("v1", "Secret"): ("/api/v1", "secrets", True),
    ("v1", "ConfigMap"): ("/api/v1", "configmaps", True),
    ("discovery.k8s.io/v1", "EndpointSlice"): ("/apis/discovery.k8s.io/v1", "endpointslices", True),
    ("apiextensions.k8s.io/v1", "CustomResourceDefinition"): (
        "/apis/apiextensions.k8s.io/v1",
        "customresourcedefinitions",
        False,
    ),
}


def main(argv):
    server, token, ca = argv[1], argv[2], argv[3]
    ctx = ssl.create_default_context(cafile=ca)
    docs = []
    for path in argv[4:]:
        with open(path) as f:
            docs.extend(d for d in yaml.safe_load_all(f) if d)
    kinds = dict(CORE)
    for d in docs:
        if d["kind"] == "CustomResourceDefinition":
            spec = d["spec"]
            for v in spec["versions"]:
                if v.get("served"):
                    kinds[(f"{spec['group']}/{v['name']}", spec["names"]["kind"])] = (
                        f"/apis/{spec['group']}/{v['name']}",
                        spec["names"]["plural"],
                        spec["scope"] == "Namespaced",
                    )

    def create(obj):
        base, plural, namespaced = kinds[(obj["apiVersion"], obj["kind"])]
        ns = obj.setdefault("metadata", {}).get("namespace", "default") if namespaced else None
        url = f"{server}{base}/namespaces/{ns}/{plural}" if namespaced else f"{server}{base}/{plural}"
        req = urllib.request.Request(
            url,
            data=json.dumps(obj).encode(),
            method="POST",
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(req, context=ctx).read()
                return
            except urllib.error.HTTPError as e:
                if e.code == 409:  # already there
                    return
                if e.code == 404 and time.monotonic() < deadline:  # CRD not served yet
                    time.sleep(0.2)
                    continue
                sys.exit(f"kube_apply.py: {obj['kind']} {obj['metadata'].get('name')}: {e.code} {e.read()[:300]!r}")

    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    for d in crds:
        create(d)
    others = [d for d in docs if d["kind"] != "CustomResourceDefinition"]
    # The Gateway API's CRD files also carry a ValidatingAdmissionPolicy, which the
    # benchmark does not need.
    skipped = sorted({d["kind"] for d in others if (d["apiVersion"], d["kind"]) not in kinds})
    others = [d for d in others if (d["apiVersion"], d["kind"]) in kinds]
    for d in others:
        create(d)
    if skipped:
        print(f"kube_apply.py: skipped kinds {', '.join(skipped)}", file=sys.stderr)
    print(f"kube_apply.py: {len(crds)} CRDs, {len(others)} objects", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
