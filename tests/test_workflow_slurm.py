"""The SLURM profile on a real single-node SLURM cluster (slurmctld, slurmd, slurmdbd with
MariaDB, munge; Debian's packages, started by tests/slurm/cluster.sh and stopped by PID).

Only when asked: TRTFLOW_TEST_SLURM=1 (.ci/run sets it), since cluster.sh apt-installs those
packages as root and starts their daemons; without it the cluster tests skip and say so. With it,
the `slurm` extra must be installed (snakemake-executor-plugin-slurm).

Every job goes through sbatch (sacct lists it), the partitions and GPU requests follow the
backend resolved on the submit host, and the results equal a local run's. The heterogeneous case
(a submit host with a GPU, CPU nodes for the CPU rules) uses a stand-in TensorRT Python whose
probe reports a GPU: the CPU rules run on the cpu partition under the submit host's resolution,
and the GPU jobs, on a node that has no real GPU, fail with the node's name and requirement.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Dict, Iterator, List, NamedTuple

import pytest

from conftest import REPO, Workflow, resnet_entry, tiny_config

pytestmark = [pytest.mark.workflow, pytest.mark.slurm]

CLUSTER_SCRIPT = REPO / "tests" / "slurm" / "cluster.sh"
PACKAGES_MISSING = 77  # cluster.sh: the packages cannot be installed here
# rules whose jobs need the backend's device: a GPU under TensorRT (resources gpu=1)
DEVICE_RULES = {"engine", "benchmark", "validate", "reference", "baseline"}
TIMING_RULES = {"benchmark", "baseline"}
LOCAL_RULES = {"all", "summary", "verdicts"}  # the Snakefile's localrules: on the submit host
# status checks every few seconds, not the plugin's 40 s: the test's jobs take seconds
FAST_STATUS = ("--slurm-init-seconds-before-status-checks", "2")


class Submission(NamedTuple):
    rule: str
    slurm_id: str
    sbatch: str


OPT_IN = "TRTFLOW_TEST_SLURM"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Dict[str, str]]:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(f"{OPT_IN}=1 not set: tests/slurm/cluster.sh would apt-install slurm-wlm, "
                    "slurmdbd, munge and mariadb-server (as root) and start their daemons")
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.fail(f"{OPT_IN}=1 but no SLURM executor plugin: pip install -e '.[slurm]'")
    state = tmp_path_factory.mktemp("slurm")
    done = subprocess.run(["bash", str(CLUSTER_SCRIPT), "start", str(state)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode == PACKAGES_MISSING:
        pytest.skip(f"no SLURM cluster: {done.stderr.strip().splitlines()[-1]}")
    assert done.returncode == 0, f"cluster.sh start failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    try:
        yield client_env(state)
    finally:
        subprocess.run(["bash", str(CLUSTER_SCRIPT), "stop", str(state)], timeout=120)


def client_env(state: Path) -> Dict[str, str]:
    """The variables cluster.sh's env.sh exports (SLURM_CONF and the like)."""
    listed = subprocess.run(["bash", "-c", f". {state}/env.sh && env -0"], capture_output=True,
                            check=True).stdout.decode().split("\0")
    env = dict(item.split("=", 1) for item in listed if "=" in item)
    return {key: value for key, value in env.items() if os.environ.get(key) != value}


def small_matrix(**overrides) -> dict:
    return tiny_config(models={"net": resnet_entry({"random": True})}, **overrides)


def submissions(output: str) -> List[Submission]:
    """Each job the run submitted: its rule, SLURM job id and sbatch call (--verbose output),
    matched by the job's SLURM log folder (.snakemake/slurm_logs/rule_<rule>/<wildcards>/)."""
    calls = {}
    for match in re.finditer(r"^sbatch call: (sbatch .*?--output \S*/slurm_logs/(rule_\w+/\S*/)"
                             r"%j\.log.*?)(?: --wrap=|$)", output, flags=re.M):
        calls[match.group(2)] = match.group(1)
    result = []
    for match in re.finditer(r"submitted with SLURM jobid (\d+) \(log: \S*/slurm_logs/"
                             r"(rule_(\w+)/\S*/)\d+\.log\)", output):
        result.append(Submission(match.group(3), match.group(1), calls[match.group(2)]))
    return result


