"""The Ray fleet scenario of tests/pipeline/test_fleet.py, with real processes only; writes its figures as JSON.

Run it inside ONE loopback-only network namespace (Ray picks its node IP by probing a public address, so every Ray
process and every server it talks to must live there) and, so that nothing outlives it, its own PID namespace::

    unshare -n -p -f --mount-proc bash -c 'ip link set lo up; .venv/bin/python -m tests.helpers.fleet_scenario \\
        --workdir /tmp/fleet --out /tmp/fleet/figures.json; exit $?'

(``; exit $?`` keeps bash as the namespace's PID 1, which reaps the daemons ``ray start`` leaves behind.)

What it does, in order:

1. a real PostgreSQL (tests.helpers.postgres.PostgresServer): one database for the prediction store, one for MLflow;
2. a real ``mlflow server`` on that PostgreSQL (artifacts served by it), with two tiny ONNX classifiers
   (tests.helpers.onnx_models) registered as ``fleet-cls@champion`` and ``fleet-cls@challenger``;
3. ``ray start --head`` and a second ``ray start --address`` (two nodes on 127.0.0.1);
4. ``shadowcam run --cluster ray`` (a subprocess: the real CLI) over ``--cameras`` MJPG files of ``--frames``
   distinct frames each, replayed at ``--fps``, ``--per-actor`` cameras per actor, models:/ URIs through the server;
5. once every camera of actor w0 has ``--kill-at`` of its frames stored: a snapshot of every stored frame id, then
   SIGKILL to actor w0's worker process (its pid from the actor's own ``progress()``, asked through Ray by name);
6. the time until every one of its cameras' row counts grows again (polled every 50 ms): the time to resume;
7. the run's end; then the checks' raw figures: per camera frames stored, distinct seqs, expected ids missing or
   extra, snapshot rows lost, incumbent/shadow predictions;
8. a few labels on the sampled frames and one ``shadowcam evaluate --db postgresql://...`` over the store (logged to
   the mlflow server): which cameras and runs it covered;
9. always: the CLI stopped, ``ray stop --force`` (inside the PID namespace it sees only these processes), the
   servers stopped.

The JSON (``--out``) holds every figure; the test asserts on it. Exit status 0 when the scenario ran to the end
(whatever the figures), 1 when a step failed (``error`` in the JSON says which).
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
MODEL = "fleet-cls"
CLASSES = ["empty", "box", "pallet"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float, what: str, every: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


class Scenario:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.workdir).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.fig: dict[str, Any] = {"params": {k: v for k, v in vars(args).items()}, "timings": {}}
        self.t0 = time.monotonic()
        self.procs: list[subprocess.Popen] = []
        self.pg: Any = None
        self.mlflow: subprocess.Popen | None = None
        self.thread_error: Exception | None = None
        self.ray_started = False
        # Ray token authentication with a token of this scenario's own, for every Ray process (head, worker, the
        # CLI's driver, this one): nothing depends on a ~/.ray/auth_token left by something else
        os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
        self.env = dict(os.environ, MLFLOW_DISABLE_TELEMETRY="true", PYTHONUNBUFFERED="1")
        self.env.pop("MLFLOW_TRACKING_URI", None)

    def mark(self, name: str) -> None:
        self.fig["timings"][name] = round(time.monotonic() - self.t0, 2)

    def log(self, msg: str) -> None:
        print(f"[scenario {time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    # -- servers ---------------------------------------------------------------------------------------------------
    def start_postgres(self) -> tuple[str, str]:
        from tests.helpers.postgres import PostgresServer, find_pg_bin

        bin_dir = find_pg_bin()
        if bin_dir is None:
            raise RuntimeError("PostgreSQL binaries not installed")
        self.pg = PostgresServer(bin_dir).start()
        return self.pg.new_database(), self.pg.new_database()

    def start_mlflow(self, db_url: str) -> str:
        """Launch ``mlflow server`` on PostgreSQL; returns its URI at once (:meth:`wait_mlflow` waits for it)."""
        port = free_port()
        backend = "postgresql+psycopg://" + db_url.split("://", 1)[1]
        log = open(self.work / "mlflow-server.log", "w")
        cmd = [str(BIN / "mlflow"), "server", "--backend-store-uri", backend, "--artifacts-destination",
               str(self.work / "mlflow-artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        # its own process group: `mlflow server` runs uvicorn as a child, and both must get the SIGTERM
        self.mlflow = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=self.env, start_new_session=True)
        self.procs.append(self.mlflow)
        return f"http://127.0.0.1:{port}"

    def wait_mlflow_and_register(self, uri: str) -> None:
        """Wait for the mlflow server, then register the two models (a thread, while Ray starts)."""
        try:
            def healthy() -> bool:
                if self.mlflow.poll() is not None:
                    raise RuntimeError(f"mlflow server exited ({self.mlflow.returncode}); see {self.work / 'mlflow-server.log'}")
                try:
                    with urllib.request.urlopen(f"{uri}/health", timeout=1) as r:
                        return r.status == 200
                except OSError:
                    return False

            wait_for(healthy, 180, "the mlflow server")
            self.mark("mlflow_server_up")
            self.register_models(uri)
            self.mark("models_registered")
        except Exception as e:
            self.thread_error = e

    def register_models(self, tracking: str) -> None:
        os.environ["MLFLOW_TRACKING_URI"] = tracking
        from pipeline import tracking as tr
        from tests.helpers.onnx_models import make_tiny_classifier

        tr.configure()
        models = self.work / "models"
        models.mkdir(exist_ok=True)
        champion = make_tiny_classifier(models / "model.onnx", CLASSES, seed=1, name=MODEL, version="1")
        challenger_dir = models / "challenger"
        challenger_dir.mkdir(exist_ok=True)
        challenger = make_tiny_classifier(challenger_dir / "model.onnx", CLASSES, seed=2, name=MODEL, version="2")
        self.fig["model_versions"] = {"champion": tr.register_onnx(champion, MODEL, alias="champion"),
                                      "challenger": tr.register_onnx(challenger, MODEL, alias="challenger")}

    def start_ray(self) -> str:
        port = free_port()
        temp = Path(os.environ.get("TMPDIR", "/tmp")) / f"ray-fleet-{os.getpid()}"
        common = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(self.args.cpus_per_node), "--disable-usage-stats"]
        head = [str(BIN / "ray"), "start", "--head", "--port", str(port), "--include-dashboard=false", "--temp-dir", str(temp), *common]
        self.ray_started = True
        for name, cmd in (("head", head), ("worker", [str(BIN / "ray"), "start", "--address", f"127.0.0.1:{port}", *common])):
            t = time.monotonic()
            for attempt in (1, 2):  # a node that could not reach the GCS in time on a very busy machine: once more
                p = subprocess.run(cmd, capture_output=True, text=True, env=self.env, timeout=180)
                if p.returncode == 0:
                    break
                self.log(f"ray start ({name}) failed (attempt {attempt}): {p.stderr[-3000:]}")
                self.fig.setdefault("ray_start_failures", []).append(f"{name}: {p.stderr[-600:]}")
            else:
                raise RuntimeError(f"ray start ({name}) failed twice: {p.stdout[-1500:]} {p.stderr[-1500:]}")
            self.fig["timings"][f"ray_{name}_start_s"] = round(time.monotonic() - t, 2)
        return f"127.0.0.1:{port}"

    # -- the fleet ---------------------------------------------------------------------------------------------------
    def write_config(self, store_url: str) -> Path:
        import yaml

        from tests.helpers.media import write_video

        a = self.args
        videos = self.work / "videos"
        videos.mkdir(exist_ok=True)
        sources = []
        for i in range(a.cameras):
            path = write_video(videos / f"cam{i}.avi", a.frames, fps=a.fps, seed=i)
            sources.append({"uri": str(path), "id": f"cam{i}", "max_fps": a.fps})
        cfg = {
            "sources": sources,
            "incumbent": {"uri": f"models:/{MODEL}@champion"},
            "shadow": {"uri": f"models:/{MODEL}@challenger"},
            "batching": {"batch_size": 8, "max_wait_ms": 20},
            "sampling": {"rate": 0.2, "seed": 0},
            "store": {"url": store_url, "flush_every": 64, "flush_interval_s": 0.25},
            "cluster": {"cameras_per_actor": a.per_actor, "num_cpus": 1, "report_every_s": 2, "max_restarts": 3},
            "workdir": str(self.work / "run"),
        }
        path = self.work / "fleet.yaml"
        path.write_text(yaml.safe_dump(cfg, sort_keys=False))
        return path

    def run_fleet(self, config: Path, ray_address: str, tracking: str, store_url: str) -> None:
        import ray

        from pipeline.fleet import NAMESPACE, actor_name, fleet_run_prefix
        from pipeline.store import PredictionStore, frames

        a = self.args
        env = dict(self.env, RAY_ADDRESS=ray_address, MLFLOW_TRACKING_URI=tracking)
        summary_json = self.work / "fleet-summary.json"
        log = open(self.work / "fleet-run.log", "w")
        cli = subprocess.Popen([str(BIN / "shadowcam"), "run", "--config", str(config), "--cluster", "ray", "--summary-json",
                                str(summary_json), "--no-progress"], stdout=log, stderr=subprocess.STDOUT, env=env, cwd=str(REPO))
        self.procs.append(cli)
        store = PredictionStore(store_url)
        try:
            def fleet_id() -> str | None:
                if cli.poll() is not None:
                    raise RuntimeError(f"shadowcam run exited early ({cli.returncode}); see {self.work / 'fleet-run.log'}")
                ids = [r["run_id"] for r in store.list_runs() if "-w0-" in r["run_id"]]
                return ids[0].split("-w0-")[0] if ids else None

            fid = wait_for(fleet_id, 120, "the fleet's first run row")
            self.fig["fleet_id"] = fid
            prefix = fleet_run_prefix(fid)
            self.mark("fleet_started")
            ray.init(address=ray_address, namespace=NAMESPACE, log_to_driver=False)
            victim = ray.get_actor(actor_name(fid, 0), namespace=NAMESPACE)
            info = ray.get(victim.progress.remote(), timeout=30)
            cams = info["cameras"]
            kill_at = int(a.kill_at * a.frames)

            def counts() -> dict[str, int]:
                return {c: v["frames"] for c, v in store.camera_counts(prefix).items()}

            wait_for(lambda: all(counts().get(c, 0) >= kill_at for c in cams) or (cli.poll() is not None and "exit"), 120,
                     f"{kill_at} frames of {cams}", every=0.1)
            if cli.poll() is not None:
                raise RuntimeError("the fleet ended before the kill: raise --frames or lower --fps")
            snapshot = {r["frame_id"] for r in store.table_rows(frames, frames.c.run_id.startswith(prefix))}
            self.fig["rows_before_kill"] = counts()
            info = ray.get(victim.progress.remote(), timeout=30)  # the pid now (the actor has not been restarted yet)
            os.kill(info["pid"], signal.SIGKILL)
            t_kill = time.monotonic()
            self.mark("kill")
            self.log(f"SIGKILL to actor w0 (pid {info['pid']}, node {info['node_id'][:8]}, cameras {cams})")
            wait_for(lambda: not Path(f"/proc/{info['pid']}").exists() or _zombie(info["pid"]), 10, "the killed process to end", every=0.02)
            at_kill = counts()
            self.fig["rows_at_kill"] = at_kill
            self.fig["killed"] = {"actor": "w0", "pid": info["pid"], "node_id": info["node_id"], "cameras": cams,
                                  "attempt": info["attempt"], "frames_served_before": info["frames_served"]}

            def grown() -> bool:
                now = counts()
                return all(now.get(c, 0) > at_kill.get(c, 0) for c in cams)

            wait_for(grown, 90, "the killed actor's cameras to grow again", every=0.05)
            self.fig["time_to_resume_s"] = round(time.monotonic() - t_kill, 2)
            self.log(f"resumed after {self.fig['time_to_resume_s']} s")
            try:
                again = ray.get(victim.progress.remote(), timeout=30)
                self.fig["restarted"] = {"pid": again["pid"], "node_id": again["node_id"], "attempt": again["attempt"],
                                         "already_stored": again["already_stored"]}
            except Exception as e:  # the figures above stand; this one is only informative
                self.fig["restarted"] = {"error": f"{type(e).__name__}: {e}"}
            rc = cli.wait(timeout=a.run_timeout)
            self.mark("fleet_finished")
            self.fig["cli_returncode"] = rc
            ray.shutdown()
            self.fig["summary"] = json.loads(summary_json.read_text()) if summary_json.is_file() else None
            self.check_store(store, prefix, cams, snapshot)
        finally:
            store.close()

    def check_store(self, store: Any, prefix: str, victim_cams: list[str], snapshot: set[str]) -> None:
        from pipeline.store import frames, predictions

        a = self.args
        rows = store.table_rows(frames, frames.c.run_id.startswith(prefix))
        stored = {r["frame_id"] for r in rows}
        per_cam: dict[str, dict[str, Any]] = {}
        fid = self.fig["fleet_id"]
        for i in range(a.cameras):
            cam = f"cam{i}"
            seqs = [r["seq"] for r in rows if r["camera_id"] == cam]
            expected = {f"{fid}:{cam}:{s}" for s in range(a.frames)}
            got = {r["frame_id"] for r in rows if r["camera_id"] == cam}
            per_cam[cam] = {"frames": len(seqs), "distinct_seqs": len(set(seqs)), "expected": a.frames,
                            "missing": len(expected - got), "unexpected": len(got - expected)}
        preds = store.table_rows(predictions, predictions.c.frame_id.in_(list(stored))) if stored else []
        for cam in per_cam:
            per_cam[cam]["incumbent"] = sum(1 for p in preds if p["camera_id"] == cam and p["role"] == "incumbent")
            per_cam[cam]["shadow"] = sum(1 for p in preds if p["camera_id"] == cam and p["role"] == "shadow")
        self.fig["rows_after"] = {c: v["frames"] for c, v in per_cam.items()}
        self.fig["per_camera"] = per_cam
        self.fig["snapshot_rows"] = len(snapshot)
        self.fig["snapshot_rows_lost"] = len(snapshot - stored)
        self.fig["run_ids"] = store.runs_with_prefix(prefix)

    def evaluate(self, store_url: str, tracking: str) -> None:
        """Label every sampled frame (its camera's index mod 3: any truth will do), then one `shadowcam evaluate`."""
        from pipeline.store import PredictionStore, samples
        from pipeline.types import Label

        store = PredictionStore(store_url)
        try:
            rows = store.table_rows(samples)
            labels = [Label(frame_id=r["frame_id"], label=CLASSES[int(r["camera_id"][3:]) % 3], annotator="scenario",
                            source="import") for r in rows]
            store.add_labels(labels)
        finally:
            store.close()
        out = self.work / "evaluation.json"
        env = dict(self.env, MLFLOW_TRACKING_URI=tracking)
        p = subprocess.run([str(BIN / "shadowcam"), "evaluate", "--db", store_url, "--json", str(out), "--no-gallery",
                            "--workdir", str(self.work / "eval")], capture_output=True, text=True, env=env, timeout=300, cwd=str(REPO))
        (self.work / "evaluate.log").write_text(p.stdout + "\n" + p.stderr)
        self.fig["evaluate"] = {"returncode": p.returncode, "labels": len(labels)}
        if p.returncode == 0 and out.is_file():
            doc = json.loads(out.read_text())
            self.fig["evaluate"].update(_evaluation_scope(doc))
        self.mark("evaluated")

    def cleanup(self) -> None:
        """Stop everything at once: `ray stop --force` (in this PID namespace it sees only our Ray processes), the
        CLI and the mlflow server, PostgreSQL."""
        ray_stop = (subprocess.Popen([str(BIN / "ray"), "stop", "--force"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     env=self.env) if self.ray_started else None)
        for p in self.procs:  # the mlflow server holds nothing worth a graceful stop: its database goes next
            if p.poll() is None:
                _signal(p, signal.SIGKILL if p is self.mlflow else signal.SIGTERM, group=p is self.mlflow)
        for p in self.procs:
            try:
                p.wait(timeout=10)
            except subprocess.TimeoutExpired:
                _signal(p, signal.SIGKILL, group=False)
        self.mark("stop_processes")
        if self.pg is not None:
            self.pg.stop()
        self.mark("stop_postgres")
        if ray_stop is not None:
            try:
                ray_stop.wait(timeout=120)
            except subprocess.TimeoutExpired:
                ray_stop.kill()
        self.mark("stopped")

    def run(self) -> int:
        status = 0
        try:
            store_url, mlflow_db = self.start_postgres()
            self.mark("postgres")
            tracking = self.start_mlflow(mlflow_db)
            registering = threading.Thread(target=self.wait_mlflow_and_register, args=(tracking,))
            registering.start()
            try:
                ray_address = self.start_ray()  # meanwhile the mlflow server starts and the models are registered
                self.mark("ray_nodes")
            finally:
                registering.join()
            if self.thread_error is not None:
                raise self.thread_error
            from pipeline.store import PredictionStore

            PredictionStore(store_url).close()  # create the schema before two processes (driver, this one) open it
            config = self.write_config(store_url)
            self.run_fleet(config, ray_address, tracking, store_url)
            self.evaluate(store_url, tracking)
        except Exception as e:
            status = 1
            self.fig["error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
        finally:
            try:
                self.cleanup()
            finally:
                self.mark("total")
                Path(self.args.out).write_text(json.dumps(self.fig, indent=2, default=str) + "\n")
        return status


def _signal(p: subprocess.Popen, sig: int, group: bool) -> None:
    """Send ``sig`` to ``p`` (or to its whole process group); a process already gone is fine."""
    try:
        if group:
            os.killpg(p.pid, sig)
        else:
            p.send_signal(sig)
    except ProcessLookupError:
        pass


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def _evaluation_scope(doc: dict[str, Any]) -> dict[str, Any]:
    """What one evaluation JSON covered: its runs, the cameras with per-camera accuracy, frames and predictions."""
    overall = doc["overall"]
    counts = overall["data"]["counts"]
    return {"run_ids": sorted(overall["meta"]["runs"]), "cameras": sorted(overall["data"]["models"]["incumbent"]["per_camera"]),
            "frames": counts["frames"], "n_cameras": counts["cameras"], "predictions": counts["predictions"],
            "labels": counts["labels"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workdir", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--cameras", type=int, default=4)
    p.add_argument("--per-actor", type=int, default=2)
    p.add_argument("--frames", type=int, default=120, help="frames per camera")
    p.add_argument("--fps", type=float, default=8.0, help="replay rate per camera (max_fps)")
    p.add_argument("--kill-at", type=float, default=0.3, help="kill once the victim's cameras have this share stored")
    p.add_argument("--cpus-per-node", type=int, default=2)
    p.add_argument("--run-timeout", type=float, default=180.0)
    args = p.parse_args(argv)
    return Scenario(args).run()


if __name__ == "__main__":
    sys.exit(main())
