"""The fleet on Ray (pipeline/fleet.py): a real two-node Ray cluster, a real PostgreSQL store, a real `mlflow server`,
the real `shadowcam run --cluster ray`, and an actor's worker process killed with SIGKILL mid-run.

The end-to-end test runs tests/helpers/fleet_scenario.py in one loopback-only network namespace (Ray probes a
public address to pick its node IP) with its own PID namespace (nothing outlives it) and asserts on the figures
it writes: every camera's frames 0..N-1 stored exactly once, no row committed before the kill lost, the killed
actor's cameras growing again within 15 s, and one `shadowcam evaluate` covering every camera and every run of the
fleet. The small tests check the plan and the CLI's options without Ray.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import ClusterConfig, RunConfig
from pipeline.fleet import ActorPlan, actor_run_prefix, fleet_run_prefix, parse_cluster_option, plan_fleet, summarize
from pipeline.types import ConfigError
from tests.conftest import REPO_ROOT
from tests.helpers.media import write_video
from tests.helpers.postgres import find_pg_bin

RESUME_LIMIT_S = 15.0
FRAMES = 120  # per camera
CAMERAS = 4


def _missing_system_parts() -> str | None:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "needs util-linux `unshare` and iproute2 `ip` (a loopback-only network namespace for Ray)"
    bin_dir = Path(sys.executable).parent
    for tool in ("ray", "mlflow", "shadowcam"):
        if not (bin_dir / tool).exists():
            return f"needs {tool} in {bin_dir} (pip install 'shadowcam[fleet,server]')"
    if find_pg_bin() is None:
        return "PostgreSQL binaries (initdb, pg_ctl) not installed: apt-get install postgresql"
    probe = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"cannot create network/PID namespaces here (unshare: {probe.stderr.strip()})"
    return None


@pytest.fixture(scope="module")
def fleet_figures(tmp_path_factory) -> dict:
    """Run the scenario once (about 1-4 minutes, most of it starting Ray, PostgreSQL and the mlflow server)."""
    missing = _missing_system_parts()
    if missing:
        pytest.skip(missing)
    work = tmp_path_factory.mktemp("fleet")
    out = work / "figures.json"
    # `; exit $?`: bash stays PID 1 of the namespace (a last command would be exec'd in its place) and reaps the Ray
    # daemons orphaned by `ray start`, so `ray stop` does not wait its grace period on zombies
    cmd = (f"ip link set lo up && {sys.executable} -m tests.helpers.fleet_scenario --workdir {work} --out {out} "
           f"--cameras {CAMERAS} --per-actor 2 --frames {FRAMES} --fps 8; exit $?")
    proc = subprocess.run(["unshare", "-n", "-p", "-f", "--mount-proc", "bash", "-c", cmd], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=540)
    (work / "scenario.log").write_text(proc.stdout + "\n" + proc.stderr)
    if not out.is_file():
        pytest.fail(f"the scenario wrote no figures (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    fig = json.loads(out.read_text())
    print(json.dumps({k: fig.get(k) for k in ("timings", "rows_before_kill", "rows_at_kill", "rows_after", "time_to_resume_s",
                                              "snapshot_rows_lost", "killed", "restarted")}, indent=1))  # shown with -s / -rA
    if proc.returncode != 0 or "error" in fig:
        pytest.fail(f"the scenario failed: {fig.get('error')}\n--- its output (tail) ---\n{proc.stdout[-5000:]}\n{proc.stderr[-3000:]}")
    return fig


@pytest.mark.postgres
@pytest.mark.slow
@pytest.mark.timeout(600)
def test_fleet_survives_a_killed_worker(fleet_figures):
    fig = fleet_figures
    s = fig["summary"]
    assert fig["cli_returncode"] == 0
    # two nodes, two actors, one of them restarted once in a new process
    assert s["totals"]["nodes"] == 2 and s["totals"]["actors"] == 2 and s["totals"]["restarts"] == 1, s["totals"]
    assert fig["restarted"]["pid"] != fig["killed"]["pid"] and fig["restarted"]["attempt"] == 1
    # killed mid-run: its cameras had some frames but not all
    for cam in fig["killed"]["cameras"]:
        assert 0 < fig["rows_at_kill"][cam] < FRAMES
    # the restarted attempt started from what the store held, not from zero
    assert fig["restarted"]["already_stored"] == {c: fig["rows_at_kill"][c] for c in fig["killed"]["cameras"]}
    assert fig["time_to_resume_s"] <= RESUME_LIMIT_S, f"resumed after {fig['time_to_resume_s']} s"
    # every camera: frames 0..N-1 stored exactly once, one incumbent prediction each
    for cam, c in fig["per_camera"].items():
        assert c["frames"] == c["distinct_seqs"] == FRAMES and c["missing"] == 0 and c["unexpected"] == 0, (cam, c)
        assert c["incumbent"] == FRAMES and 0 < c["shadow"] <= FRAMES, (cam, c)
    assert sorted(fig["per_camera"]) == [f"cam{i}" for i in range(CAMERAS)]
    # no row committed before the kill was lost
    assert fig["snapshot_rows"] > 0 and fig["snapshot_rows_lost"] == 0
    # the driver's summary agrees with the store
    assert {c: v["frames"] for c, v in s["cameras"].items()} == fig["rows_after"]
    assert s["totals"]["frames_stored"] == CAMERAS * FRAMES
    # one evaluation covers every camera and every run (attempt) of the fleet
    ev = fig["evaluate"]
    assert ev["returncode"] == 0
    assert ev["cameras"] == sorted(fig["per_camera"]) and ev["n_cameras"] == CAMERAS
    assert ev["run_ids"] == sorted(fig["run_ids"]) and len(ev["run_ids"]) == 3
    assert ev["frames"] == CAMERAS * FRAMES and ev["predictions"]["incumbent"] == CAMERAS * FRAMES
    # scripts/fleet_resume.py (which writes docs/fleet.md's table) reads these figures as this test does
    resume = _fleet_resume_script()
    fig = {**fig, "wall_s": 100.0, "load_before": 1.0, "load_after": 2.0, "returncode": 0}
    assert resume.checks(fig, FRAMES) == []
    assert f"| {fig['time_to_resume_s']:.1f} s | 100 s | all held |" in resume.render_block([fig], FRAMES, "now")


def _fleet_resume_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("fleet_resume_script", REPO_ROOT / "scripts" / "fleet_resume.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fleet_resume_script_reports_what_did_not_hold():
    resume = _fleet_resume_script()
    cams = {f"cam{i}": {"frames": 120, "distinct_seqs": 120, "missing": 0, "unexpected": 0} for i in range(2)}
    fig = {"params": {"per_actor": 2, "fps": 8.0, "kill_at": 0.3}, "per_camera": cams, "snapshot_rows_lost": 0,
           "time_to_resume_s": 4.2, "rows_at_kill": {"cam0": 37, "cam1": 36}, "rows_after": {"cam0": 120, "cam1": 120},
           "killed": {"cameras": ["cam0", "cam1"]}, "restarted": {"already_stored": {"cam0": 37, "cam1": 36}},
           "evaluate": {"returncode": 0}, "wall_s": 99.6, "load_before": 0.5, "load_after": 3.25, "returncode": 0}
    assert resume.checks(fig, 120) == []
    slow = {**fig, "time_to_resume_s": 16.0, "snapshot_rows_lost": 2,
            "per_camera": {**cams, "cam1": {"frames": 121, "distinct_seqs": 120, "missing": 0, "unexpected": 0}}}
    assert resume.checks(slow, 120) == ["cam1: 121 rows, 120 distinct seqs, 0 missing", "2 rows committed before the kill lost",
                                        "resumed after 16.0 s (limit 15 s)"]
    block = resume.render_block([fig, slow], 120, "2026-11-30 05:00 UTC")
    assert "| 1 | 0.5 / 3.2 | 37, 36 | 120, 120 | 4.2 s | 100 s | all held |" in block
    assert "| 2 |" in block and "resumed after 16.0 s (limit 15 s)" in block and "Time to resume: 4.2-16.0 s" in block
    doc = "# Fleet\n\nbefore\n\n" + block + "\nafter\n"
    again = resume.replace_block(doc, resume.render_block([fig], 120, "later"))
    assert again.startswith("# Fleet\n\nbefore\n\n") and again.endswith("\nafter\n") and "| 2 |" not in again
    assert again.count(resume.BLOCK_END) == 1
    assert resume.replace_block("# Fleet\n", block).startswith("# Fleet\n\n<!-- BEGIN fleet_resume")


# --- the plan and the options, without Ray ------------------------------------------------------------------------------

def _cfg(tmp_path: Path, n: int, **kw) -> RunConfig:
    sources = []
    for i in range(n):
        write_video(tmp_path / f"c{i}.avi", 3)
        sources.append({"uri": str(tmp_path / f"c{i}.avi")})
    doc = {"sources": sources, "incumbent": {"uri": "inc.onnx"}, "store": {"url": "postgresql://u@h/db"},
           "workdir": str(tmp_path / "wd"), "cluster": {"cameras_per_actor": 2}, **kw}
    return RunConfig.model_validate(doc)


def test_plan_groups_cameras_in_order_with_absolute_paths_and_own_workdirs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = _cfg(tmp_path, 5, max_frames=100, metrics={"port": 9108})
    plans = plan_fleet(cfg, "f1")
    assert [p.cameras for p in plans] == [("c0", "c1"), ("c2", "c3"), ("c4",)]
    assert [p.config["max_frames"] for p in plans] == [40, 40, 20]
    for p in plans:
        run = RunConfig.model_validate(p.config)  # each actor's config is a valid run config without a cluster
        assert run.cluster is None and run.metrics.port == 0
        assert run.workdir == str(tmp_path / "wd" / "fleet" / "f1" / f"w{p.index}")
        assert run.incumbent.uri == str(tmp_path / "inc.onnx") and run.incumbent.intra_op_threads == 1
        assert all(Path(s.uri).is_absolute() and s.id for s in run.sources)


@pytest.mark.parametrize("url", ["shadowcam.db", "sqlite:///x.db", "/abs/x.db"])
def test_plan_refuses_a_store_only_one_machine_can_reach(tmp_path, url):
    with pytest.raises(ConfigError, match="store.url.*postgresql"):
        plan_fleet(_cfg(tmp_path, 1, store={"url": url}), "f1")


def test_plan_refuses_duplicate_camera_ids(tmp_path):
    cfg = _cfg(tmp_path, 2)
    cfg.sources[1].id = "c0"
    with pytest.raises(ConfigError, match="duplicate camera id 'c0'"):
        plan_fleet(cfg, "f1")


@pytest.mark.parametrize("value, address", [("ray", None), ("ray://10.0.0.5:10001", "ray://10.0.0.5:10001"),
                                            ("rayy", ConfigError), ("ray://", ConfigError), ("10.0.0.5:6379", ConfigError)])
def test_cluster_option(value, address):
    if address is ConfigError:
        with pytest.raises(ConfigError, match="--cluster"):
            parse_cluster_option(value)
    else:
        assert parse_cluster_option(value) == address


def test_run_command_options_make_the_cluster_config(tmp_path):
    from pipeline.cli import get_args_parser
    from pipeline.commands.run import build_config

    parse = get_args_parser().parse_args
    (tmp_path / "c.yaml").write_text("cluster: {num_cpus: 2, cameras_per_actor: 3}\n")
    cfg = build_config(parse(["run", "--config", str(tmp_path / "c.yaml"), "--cluster", "ray://head:10001", "--cameras-per-actor", "2"]))
    assert (cfg.cluster.address, cfg.cluster.cameras_per_actor, cfg.cluster.num_cpus) == ("ray://head:10001", 2, 2.0)
    assert build_config(parse(["run", "--cluster", "ray"])).cluster == ClusterConfig()
    assert build_config(parse(["run"])).cluster is None
    for argv, field in ((["run", "--cameras-per-actor", "2"], "--cameras-per-actor"), (["run", "--fleet-id", "x"], "--fleet-id")):
        with pytest.raises(ConfigError, match=field):
            build_config(parse(argv))


@pytest.mark.parametrize("fleet_id", ["a-b", "a:b", "", "x" * 41])
def test_fleet_id_must_fit_run_and_frame_ids(fleet_id):
    from pipeline.fleet import FleetRunner

    with pytest.raises(ConfigError, match="fleet id"):
        FleetRunner(RunConfig(), fleet_id=fleet_id)


@pytest.mark.parametrize("field, value", [("address", "http://h:1"), ("cameras_per_actor", 0), ("num_cpus", 0),
                                          ("num_gpus", -1), ("max_restarts", -2), ("placement", "random"), ("typo", 1)])
def test_cluster_config_rejects(field, value):
    with pytest.raises(ConfigError, match=field):
        ClusterConfig(**{field: value})


def test_summary_counts_every_attempt_and_flags_a_lost_actor():
    plans = [ActorPlan(0, ("a", "b"), (), {}), ActorPlan(1, ("c",), (), {})]
    runs = [f"{actor_run_prefix('f', 0)}0", f"{actor_run_prefix('f', 1)}0", f"{actor_run_prefix('f', 0)}1"]
    assert all(r.startswith(fleet_run_prefix("f")) for r in runs)
    results = {0: {"index": 0, "attempt": 1, "node_id": "n1", "node_ip": "10.0.0.1", "pid": 7, "state": "done", "error": None,
                   "summary": {"frames_served": 50, "throughput_fps": 5.0, "stop_reason": "sources finished",
                               "shadow": {"model": "s:1", "coverage": 0.9}}}}
    counts = {"a": {"frames": 60, "distinct_seqs": 60, "first_seq": 0, "last_seq": 59, "incumbent": 60, "shadow": 54},
              "c": {"frames": 10, "distinct_seqs": 10, "first_seq": 0, "last_seq": 9, "incumbent": 10, "shadow": 10}}
    s = summarize("f", "sources finished", 0.0, 10.0, "postgresql://u:pw@h/db", results, {1: {"node_id": "n2", "attempt": 0}},
                  plans, counts, runs, has_shadow=True)
    assert [a["attempts"] for a in s.actors] == [2, 1] and s.totals["restarts"] == 1
    assert s.failed == ["w1"] and s.totals["failed_actors"] == ["w1"]
    assert s.totals["frames_stored"] == 70 and s.totals["shadow_coverage"] == round(64 / 70, 4) and s.totals["nodes"] == 2
    assert s.cameras["a"]["coverage"] == 0.9 and s.store_url == "postgresql://u:***@h/db"
    assert "w1" in s.format_table() and "failed" in s.format_table()


# --- the pieces a restarted actor resumes with: the store's fleet queries, the reader's resume ---------------------------

def test_store_reads_what_a_fleet_stored(tmp_path):
    import numpy as np

    from pipeline.store import FrameRecord, PredictionStore
    from pipeline.types import Prediction

    store = PredictionStore(str(tmp_path / "s.db"))
    try:
        written = {"f_1-w0-0": [("a", 0), ("a", 1), ("a", 3), ("b", 0)], "f_1-w0-1": [("a", 2)],
                   "fx1-w0-0": [("a", 4)], "f_2-w0-0": [("a", 5)]}  # 'f_1-' must not match 'fx1-' ('_' is a LIKE wildcard)
        for k, (run_id, frames_) in enumerate(written.items()):
            store.begin_run(run_id, "inc:1", "sh:1", ["x", "y"], {})
            recs = [FrameRecord(f"{run_id}:{cam}:{seq}", run_id, cam, seq, float(k * 10 + seq)) for cam, seq in frames_]
            preds = [Prediction(r.frame_id, r.camera_id, role, "m:1", np.array([0.5, 0.5]), "x")
                     for r in recs for role in (("incumbent", "shadow") if r.camera_id == "a" else ("incumbent",))]
            store.write_batch(recs, preds)
        assert store.runs_with_prefix("f_1-") == ["f_1-w0-0", "f_1-w0-1"]
        assert store.runs_with_prefix("f_1-w0-") == ["f_1-w0-0", "f_1-w0-1"]
        assert store.stored_seqs("f_1-", "a") == [0, 1, 2, 3] and store.stored_seqs("f_1-", "b") == [0]
        assert store.stored_seqs("f_1-", "zz") == []
        assert store.camera_counts("f_1-") == {
            "a": {"frames": 4, "distinct_seqs": 4, "first_seq": 0, "last_seq": 3, "incumbent": 4, "shadow": 4},
            "b": {"frames": 1, "distinct_seqs": 1, "first_seq": 0, "last_seq": 0, "incumbent": 1, "shadow": 0}}
    finally:
        store.close()


def test_resumed_reader_passes_over_stored_frames_and_keeps_the_fleet_ids(tmp_path):
    from pipeline.config import CameraHealthConfig, SourceConfig
    from pipeline.sources import open_source

    video = write_video(tmp_path / "cam.avi", 10)
    got = {}
    for name, stored in (("fresh", frozenset()), ("resumed", frozenset({0, 1, 2, 5}))):
        reader = open_source(SourceConfig(uri=str(video), id="cam", max_fps=50), CameraHealthConfig(), run_id=f"attempt-{name}")
        reader.resume("fleet1", stored)
        reader.start()
        frames_ = []
        while not reader.finished:
            f = reader.get(timeout=2.0)
            if f is not None:
                frames_.append(f)
        reader.stop()
        got[name] = (frames_, reader.stats)
    fresh, resumed = got["fresh"][0], got["resumed"][0]
    assert [f.frame_id for f in fresh] == [f"fleet1:cam:{i}" for i in range(10)]
    assert [f.seq for f in resumed] == [3, 4, 6, 7, 8, 9]
    # the same picture keeps its id and its source position in every attempt
    by_seq = {f.seq: f for f in fresh}
    assert all(f.frame_id == by_seq[f.seq].frame_id and f.source_ref == by_seq[f.seq].source_ref for f in resumed)
    assert got["resumed"][1].frames_already_stored == 4 and got["resumed"][1].frames_read == 6


@pytest.mark.parametrize("num_cpus, num_gpus, nodes, n_actors, expected", [
    (1, None, [{"CPU": 2}, {"CPU": 2}], 2, 0.0),                      # no GPUs: CPU actors
    (1, None, [{"CPU": 16, "GPU": 1}], 2, 0.5),                       # one GPU shared by two actors
    (1, None, [{"CPU": 16, "GPU": 8}, {"CPU": 16, "GPU": 8}], 4, 1.0),  # at most one GPU each
    (1, None, [{"CPU": 16, "GPU": 1}], 3, 0.333),
    (1, 2, [{"CPU": 16, "GPU": 4}], 2, 2),                            # as configured
    (1, 2, [{"CPU": 16, "GPU": 1}, {"CPU": 16, "GPU": 1}], 2, ConfigError),  # no node has 2
    (4, None, [{"CPU": 2}, {"CPU": 2}], 2, ConfigError),              # no node has 4 CPUs
])
def test_actor_gpus(num_cpus, num_gpus, nodes, n_actors, expected):
    from pipeline.fleet import actor_gpus

    cluster = ClusterConfig(num_cpus=num_cpus, num_gpus=num_gpus)
    if expected is ConfigError:
        with pytest.raises(ConfigError, match="cluster.num_"):
            actor_gpus(cluster, nodes, n_actors)
    else:
        assert actor_gpus(cluster, nodes, n_actors) == expected
