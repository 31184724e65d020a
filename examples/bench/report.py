"""Writes docs/performance.md and its plots from examples/bench/compare.sh's results.

    python examples/bench/report.py target/bench/compare

Medians over the rounds; every ratio is taken within a round (the targets of a round
ran interleaved, minutes apart at most) and its median is printed.
"""

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OUT = Path(sys.argv[1])
DOCS = Path(__file__).resolve().parents[2] / "docs"
PLOTS = DOCS / "performance"
PLOTS.mkdir(parents=True, exist_ok=True)

machine = dict(
    line.rstrip("\n").split("\t", 1) for line in (OUT / "machine.tsv").open()
)
rows = list(csv.DictReader((OUT / "results.tsv").open(), delimiter="\t"))
NUM = ["rps", "p50_ms", "p75_ms", "p90_ms", "p99_ms", "mean_ms", "cpu_us_per_req", "idle_rss_kb"]
for r in rows:
    for k in NUM:
        r[k] = float(r.get(k, "nan"))
    r["non2xx"] = int(r["non2xx"])

by = defaultdict(list)  # (scenario, target) -> rows, one per round
for r in rows:
    by[(r["scenario"], r["target"])].append(r)


def med(scenario, target, key):
    return statistics.median(r[key] for r in by[(scenario, target)])


def ratio(scenario, target, base, key, base_scenario=None):
    """Median over rounds of target/base, each taken within its round."""
    b = {r["round"]: r[key] for r in by[(base_scenario or scenario, base)]}
    vals = [r[key] / b[r["round"]] for r in by[(scenario, target)] if b.get(r["round"])]
    return statistics.median(vals) if vals else float("nan")


def targets(scenario):
    seen = []
    for r in rows:
        if r["scenario"] == scenario and r["target"] not in seen:
            seen.append(r["target"])
    return seen


reloads = defaultdict(list)  # (system, routes) -> ms, one per round
if (OUT / "reload.tsv").exists():
    for r in csv.DictReader((OUT / "reload.tsv").open(), delimiter="\t"):
        reloads[(r["system"], int(r["routes"]))].append(float(r["ms"]))
scenarios = {r["scenario"] for r in rows}
ROUTE_COUNTS = sorted(int(s.split()[1]) for s in scenarios if s.startswith("routes "))
rounds = len({r["round"] for r in rows})
errors = sum(r["non2xx"] for r in rows)
caption = (
    f"{machine['machine']}; Linux {machine['kernel']}; nginx {machine['nginx']}, "
    f"haproxy {machine['haproxy']}, Envoy {machine['envoy']}, Traefik {machine['traefik']}, "
    f"Sluice {machine['sluice']}, wrk {machine['wrk']}; `{machine['command']}`, "
    f"{machine['date']}; medians of {rounds} interleaved rounds"
)
SYSTEMS = ["nginx", "haproxy", "sluice", "envoy", "traefik"]
# Sections older versions of this script wrote, dropped rather than kept as hand-written.
OBSOLETE = {"Not covered here yet"}
COLOURS = {
    "nginx": "#4c72b0",
    "haproxy": "#8172b3",
    "sluice": "#dd8452",
    "envoy": "#55a868",
    "traefik": "#c44e52",
    "backend": "#999999",
}


def colour(target):
    return COLOURS.get(target.split()[0], "#999999")


def figure(name, title, draw, width=9.0, height=4.2):
    fig = plt.figure(figsize=(width, height))
    draw(fig)
    fig.suptitle(title, fontsize=11)
    fig.text(0.01, 0.005, caption.replace("`", ""), fontsize=5.5, wrap=True)
    fig.tight_layout(rect=(0, 0.05, 1, 0.95))
    fig.savefig(PLOTS / name, dpi=110)
    plt.close(fig)


# --- plots
plain = [t for t in targets("plain") if t != "backend"]
headers = targets("headers")
workers = targets("workers")


def draw_plain(fig):
    a, b = fig.subplots(1, 2)
    a.bar(plain, [med("plain", t, "rps") / 1000 for t in plain], color=[colour(t) for t in plain])
    a.set_ylabel("thousand requests/s (higher is better)")
    b.bar(plain, [med("plain", t, "cpu_us_per_req") for t in plain], color=[colour(t) for t in plain])
    b.set_ylabel("proxy CPU µs per request (lower is better)")


if plain:
    figure("plain.png", "One worker, no filter", draw_plain)


def draw_latency(fig):
    ax = fig.subplots()
    qs = ["p50_ms", "p75_ms", "p90_ms", "p99_ms"]
    for t in plain:
        ax.plot([q[:3] for q in qs], [med("plain", t, q) for q in qs], marker="o", label=t, color=colour(t))
    ax.set_yscale("log")
    ax.set_ylabel("latency, ms (log)")
    ax.legend()


