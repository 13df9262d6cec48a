#!/usr/bin/env python3
"""The idle cost of the main job: `meshctl up --peers N`, release build, measured after the mesh
has formed and settled. CPU and RSS of the process over a fixed window, checks that the mesh is
still doing its work (every link sampled at its interval, every peer's telemetry held by every
worker within a few gossip rounds), the workers' own gossip counters, and (with --profile) a
breakdown of where the CPU goes by part, from a `perf` profile with call stacks.

Several binaries (label=path) are measured alternately, round by round, in one sitting, so the
machine's drift falls on each alike. One JSON report goes to --out; a line per measurement to
stdout.

Usage: scripts/bench_idle.py --binary after=target/release/meshctl [--binary before=...]
         [--peers 3,10,20] [--rounds 2] [--warmup 25] [--window 20] [--profile]
"""

import argparse
import collections
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")

# Where a profile sample's time goes: the innermost frame that names one of these parts decides
# (so SQLite under a gossip write counts as store, a log line under gossip as logging). Checked in
# this order within one frame.
PARTS = [
    ("logging", ("tracing_subscriber", "tracing_core::", "tracing::")),
    ("store", ("mesh_store::", "rusqlite::", "sqlite3", "libsqlite3")),
    ("live view (meshctl up)", ("meshctl::up",)),
    ("gossip-push job", ("gossip_push::",)),
    ("gossip (worker)", ("webrtc_worker::gossip", "mesh_gossip::")),
    ("links: probes, QoS, liveness", ("webrtc_worker::links", "webrtc_worker::qos",
                                      "webrtc_worker::file_channel")),
    ("links: WebRTC transport", ("webrtc_worker::transport", "webrtc_worker::prompt_runtime",
                                 "webrtc_sctp", "webrtc_dtls", "webrtc_ice", "webrtc_srtp",
                                 "webrtc_util", "webrtc_data", "webrtc_mdns", "webrtc::",
                                 "rtcp::", "rtp::", "stun::", "turn::", "sctp", "dtls")),
    ("signaling proxy", ("signaling_proxy::",)),
    ("worker: other (spool, rejoin, queue, API)", ("webrtc_worker::",)),
    ("HTTP (hyper, reqwest, axum)", ("hyper::", "reqwest::", "axum::", "h2::")),
]
UNATTRIBUTED = "runtime, kernel, allocator (unattributed)"


def log(text):
    print(text, flush=True)


def cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15 (1-based); after the comm they are 12 and 13.
    return int(fields[11]) + int(fields[12])


