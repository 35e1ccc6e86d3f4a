#!/usr/bin/env python
"""Load on the labeling page: N simulated annotators labelling for a while, with locust, against two uvicorn workers
on a real PostgreSQL store, all on 127.0.0.1.

    .venv/bin/python scripts/label_load.py                          # 50 annotators, 2 minutes, writes docs/labeling_load.md
    .venv/bin/python scripts/label_load.py --users 10 --duration 15 --no-docs

What it does: starts a throw-away PostgreSQL server (tests/helpers/postgres.py), fills a store with ``--frames``
sampled frames (every ``--double-every``-th wants two labels), issues one token per annotator, serves the page with
``uvicorn --workers 2`` (each worker builds the app from $SHADOWCAM_LABEL_SERVE), and runs locust headless
(``--users`` annotators, spawned at 10/s, for ``--duration`` seconds). Each simulated annotator logs in through the
login form and then loops: GET / (its next frame, leased to it), POST /label (a random class, with the form's CSRF
token). Afterwards it checks, in the store, that no frame holds more labels than its double-label plan, that no two
labels of a frame come from one annotator, and that no request got a 5xx; and it writes the p95 latency of a label
submit and the counts into docs/labeling_load.md (between generated markers). Exit status 1 when a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOCUSTFILE = r'''
import json, os, random, re, itertools
from locust import HttpUser, task, between

TOKENS = json.loads(open(os.environ["LOAD_TOKENS"]).read())
CLASSES = json.loads(os.environ["LOAD_CLASSES"])
_next = itertools.count()
FRAME = re.compile(r'name="frame_id" value="([^"]+)"')
CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
NONCE = re.compile(r'name="login_csrf" value="([^"]+)"')


class Annotator(HttpUser):
    wait_time = between(0.2, 1.0)  # a person looks at the frame before answering

    def on_start(self):
        self.token = TOKENS[next(_next) % len(TOKENS)]
        nonce = NONCE.search(self.client.get("/login", name="GET /login").text).group(1)
        with self.client.post("/login", data={"token": self.token, "login_csrf": nonce}, name="POST /login",
                              catch_response=True) as r:
            if r.status_code != 200 or "csrf_token" not in r.text:
                r.failure(f"login failed: {r.status_code}")

    @task
    def label(self):
        with self.client.get("/", name="GET / (next frame)", catch_response=True) as r:
            if r.status_code != 200:
                r.failure(f"status {r.status_code}")
                return
            frame, csrf = FRAME.search(r.text), CSRF.search(r.text)
        if frame is None:
            return  # nothing left for this annotator
        with self.client.post("/label", data={"frame_id": frame.group(1), "label": random.choice(CLASSES),
                                              "csrf_token": csrf.group(1)}, name="POST /label (submit)",
                              catch_response=True, allow_redirects=False) as r:
            if r.status_code != 303:
                r.failure(f"status {r.status_code}")
'''

BEGIN, END = "<!-- label-load:begin -->", "<!-- label-load:end -->"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--users", type=int, default=50, help="simulated annotators")
    p.add_argument("--duration", type=int, default=120, help="seconds of labelling")
    p.add_argument("--frames", type=int, default=4000, help="sampled frames in the store")
    p.add_argument("--double-every", type=int, default=5, help="every n-th frame wants two labels")
    p.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    p.add_argument("--out", default=str(ROOT / "docs" / "labeling_load.md"), help="docs page to write the figures into")
    p.add_argument("--no-docs", action="store_true", help="print the figures only")
    args = p.parse_args(argv)

    from pipeline.labeling.auth import issue_token
    from pipeline.store import labels, samples
    from tests.helpers.browser import free_port
    from tests.helpers.postgres import PostgresServer, find_pg_bin
    from tests.pipeline.labeling.conftest import CLASSES, fill_store

    load_at_start = os.getloadavg()[0]
    bin_dir = find_pg_bin()
    if bin_dir is None:
        print("PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql", file=sys.stderr)
        return 2
    pg = PostgresServer(bin_dir).start()
    work = Path(tempfile.mkdtemp(prefix="shadowcam-label-load-"))
    server = None
    try:
        url = pg.new_database()
        t0 = time.time()
        filled = fill_store(work / "w", n=args.frames, double=tuple(range(0, args.frames, args.double_every)), url=url)
        store = filled.store
        tokens = [issue_token(store, f"ann{i:02d}", "annotator").token for i in range(args.users)]
        (work / "tokens.json").write_text(json.dumps(tokens))
        os.chmod(work / "tokens.json", 0o600)
        print(f"store ready: {args.frames} frames, {args.users} tokens ({time.time() - t0:.0f} s)", flush=True)

        port = free_port()
        env = dict(os.environ, SHADOWCAM_LABEL_SERVE=json.dumps(dict(store_url=url, image_root=str(filled.root), explain=False)))
        server = subprocess.Popen([sys.executable, "-m", "uvicorn", "--factory", "pipeline.labeling.app:app_from_env",
                                   "--host", "127.0.0.1", "--port", str(port), "--workers", str(args.workers),
                                   "--log-level", "warning"], cwd=ROOT, env=env)
        import httpx

        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                print("the labeling server did not start", file=sys.stderr)
                return 1
            time.sleep(0.3)

        (work / "locustfile.py").write_text(LOCUSTFILE)
        csv_prefix = work / "locust"
        lenv = dict(os.environ, LOAD_TOKENS=str(work / "tokens.json"), LOAD_CLASSES=json.dumps(CLASSES))
        cmd = [sys.executable, "-m", "locust", "-f", str(work / "locustfile.py"), "--headless", "-u", str(args.users), "-r", "10",
               "-t", f"{args.duration}s", "--host", f"http://127.0.0.1:{port}", "--csv", str(csv_prefix), "--only-summary",
               "--stop-timeout", "10", "--loglevel", "WARNING"]
        print(f"locust: {args.users} annotators for {args.duration} s against {args.workers} uvicorn workers on PostgreSQL",
              flush=True)
        t_run = time.time()
        subprocess.run(cmd, cwd=work, env=lenv, check=False)
        wall = time.time() - t_run

        stats = {r["Name"]: r for r in csv.DictReader(open(f"{csv_prefix}_stats.csv"))}
        failures = list(csv.DictReader(open(f"{csv_prefix}_failures.csv")))
        submit = stats.get("POST /label (submit)", {})
        agg = stats.get("Aggregated", {})
        five_xx = sum(int(f["Occurrences"]) for f in failures if "status 5" in f["Error"] or "50" in f["Error"][:40])

        rows = store.table_rows(labels)
        per_frame = Counter(r["frame_id"] for r in rows)
        pairs = Counter((r["frame_id"], r["annotator"]) for r in rows)
        double = {r["frame_id"] for r in store.table_rows(samples) if r["double_label"]}
        over = {f: n for f, n in per_frame.items() if n > (2 if f in double else 1)}
        dup = {k: n for k, n in pairs.items() if n > 1}
        figures = dict(
            load_at_start=round(load_at_start, 2), users=args.users, duration_s=args.duration, workers=args.workers, frames=args.frames, wall_s=round(wall, 1),
            submits=int(submit.get("Request Count", 0)), submit_failures=int(submit.get("Failure Count", 0)),
            submit_p50_ms=float(submit.get("50%", "nan") or "nan"), submit_p95_ms=float(submit.get("95%", "nan") or "nan"),
            submit_p99_ms=float(submit.get("99%", "nan") or "nan"), requests=int(agg.get("Request Count", 0)),
            failures=int(agg.get("Failure Count", 0)), rps=round(float(agg.get("Requests/s", 0) or 0), 1), five_xx=five_xx,
            labels=len(rows), frames_labelled=len(per_frame), double_frames_complete=sum(1 for f in double if per_frame.get(f) == 2),
            over_plan=len(over), same_annotator_twice=len(dup),
            failure_kinds={f["Error"]: int(f["Occurrences"]) for f in failures},
        )
        print(json.dumps(figures, indent=1))
        ok = figures["over_plan"] == 0 and figures["same_annotator_twice"] == 0 and figures["five_xx"] == 0 and figures["submits"] > 0
        if not args.no_docs:
            write_docs(Path(args.out), figures, ok)
        print("checks:", "PASS" if ok else "FAIL", flush=True)
        store.close()
        return 0 if ok else 1
    finally:
        if server is not None:
            server.terminate()
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
        pg.stop()
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def write_docs(path: Path, f: dict, ok: bool) -> None:
    cpu = os.cpu_count()
    load = os.getloadavg()[0]
    block = "\n".join([
        BEGIN,
        f"Measured {time.strftime('%Y-%m-%d')} by `scripts/label_load.py --users {f['users']} --duration {f['duration_s']}` on this "
        f"machine ({cpu} cores; 1-minute load average {f.get('load_at_start', float('nan')):.1f} before the run, {load:.1f} at "
        "its end). Locust's simulated annotators, the two uvicorn workers and PostgreSQL shared these cores, so the "
        "latencies include that contention (an upper bound for a server of its own).",
        "",
        "| figure | value |",
        "|---|---|",
        f"| simulated annotators / duration | {f['users']} / {f['duration_s']} s |",
        f"| uvicorn workers / store | {f['workers']} / PostgreSQL |",
        f"| label submits (POST /label) | {f['submits']:,} ({f['submit_failures']} failed) |",
        f"| **p95 latency of a submit** | **{f['submit_p95_ms']:.0f} ms** (p50 {f['submit_p50_ms']:.0f} ms, p99 {f['submit_p99_ms']:.0f} ms) |",
        f"| all requests | {f['requests']:,} at {f['rps']} /s, {f['failures']} failed, {f['five_xx']} with a 5xx |",
        f"| labels stored / frames labelled | {f['labels']:,} / {f['frames_labelled']:,} ({f['double_frames_complete']} double-label frames complete) |",
        f"| frames over their double-label plan | {f['over_plan']} |",
        f"| frames labelled twice by one annotator | {f['same_annotator_twice']} |",
        f"| checks | {'pass' if ok else 'FAIL'} |",
        END,
    ])
    head = ("# Labeling page under load\n\nFifty people labelling at once, through two server processes sharing one "
            "PostgreSQL store: does any frame get more labels than its plan (one, or two for double-label frames), does "
            "any request fail with a 5xx, and how long does a label submit take? Leases (`label_leases`) and answers "
            "are taken under the frame's row lock, so the workers never hand out or accept a frame beyond its plan.\n\n")
    text = path.read_text() if path.exists() else head + BEGIN + "\n" + END + "\n"
    if BEGIN not in text:
        text += "\n" + BEGIN + "\n" + END + "\n"
    pre, rest = text.split(BEGIN, 1)
    post = rest.split(END, 1)[1]
    path.write_text(pre + block + post)
    print(f"wrote {path}")


if __name__ == "__main__":
    sys.exit(main())
