"""cluster/: the local recipe for real; the others parse, compile and import."""
from __future__ import annotations

import importlib.util
import json
import os
import py_compile
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
DEMO_JOB = ROOT / "jobs" / "demo.toml"
RECIPES = ("local", "ssh", "kubernetes", "slurm")


def _env() -> dict[str, str]:
    """Workers must import this checkout's pairwise_dask, whatever is installed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["PYTHON"] = sys.executable
    env["DASK"] = str(Path(sys.executable).with_name("dask")) if Path(sys.executable).with_name("dask").exists() \
        else "dask"
    return env


def _pids(folder: Path) -> list[int]:
    f = folder / "pids"
    return [int(line.split()[1]) for line in f.read_text().splitlines()] if f.exists() else []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is as good as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.cluster
def test_local_recipe_runs_the_demo_job(tmp_path: Path) -> None:
    folder = tmp_path / "dask-local"
    start, stop = CLUSTER / "local" / "start.sh", CLUSTER / "local" / "stop.sh"
    started: list[int] = []
    try:
        # port 0: a free port, so parallel test runs and a user's own cluster don't collide
        res = subprocess.run(["bash", str(start), "-n", "2", "-p", "0", "--dashboard-port", "0",
                              "-d", str(folder), "--timeout", "60"],
                             env=_env(), capture_output=True, text=True, timeout=120)
        started = _pids(folder)
        assert res.returncode == 0, res.stdout + res.stderr
        assert len(started) == 3 and all(_alive(p) for p in started)
        address = json.loads((folder / "scheduler.json").read_text())["address"]
        assert address.startswith("tcp://127.0.0.1:")
        assert f"--scheduler {address}" in res.stdout and "stop.sh --dir" in res.stdout

        # a second start in the same folder refuses while the first cluster runs
        again = subprocess.run(["bash", str(start), "-d", str(folder)], env=_env(),
                               capture_output=True, text=True, timeout=30)
        assert again.returncode == 1 and "still running" in again.stderr

        out = tmp_path / "out"
        run = subprocess.run([sys.executable, "-m", "pairwise_dask.cli", "run", str(DEMO_JOB),
                              "--scheduler", address, "--out", str(out), "--quiet"],
                             env=_env(), capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert run.returncode == 0, run.stdout + run.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert summary["cluster"] == {"scheduler": address, "workers": 2, "workers_at_end": 2}
        assert summary["items"]["rows"] == 3107
        assert list((out / "labels").glob("*.parquet"))

        res = subprocess.run(["bash", str(stop), "-d", str(folder)], env=_env(),
                             capture_output=True, text=True, timeout=90)
        assert res.returncode == 0, res.stdout + res.stderr
        deadline = time.monotonic() + 15
        while any(_alive(p) for p in started) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(_alive(p) for p in started)
        assert not (folder / "scheduler.json").exists()
    finally:  # never leave processes behind, whatever failed above: only the ones we started
        for pid in started:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_every_recipe_has_a_readme() -> None:
    assert (CLUSTER / "README.md").exists()
    top = (CLUSTER / "README.md").read_text()
    for r in RECIPES:
        assert (CLUSTER / r / "README.md").exists(), r
        assert f"{r}/README.md" in top, r


def test_shell_scripts_parse_and_start_shows_help() -> None:
    for sh in CLUSTER.rglob("*.sh"):
        res = subprocess.run(["bash", "-n", str(sh)], capture_output=True, text=True)
        assert res.returncode == 0, (sh, res.stderr)
        assert os.access(sh, os.X_OK), f"{sh} is not executable"
    res = subprocess.run(["bash", str(CLUSTER / "local" / "start.sh"), "--help"], capture_output=True, text=True)
    assert res.returncode == 0 and "--workers" in res.stdout
    res = subprocess.run(["bash", str(CLUSTER / "local" / "start.sh"), "--bogus"], capture_output=True, text=True)
    assert res.returncode == 2


def test_stop_without_a_cluster_is_harmless(tmp_path: Path) -> None:
    res = subprocess.run(["bash", str(CLUSTER / "local" / "stop.sh"), "-d", str(tmp_path)],
                         capture_output=True, text=True, timeout=30)
    assert res.returncode == 0 and "No cluster" in res.stdout


def _load_yaml_documents(path: Path) -> list[dict]:
    yaml = pytest.importorskip("yaml")  # PyYAML: test-only, used when present
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def test_kubernetes_manifests_parse_and_are_consistent() -> None:
    docs = {p.name: _load_yaml_documents(p) for p in (CLUSTER / "kubernetes").glob("*.yaml")}
    (dc,) = docs["daskcluster.yaml"]
    assert dc["apiVersion"] == "kubernetes.dask.org/v1" and dc["kind"] == "DaskCluster"
    name = dc["metadata"]["name"]
    worker, scheduler = dc["spec"]["worker"], dc["spec"]["scheduler"]
    assert worker["replicas"] >= 1
    (w,) = worker["spec"]["containers"]
    (s,) = scheduler["spec"]["containers"]
    assert w["args"][0] == "dask-worker" and s["args"][0] == "dask-scheduler"
    assert w["image"] == s["image"]  # one software version across the cluster
    for c in (w, s):
        env = {e["name"]: e["value"] for e in c.get("env", [])}
        assert env["EXTRA_PIP_PACKAGES"].startswith("/data/wheels/pairwise_dask-")  # not on PyPI: the wheel
    svc_ports = {p["name"]: p["port"] for p in scheduler["service"]["ports"]}
    assert svc_ports == {"tcp-comm": 8786, "http-dashboard": 8787}
    assert {p["name"] for p in s["ports"]} >= {"tcp-comm", "http-dashboard"}
    assert scheduler["service"]["selector"]["dask.org/cluster-name"] == name
    # the workers and the job pod mount the same claim at the same path
    (pvc,) = docs["pvc.yaml"]
    assert pvc["kind"] == "PersistentVolumeClaim" and "ReadWriteMany" in pvc["spec"]["accessModes"]
    (job,) = docs["job-pod.yaml"]
    pod = job["spec"]["template"]["spec"]
    for spec, container in ((worker["spec"], w), (scheduler["spec"], s), (pod, pod["containers"][0])):
        assert spec["volumes"][0]["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
        assert container["volumeMounts"][0]["mountPath"] == "/data"
    args = pod["containers"][0]["args"]
    assert args[:2] == ["pairwise-dask", "run"]
    assert args[args.index("--scheduler") + 1] == f"tcp://{name}-scheduler:8786"
    assert pod["containers"][0]["image"] == w["image"]


@pytest.mark.parametrize("path", sorted(str(p.relative_to(CLUSTER)) for p in CLUSTER.rglob("*.py")))
def test_python_examples_compile_import_and_show_help(path: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    file = CLUSTER / path
    py_compile.compile(str(file), doraise=True, cfile=str(tmp_path / "x.pyc"))
    spec = importlib.util.spec_from_file_location(f"recipe_{file.stem}", file)
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)  # module level imports only what every install has
    assert callable(mod.main)
    with pytest.raises(SystemExit) as e:
        mod.main(["--help"])
    assert e.value.code == 0
    assert "job" in capsys.readouterr().out
    # what main() imports lazily exists where it can: our own API, and distributed's SSHCluster
    from pairwise_dask.config import load_settings  # noqa: F401
    from pairwise_dask.job import run  # noqa: F401
    if "SSHCluster" in file.read_text():
        from distributed import SSHCluster  # noqa: F401
    if "SLURMCluster" in file.read_text() and importlib.util.find_spec("dask_jobqueue"):
        from dask_jobqueue import SLURMCluster  # noqa: F401  (an optional install; checked when there)


def test_slurm_example_calls_run_with_the_client() -> None:
    text = (CLUSTER / "slurm" / "run_slurm.py").read_text()
    assert "run(settings, client=client" in text and "SLURMCluster(" in text
    sbatch = (CLUSTER / "slurm" / "driver.sbatch").read_text()
    assert sbatch.startswith("#!/bin/bash") and "#SBATCH" in sbatch and "run_slurm.py" in sbatch