if plain:
    figure("latency.png", "Latency distribution, one worker, no filter (wrk -c50)", draw_latency)


def draw_headers(fig):
    ax = fig.subplots()
    ax.barh(headers, [med("headers", t, "cpu_us_per_req") for t in headers], color=[colour(t) for t in headers])
    ax.invert_yaxis()
    ax.set_xlabel("proxy CPU µs per request (lower is better)")


if headers:
    figure("filters.png", "The same header work: natively, built in, and as Wasm", draw_headers, height=3.8)


def draw_workers(fig):
    ax = fig.subplots()
    xs = range(len(workers))
    ax.bar([x - 0.2 for x in xs], [med("plain", t, "rps") / 1000 for t in workers], 0.4, label="1 worker (pinned)", color="#cccccc")
    ax.bar([x + 0.2 for x in xs], [med("workers", t, "rps") / 1000 for t in workers], 0.4, label="2 workers", color=[colour(t) for t in workers])
    ax.set_xticks(list(xs), workers)
    ax.set_ylabel("thousand requests/s")
    ax.legend()


if workers and plain:
    figure("workers.png", "Scaling from one worker to two", draw_workers)

route_systems = [t for t in SYSTEMS if ROUTE_COUNTS and by[(f"routes {ROUTE_COUNTS[0]}", t)]]


def draw_routes(fig):
    a, b = fig.subplots(1, 2)
    for t in route_systems:
        a.plot(ROUTE_COUNTS, [med(f"routes {n}", t, "rps") / 1000 for n in ROUTE_COUNTS], marker="o", label=t, color=colour(t))
        b.plot(ROUTE_COUNTS, [med(f"routes {n}", t, "idle_rss_kb") / 1024 for n in ROUTE_COUNTS], marker="o", label=t, color=colour(t))
    for ax in (a, b):
        ax.set_xscale("log")
        ax.set_xlabel("path routes (the load on the last)")
    a.set_ylabel("thousand requests/s (higher is better)")
    b.set_ylabel("idle RSS, MB (lower is better)")
    a.legend()


if ROUTE_COUNTS:
    figure("routes.png", "Routes: throughput and memory from 10 to 10,000 path routes", draw_routes)

tls_systems = targets("https")


def draw_tls(fig):
    ax = fig.subplots()
    xs = range(len(tls_systems))
    ax.bar([x - 0.2 for x in xs], [med("https", t, "cpu_us_per_req") for t in tls_systems], 0.4, label="HTTPS, HTTP/1.1 (wrk)", color=[colour(t) for t in tls_systems])
    ax.bar([x + 0.2 for x in xs], [med("h2", t, "cpu_us_per_req") for t in tls_systems], 0.4, label="HTTPS, h2 (h2load)", color="#cccccc")
    ax.set_xticks(list(xs), tls_systems)
    ax.set_ylabel("proxy CPU µs per request (lower is better)")
    ax.legend()


if tls_systems and targets("h2"):
    figure("tls.png", "HTTPS: CPU per request, HTTP/1.1 and h2", draw_tls)

# --- the page
f = lambda v, d=1: f"{v:.{d}f}"  # noqa: E731
lines = []
w = lines.append
w("# Performance")
w("")
w("Sluice side by side with the data planes users would pick instead, measured in one")
w("run on one machine by [`examples/bench/compare.sh`](../examples/bench/compare.sh),")
w("which installs them (nginx, haproxy and wrk from Debian; Envoy and Traefik from their")
w("PyPI wheels; the peer filters from [`examples/bench/peers/`](../examples/bench/peers))")
w("and wrote this page and its plots with [`report.py`](../examples/bench/report.py).")
w("Run it again with:")
w("")
w("```sh")
w(machine["command"])
w("```")
w("")
w(f"**This run**: {caption}.")
w("")
w("Absolute numbers move with the machine: this shared VM measured nginx at 81.9k rps")
w("(8.5 µs of CPU per request) in the performance issue's run and at a third of that in")
w("other hours. Compare systems within one run; the ratios are what carry over.")
w("")
w("How: every system proxies to the same nginx `return 200` backend over loopback. With one")
w("worker, wrk (`-t1 -c50`) is pinned to CPU 0 and the proxy shares CPU 1 with the backend;")
w("with two workers nothing is pinned. Each measurement follows a second of warm-up load.")
w("The targets run interleaved, round after round, so")
w("that drift on this shared machine hits them alike; each ratio is taken within a round,")
w("and the tables print the median over the rounds. CPU per request is the proxy's own CPU")
w("time (all its threads and processes, from `/proc`) over the requests wrk completed. Idle")
w("RSS is the proxy's, all processes, after start and before any request. Access logs are")
w("off everywhere.")
if errors:
    w("")
    w(f"**Warning**: {errors} responses were not 2xx or 3xx in this run.")
