"""How long a new route takes to serve, from the change to its first 200, for
examples/bench/compare.sh. Prints milliseconds.

    reload.py sluice DIR PORT PATH          writes DIR/new-route-N.yaml: an HTTPRoute for
                                            PATH (the folder Sluice runs from)
    reload.py nginx CONF PREFIX PORT PATH   adds `location PATH` to CONF beside its
                                            first location, then `nginx -s reload`

The clock starts before the file is written (Sluice watches its folder) or before
`nginx -s reload` runs (which parses the whole configuration itself, as an operator's
reload does). Then a new connection asks for PATH every millisecond until one answers 200.
"""

import socket
import subprocess
import sys
import time
from pathlib import Path

from configs import NGINX_PROXY  # the location body every nginx route here has


def status(port, path):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(f"GET {path} HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n".encode())
            head = s.recv(64).split(b" ")
            return int(head[1]) if len(head) > 1 else 0
    except (OSError, ValueError):
        return 0


def wait_200(port, path, start):
    while time.monotonic() - start < 30:
        if status(port, path) == 200:
            return (time.monotonic() - start) * 1000
        time.sleep(0.001)
    sys.exit(f"reload.py: {path} on port {port} did not answer 200 within 30 s")


def main(argv):
    if argv[1] == "sluice":
        folder, port, path = Path(argv[2]), int(argv[3]), argv[4]
        if status(port, path) == 200:
            sys.exit(f"reload.py: {path} already answers 200")
        name = "new-route-" + path.strip("/").replace("/", "-")
        route = (
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\n"
            f"metadata: {{name: {name}, namespace: default}}\n"
            "spec:\n  parentRefs: [{name: bench}]\n"
            f"  rules: [{{matches: [{{path: {{value: {path}}}}}], backendRefs: [{{name: backend, port: 80}}]}}]\n"
        )
        start = time.monotonic()
        (folder / f"{name}.yaml").write_text(route)
        return wait_200(port, path, start)
    if argv[1] == "nginx":
        conf, prefix, port, path = Path(argv[2]), argv[3], int(argv[4]), argv[5]
        if status(port, path) == 200:
            sys.exit(f"reload.py: {path} already answers 200")
        text = conf.read_text()
        at = text.index("    location ")
        conf.write_text(text[:at] + f"    location {path} {{ {NGINX_PROXY} }}\n" + text[at:])
        start = time.monotonic()
        subprocess.run(["nginx", "-c", str(conf), "-p", prefix, "-s", "reload"], check=True)
        return wait_200(port, path, start)
    sys.exit(f"reload.py: unknown system {argv[1]}")


if __name__ == "__main__":
    print(f"{main(sys.argv):.0f}")