def planned(output: str) -> Dict[str, int]:
    """Snakemake's job count per rule for the run (its first 'Job stats' table)."""
    counts: Dict[str, int] = {}
    for line in output.split("Job stats:", 1)[1].splitlines()[3:]:
        match = re.match(r"^(\w+)\s+(\d+)\s*$", line.strip())
        if not match or match.group(1) == "total":
            break
        counts[match.group(1)] = int(match.group(2))
    return counts


def accounting(env: Dict[str, str], ids: List[str]) -> Dict[str, Dict[str, str]]:
    """sacct's record of each job: partition, allocated resources, state, node."""
    done = subprocess.run(["sacct", "-X", "-n", "-P", "-j", ",".join(ids),
                           "-o", "JobID,Partition,AllocTRES,State,NodeList"],
                          capture_output=True, text=True, check=True, env={**os.environ, **env})
    rows = [line.split("|") for line in done.stdout.splitlines() if line.strip()]
    return {row[0]: dict(zip(("partition", "tres", "state", "node"), row[1:])) for row in rows}


def run_on_cluster(workflow: Workflow, env: Dict[str, str], check: bool = True):
    done = workflow.run("--workflow-profile", str(REPO / "profiles" / "slurm"), "--verbose",
                        *FAST_STATUS, "all", cores=None, env=env, check=check, timeout=1500)
    (workflow.directory / "snakemake-output.txt").write_text(done.stdout + done.stderr)
    return done


def test_the_slurm_profile_runs_every_job_through_sbatch_with_local_results(
        cluster, tmp_path: Path) -> None:
    remote, local = Workflow(tmp_path / "cluster"), Workflow(tmp_path / "local")
    for workflow in (remote, local):
        workflow.directory.mkdir()
        workflow.write_config(small_matrix(backend="auto"))
    done = run_on_cluster(remote, cluster)
    output = done.stdout + done.stderr
    # this host has no GPU: auto is ONNX Runtime for the whole run, and the log says so
    assert "trtflow: backend auto resolved to ONNX Runtime on this host" in output
    jobs = submissions(output)
    remote_jobs = {rule: n for rule, n in planned(output).items() if rule not in LOCAL_RULES}
    assert set(remote_jobs) == {"weights", "export", "patch", "precision", "engine", "reference",
                                "baseline", "benchmark", "validate"}, output[-3000:]
    assert len(jobs) == sum(remote_jobs.values()), output[-3000:]
    # the profile needs no --cores: timing jobs get the profile's threads, their node alone
    records = accounting(cluster, [job.slurm_id for job in jobs])
    for job in jobs:
        record = records[job.slurm_id]
        assert record["state"] == "COMPLETED", (job, record)
        assert "--gpus" not in job.sbatch and " -p cpu" in job.sbatch, job
        assert record["partition"] == "cpu", (job, record)
        assert ("--exclusive" in job.sbatch) == (job.rule in TIMING_RULES), job
        if job.rule in TIMING_RULES:  # the whole node: its cores, and its (fake) GPU with them
            assert "--cpus-per-task=2" in job.sbatch and "cpu=2" in record["tres"], (job, record)
        else:
            assert "gres/gpu" not in record["tres"], (job, record)
    local.run("all")
    assert_same_results(remote, local)
    show(jobs, records)


def show(jobs: List[Submission], records: Dict[str, Dict[str, str]]) -> None:
    """Each job's sacct record and sbatch call (pytest -s shows them)."""
    for job in jobs:
        print(f"{job.rule} | {job.slurm_id} | " + " | ".join(records[job.slurm_id].values()))
        print(f"    {job.sbatch}")


def assert_same_results(remote: Workflow, local: Workflow) -> None:
    """The graphs byte for byte, the verdicts and the accuracy metrics equal (timings differ)."""
    graphs = sorted(p.relative_to(local.directory) for p in local.path("results/onnx").rglob("*.onnx"))
    assert graphs
    for graph in graphs:
        assert remote.path(str(graph)).read_bytes() == local.path(str(graph)).read_bytes(), graph
    validations = sorted(local.path("results/validation").rglob("*.json"))
    assert len(validations) == 2
    for path in validations:
        ours = json.loads(remote.path(str(path.relative_to(local.directory))).read_text())
        theirs = json.loads(path.read_text())
        assert ours["verdict"] == theirs["verdict"] == "passed"
        assert ours["outputs"] == theirs["outputs"]
    assert json.loads(remote.path("results/verdicts.json").read_text()) == json.loads(
        local.path("results/verdicts.json").read_text())