w("")
GENERATED = set()


def section(title):
    GENERATED.add(title)
    w(f"## {title}")
    w("")


if plain:
    section("One worker, no filter")
    w("| system | rps | × nginx rps | p50 | p99 | CPU µs/request | × nginx CPU | idle RSS |")
    w("|---|---|---|---|---|---|---|---|")
    for t in targets("plain"):
        if t == "backend":
            w(f"| backend alone (no proxy) | {f(med('plain', t, 'rps') / 1000)}k | | {f(med('plain', t, 'p50_ms'), 2)} ms | {f(med('plain', t, 'p99_ms'), 2)} ms | | | |")
            continue
        w(
            f"| {t} | {f(med('plain', t, 'rps') / 1000)}k | ×{f(ratio('plain', t, 'nginx', 'rps'), 2)} "
            f"| {f(med('plain', t, 'p50_ms'), 2)} ms | {f(med('plain', t, 'p99_ms'), 2)} ms "
            f"| {f(med('plain', t, 'cpu_us_per_req'))} | ×{f(ratio('plain', t, 'nginx', 'cpu_us_per_req'), 2)} "
            f"| {f(med('plain', t, 'idle_rss_kb') / 1024)} MB |"
        )
    w("")
    w("![rps and CPU per request](performance/plain.png)")
    w("")
    w("![latency distribution](performance/latency.png)")
    w("")
    if (PLOTS / "sluice-flame.svg").exists():
        w("Where Sluice's CPU goes under that load: [a flame graph](performance/sluice-flame.svg)")
        w("(perf at 499 Hz with DWARF call graphs for 5 s, folded and drawn by inferno).")
        w("")
if headers:
    section("The same header work")
    w("A request header set, one removed, a response header set: nginx")
    w("(`proxy_set_header`, `add_header`) and haproxy (`http-request`, `http-response`)")
    w("natively; Sluice with the HTTPRoute `RequestHeaderModifier` and")
    w("`ResponseHeaderModifier` filters, and with its `headers` Wasm filter once and three")
    w("times on the rule (each copy touching three headers of its own); Envoy with the same")
    w("work as a proxy-wasm filter in V8")
    w("([`peers/proxy-wasm-headers`](../examples/bench/peers/proxy-wasm-headers)); Traefik")
    w("with it as an http-wasm middleware")
    w("([`peers/http-wasm-headers`](../examples/bench/peers/http-wasm-headers)). The script")
    w("checks every target answers with `x-served-1` before measuring.")
    w("")
    w("| target | rps | CPU µs/request | CPU added over the same system with no filter | × Sluice built-in rps |")
    w("|---|---|---|---|---|")
    for t in headers:
        system = t.split()[0]
        added = med("headers", t, "cpu_us_per_req") - med("plain", system, "cpu_us_per_req")
        w(
            f"| {t} | {f(med('headers', t, 'rps') / 1000)}k | {f(med('headers', t, 'cpu_us_per_req'))} "
            f"| {added:+.1f} µs | ×{f(ratio('headers', t, 'sluice built-in', 'rps'), 2)} |"
        )
    if "envoy proxy-wasm" in headers and "sluice 1 wasm" in headers:
        w("")
        w(
            "One Wasm filter: Sluice ×"
            + f(ratio("headers", "sluice 1 wasm", "envoy proxy-wasm", "rps"), 2)
            + " Envoy's proxy-wasm rps and ×"
            + f(ratio("headers", "sluice 1 wasm", "traefik http-wasm", "rps"), 2)
            + " Traefik's http-wasm rps (within-round medians)."
        )
    w("")
    w("![CPU per request with the header work](performance/filters.png)")
    w("")