def status_kb(pid, key):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def get_json(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_for(path, text, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"meshctl up exited early ({proc.returncode}); see {path}")
        try:
            with open(path) as f:
                if text in f.read():
                    return
        except FileNotFoundError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{text!r} not seen in {path} within {timeout} s")


def gossip_counters(peers):
    """The workers' gossip counters (GET /status), summed; empty for a build without them."""
    total = collections.Counter()
    for p in peers:
        for k, v in (get_json(p["url"] + "/status").get("gossip") or {}).items():
            if isinstance(v, (int, float)):
                total[k] += v
    return dict(total)


def check_work(peers, qos_every, gossip_every):
    """What the mesh is doing: every link end sampled within its interval, and every worker
    holding every origin's own newest telemetry entry (the gossip has converged)."""
    now_ms = time.time() * 1000
    links_up = 0
    health = collections.Counter()
    sample_ages = []
    held = {}
    for p in peers:
        for link in get_json(p["url"] + "/links")["links"]:
            health[link.get("health", link.get("state"))] += 1
            if link.get("health") == "up" and link.get("qos"):
                links_up += 1
            if link.get("qos"):
                sample_ages.append((now_ms - link["qos"]["lastTs"]) / 1000)
        state = get_json(p["url"] + "/gossip/state")
        held[p["id"]] = {e["origin"]: e["hlc"] for e in state["entries"]
                         if e["key"].startswith("telemetry/")}
    missing = behind = 0
    lag_rounds = []
    for o in held:
        own = held[o].get(o)
        if own is None:
            continue
        for w in held:
            if w == o:
                continue
            got = held[w].get(o)
            if got is None:
                missing += 1
            elif (got["wallMs"], got["counter"]) < (own["wallMs"], own["counter"]):
                behind += 1
                lag_rounds.append((own["wallMs"] - got["wallMs"]) / 1000 / gossip_every)
    ages = [(now_ms - held[o][o]["wallMs"]) / 1000 for o in held if o in held[o]]
    return {
        "link_ends_up": links_up,
        "link_ends_by_health": dict(health),
        "sample_age_s_max": round(max(sample_ages), 2) if sample_ages else None,
        "sample_age_limit_s": qos_every * 2 + 1,
        "origin_entries_missing": missing,
        "origin_entries_behind": behind,
        "origin_entries_held": sum(len(h) for h in held.values()),
        "behind_by_rounds_max": round(max(lag_rounds), 2) if lag_rounds else 0,
        "own_entry_age_s_median": round(statistics.median(ages), 1) if ages else None,
    }


def classify(stack):
    for frame in stack:  # innermost first
        for part, needles in PARTS:
            if any(n in frame for n in needles):
                return part
    return UNATTRIBUTED


def profile(pid, seconds, workdir):
    data = os.path.join(workdir, "perf.data")
    subprocess.run(["perf", "record", "-q", "-F", "199", "--call-graph", "dwarf,32768",
                    "-p", str(pid), "-o", data, "--", "sleep", str(seconds)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    script = subprocess.run(["perf", "script", "-i", data, "-F", "ip,sym", "--no-inline"],
                            check=True, capture_output=True, text=True).stdout
    parts = collections.Counter()
    total = 0
    for block in script.split("\n\n"):
        frames = [line.strip().split(None, 1)[1] if " " in line.strip() else line.strip()
                  for line in block.splitlines() if line.strip()]
        if not frames:
            continue
        total += 1
        parts[classify(frames)] += 1
    return {part: round(100 * n / total, 1) for part, n in parts.most_common()} if total else {}


def measure(binary, n, args):
    workdir = tempfile.mkdtemp(prefix=f"idle-{n}-")
    data = os.path.join(workdir, "data")
    out_path = os.path.join(workdir, "up.out")
    env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "info"))
    with open(out_path, "w") as out:
        proc = subprocess.Popen(
            [binary, "up", "--peers", str(n), "--data-dir", data, "--listen", "127.0.0.1:0",
             "--gossip-every", str(args.gossip_every), "--qos-every", str(args.qos_every)],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
            start_new_session=True, cwd=workdir)
    try:
        wait_for(out_path, "Gossip runs every", proc, 180)
        with open(os.path.join(data, "up.json")) as f:
            peers = json.load(f)["peers"]
        time.sleep(args.warmup)
        log_before = os.path.getsize(os.path.join(data, "up.log"))
        g0 = gossip_counters(peers)
        t0, c0 = time.monotonic(), cpu_ticks(proc.pid)
        time.sleep(args.window)
        t1, c1 = time.monotonic(), cpu_ticks(proc.pid)
        g1 = gossip_counters(peers)
        log_lines = 0
        with open(os.path.join(data, "up.log"), "rb") as f:
            f.seek(log_before)
            log_lines = f.read().count(b"\n")
        result = {
            "peers": n,
            "cpu_pct_of_core": round(100 * (c1 - c0) / TICKS / (t1 - t0), 2),
            "rss_mb": round(status_kb(proc.pid, "VmRSS") / 1024, 1),
            "log_lines_per_s": round(log_lines / (t1 - t0), 1),
            "window_s": round(t1 - t0, 1),
        }
        ends = n * (n - 1)
        result["cpu_pct_per_link_end"] = round(result["cpu_pct_of_core"] / ends, 4) if ends else None
        result.update(check_work(peers, args.qos_every, args.gossip_every))
        # Per worker per gossip round, over the window (the counters' difference).
        rounds = (t1 - t0) / args.gossip_every
        if g0 and g1 and rounds > 0:
            result["per_worker_per_round"] = {
                k: round((g1[k] - g0.get(k, 0)) / rounds / n, 1) for k in g1}
        if args.profile:
            result["profile_pct"] = profile(proc.pid, args.window, workdir)
        return result
    finally:
        try:
            os.killpg(proc.pid, signal.SIGINT)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--binary", action="append", required=True, help="label=path to meshctl")
    ap.add_argument("--peers", default="3,10,20")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--warmup", type=float, default=25)
    ap.add_argument("--window", type=float, default=20)
    ap.add_argument("--gossip-every", type=int, default=10)
    ap.add_argument("--qos-every", type=int, default=5)
    ap.add_argument("--profile", action="store_true", help="also a perf profile by part")
    ap.add_argument("--keep", action="store_true", help="keep each run's directory and log")
    ap.add_argument("--out", default="target/bench/idle.json")
    args = ap.parse_args()
    binaries = [b.split("=", 1) for b in args.binary]
    for label, path in binaries:
        if not os.access(path, os.X_OK):
            sys.exit(f"bench_idle: {label}: {path} is not an executable (cargo build --release -p meshctl)")
    if args.profile and not shutil.which("perf"):
        sys.exit("bench_idle: --profile needs perf (apt-get install linux-perf)")
    runs = []
    for rnd in range(1, args.rounds + 1):
        for n in [int(x) for x in args.peers.split(",")]:
            # Alternate which binary goes first, round by round.
            order = binaries if rnd % 2 else list(reversed(binaries))
            for label, path in order:
                r = measure(os.path.abspath(path), n, args)
                r.update(label=label, round=rnd)
                runs.append(r)
                log(json.dumps(r))
    summary = {}
    for label, _ in binaries:
        for n in sorted({r["peers"] for r in runs}):
            mine = [r for r in runs if r["label"] == label and r["peers"] == n]
            summary[f"{label} peers={n}"] = {
                "cpu_pct_of_core_median": round(statistics.median(r["cpu_pct_of_core"] for r in mine), 2),
                "cpu_pct_runs": [r["cpu_pct_of_core"] for r in mine],
                "rss_mb_median": round(statistics.median(r["rss_mb"] for r in mine), 1),
            }
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"runs": runs, "summary": summary}, f, indent=1)
    log(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