def stand_in_tensorrt_python(directory: Path) -> Path:
    """An interpreter whose TensorRT probe reports a GPU (as on a GPU submit host) and which
    otherwise is this Python, without tensorrt: what the GPU jobs find on this cluster's node."""
    script = directory / "trt-python"
    script.write_text(
        "#!/bin/sh\n"
        'case "$1" in */probe_tensorrt.py)\n'
        "  echo '{\"tensorrt\": \"8.6.1\", \"gpus\": [{\"index\": 0, \"name\": \"stand-in GPU\","
        " \"compute_capability\": \"9.0\"}]}'; exit 0;;\n"
        "esac\n"
        f'exec {sys.executable} "$@"\n')
    script.chmod(0o755)
    return script


def test_a_gpu_submit_host_resolves_for_every_job_and_gpu_jobs_check_their_node(
        cluster, tmp_path: Path) -> None:
    workflow = Workflow(tmp_path)
    workflow.write_config(small_matrix(
        backend="auto", tensorrt={"python": str(stand_in_tensorrt_python(tmp_path))}))
    done = run_on_cluster(workflow, cluster, check=False)
    output = done.stdout + done.stderr
    assert done.returncode != 0
    assert "trtflow backend: tensorrt [tensorrt-8.6.1-sm90]" in output
    jobs = submissions(output)
    records = accounting(cluster, [job.slurm_id for job in jobs])
    show(jobs, records)
    cpu_rules = {"weights", "export", "patch", "precision"}
    assert {job.rule for job in jobs} >= cpu_rules | {"reference", "engine"}, output[-3000:]
    for job in jobs:
        record = records[job.slurm_id]
        if job.rule in DEVICE_RULES:  # a GPU asked for, on the GPU partition
            assert " -p gpu" in job.sbatch and "--gpus=1" in job.sbatch, job
            assert record["partition"] == "gpu" and "gres/gpu=1" in record["tres"], (job, record)
            assert record["state"] == "FAILED", (job, record)
        else:
            assert " -p cpu" in job.sbatch and "--gpus" not in job.sbatch, job
            assert record["partition"] == "cpu" and record["state"] == "COMPLETED", (job, record)
    # the CPU node's patch job wrote where the submit host's resolution says (it used to
    # re-resolve on its node, to ONNX Runtime, and write another path)
    assert workflow.path("results/onnx/net/tensorrt/patched.onnx").exists()
    assert not workflow.path("results/onnx/net/onnxruntime").exists()
    node = socket.gethostname()
    engine_log = next(workflow.path("results/logs/engine").glob("*.log")).read_text()
    assert (f"node {node} cannot run this job: the run's backend needs TensorRT 8.6.1 and a GPU "
            "of compute capability 9.0; this node has cannot import tensorrt") in engine_log
    reference_log = workflow.path("results/logs/reference/net-cuda.log").read_text()
    assert (f"node {node} cannot run this job: the run's backend needs PyTorch with a CUDA GPU "
            "of compute capability 9.0; this node has PyTorch sees no CUDA GPU") in reference_log
    assert not list(workflow.path("results").rglob("*.engine")) and not workflow.path(
        "results/reference").exists()


def test_a_host_without_a_gpu_plans_a_pinned_tensorrt_run(tmp_path: Path) -> None:
    """tensorrt.target: a login node without a GPU (this machine) plans the TensorRT run, paths
    and GPU requests included, without probing; the GPU jobs check their nodes."""
    workflow = Workflow(tmp_path)
    workflow.write_config(small_matrix(backend="tensorrt", tensorrt={
        "python": "/nodes/only/python", "target": {"tensorrt": "8.6.1", "compute_capability": "9.0"}}))
    done = workflow.run("-n", "--printshellcmds", "all")
    output = done.stdout + done.stderr
    assert "trtflow backend: tensorrt [tensorrt-8.6.1-sm90] (tensorrt.target in config" in output
    assert "results/engines/net/tensorrt-8.6.1-sm90/fp16-small.engine" in output
    assert "/nodes/only/python" in output
    assert re.search(r"engine\.py .*--requires '\{\"compute_capability\": \"9\.0\", "
                     r"\"tensorrt\": \"8\.6\.1\"\}'", output), output[-3000:]