if ROUTE_COUNTS:
    section("Routes: 10 to 10,000")
    w("Each system with N path-prefix routes, `/p0` to `/p{N-1}`, written as its users")
    w("write them ([`configs.py`](../examples/bench/configs.py)): nginx `location`s, Envoy")
    w("routes with `path_separated_prefix` (what Envoy Gateway generates for a Gateway API")
    w("PathPrefix; Envoy tries them in order), Traefik `PathPrefix` routers, and Sluice")
    w("HTTPRoutes of 16 rules each. The load asks for the last route. One worker each, as")
    w("above; all three route counts run side by side, interleaved. Idle RSS is after start,")
    w("before any request.")
    w("")
    w("| system | routes | rps | × its own rps at " + f"{ROUTE_COUNTS[0]:,}" + " | p99 | CPU µs/request | idle RSS |")
    w("|---|---|---|---|---|---|---|")
    for t in route_systems:
        for n in ROUTE_COUNTS:
            sc = f"routes {n}"
            w(
                f"| {t} | {n:,} | {f(med(sc, t, 'rps') / 1000)}k "
                f"| ×{f(ratio(sc, t, t, 'rps', f'routes {ROUTE_COUNTS[0]}'), 2)} "
                f"| {f(med(sc, t, 'p99_ms'), 2)} ms | {f(med(sc, t, 'cpu_us_per_req'))} "
                f"| {f(med(sc, t, 'idle_rss_kb') / 1024)} MB |"
            )
    w("")
    w("![routes against rps and RSS](performance/routes.png)")
    w("")
    if reloads:
        w("A new route, from the change to its first 200 (a client asks every millisecond):")
        w("for Sluice, a new HTTPRoute file written into the folder it runs from; for nginx, a")
        w("`location` added to its file and `nginx -s reload` (which parses the whole file")
        w("itself, as an operator's reload does). Milliseconds, median of the rounds:")
        w("")
        w("| system | " + " | ".join(f"{n:,} routes" for n in ROUTE_COUNTS) + " |")
        w("|---|" + "---|" * len(ROUTE_COUNTS))
        for system in ("sluice", "nginx"):
            cells = [f(statistics.median(reloads[(system, n)]), 0) + " ms" if reloads[(system, n)] else "" for n in ROUTE_COUNTS]
            w(f"| {system} | " + " | ".join(cells) + " |")
        w("")
if tls_systems:
    section("HTTPS and HTTP/2")
    w("Every proxy terminating TLS 1.3 (one ECDSA P-256 certificate, ALPN h2 and")
    w("http/1.1) in front of the same plain-HTTP backend, one worker each as above.")
    w("HTTP/1.1 with wrk (`-c" + machine.get("connections", "50") + "`, keep-alive); h2 with h2load (`-c10 -m10`:")
    w("ten connections, ten streams each), which reports a mean latency, no percentiles.")
    w("")
    w("| system | HTTPS rps | × nginx | p99 | CPU µs/request | × nginx CPU | h2 rps | × nginx | mean | CPU µs/request | × nginx CPU |")
    w("|---|---|---|---|---|---|---|---|---|---|---|")
    for t in tls_systems:
        h2 = bool(by[("h2", t)])
        w(
            f"| {t} | {f(med('https', t, 'rps') / 1000)}k | ×{f(ratio('https', t, 'nginx', 'rps'), 2)} "
            f"| {f(med('https', t, 'p99_ms'), 2)} ms | {f(med('https', t, 'cpu_us_per_req'))} "
            f"| ×{f(ratio('https', t, 'nginx', 'cpu_us_per_req'), 2)} "
            + (
                f"| {f(med('h2', t, 'rps') / 1000)}k | ×{f(ratio('h2', t, 'nginx', 'rps'), 2)} "
                f"| {f(med('h2', t, 'mean_ms'), 2)} ms | {f(med('h2', t, 'cpu_us_per_req'))} "
                f"| ×{f(ratio('h2', t, 'nginx', 'cpu_us_per_req'), 2)} |"
                if h2
                else "| | | | | |"
            )
        )
    w("")
    if targets("h2"):
        w("![CPU per request over HTTPS](performance/tls.png)")
        w("")
if workers and plain:
    section("Two workers")
    w("| system | rps, 2 workers | gain over 1 worker | p99 | CPU µs/request | idle RSS |")
    w("|---|---|---|---|---|---|")
    for t in workers:
        gain = med("workers", t, "rps") / med("plain", t, "rps")
        w(
            f"| {t} | {f(med('workers', t, 'rps') / 1000)}k | ×{f(gain, 2)} | {f(med('workers', t, 'p99_ms'), 2)} ms "
            f"| {f(med('workers', t, 'cpu_us_per_req'))} | {f(med('workers', t, 'idle_rss_kb') / 1024)} MB |"
        )
    w("")
    w("The gain compares medians of the two phases (one worker pinned, then two unpinned),")
    w("which ran one after the other rather than interleaved.")
    w("")
    w("![one worker against two](performance/workers.png)")
    w("")

# Sections written by hand (analysis, profiles) stay: every `## ` section of the page
# this script does not write is kept, in order, after the generated ones.
page = DOCS / "performance.md"
if page.exists():
    kept, keep = [], False
    for line in page.read_text().split("\n"):
        if line.startswith("## "):
            keep = line[3:].strip() not in GENERATED and line[3:].strip() not in OBSOLETE
        if keep:
            kept.append(line)
    while kept and not kept[-1].strip():
        kept.pop()
    if kept:
        lines.extend(kept)
        w("")
while len(lines) > 1 and not lines[-1].strip() and not lines[-2].strip():
    lines.pop()
page.write_text("\n".join(lines).rstrip("\n") + "\n")
print(f"wrote {page} and {len(list(PLOTS.glob('*.png')))} plots in {PLOTS}")
