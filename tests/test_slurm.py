"""The slurm profile end to end, on a real one-node Slurm cluster on this machine.

scripts/slurm_local.sh (as root: installs Debian's slurm-wlm and munge if missing, starts munged,
slurmctld and slurmd, runs a command, stops them) runs `snakemake --profile profiles/slurm` on the stub
sandbox of workflow_sandbox. Every stage must run, every job must have gone through sbatch (the
controller logged its submission, the plugin kept its Slurm log), and no daemon may outlive the script,
on success or failure. The config's resources keep their `gpus: 0`, so a GPU-less node must accept
every job (no --gpus or --gres request).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import IO

import pytest
from workflow_sandbox import REPO, SNAKEMAKE, Sandbox, edit, make_sandbox

from research_rl import workflow as rrl
from research_rl.config import load_config

pytestmark = pytest.mark.slurm

SCRIPT = REPO / "scripts" / "slurm_local.sh"
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
DAEMONS = {"slurmctld", "slurmd", "slurmstepd"}
# About 100-180 s on a 2-CPU machine with Slurm installed; the limits leave room for a machine busy with
# other work (240 s for the script timed out there once, and 180 s for Snakemake once, as it finished).
WORKFLOW_LIMIT = 360  # seconds for Snakemake inside the cluster
SCRIPT_LIMIT = 600  # seconds for the script: install if missing, start, run, cancel, stop
STOP_GRACE = 30  # seconds for the script's trap to stop everything after SIGTERM
PROFILE_ARGS = [
    "--profile",
    "profiles/slurm",
    "--slurm-no-account",
    "--default-resources",
    "slurm_partition=debug",
    # The profile's 20 s suits a busy cluster; the stub's jobs take seconds.
    "--slurm-init-seconds-before-status-checks",
    "8",
]


def daemons(names: set[str]) -> list[int]:
    """Pids of live (not zombie) processes with one of these names."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text()
        except OSError:
            continue
        name, state = fields[fields.index("(") + 1 : fields.rindex(")")], fields[fields.rindex(")") + 2]
        if name in names and state != "Z":
            pids.append(int(stat.parent.name))
    return pids


def skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "slurm_local.sh needs root (it installs slurm-wlm and munge and starts daemons)"
    if not shutil.which("slurmctld") and not shutil.which("apt-get"):
        return "Slurm is not installed and apt-get is not there to install it"
    if daemons(DAEMONS):
        return "a Slurm daemon already runs on this machine; the local cluster would clash with it"
    return None


@pytest.fixture
def sandbox(tmp_path, monkeypatch) -> Sandbox:
    root, env, ran = make_sandbox(tmp_path, monkeypatch)
    # One CPU and little memory per job: two jobs run at once on a 2-CPU node, and any node fits them.
    for line in (
        "  default: {gpus: 0, cpus: 2, mem_mb: 8000, runtime: 60}",
        "    tiny: {gpus: 0, cpus: 1, mem_mb: 8000, runtime: 60}",
        "    tiny_eval: {gpus: 0, cpus: 1, mem_mb: 4000, runtime: 60}",
    ):
        edit("config/config.yaml", line, line.split("{")[0] + "{gpus: 0, cpus: 1, mem_mb: 500, runtime: 10}")
    return root, env, ran


def slurm_conf() -> bytes | None:
    return DEFAULT_CONF.read_bytes() if DEFAULT_CONF.exists() else None


def wait_or_stop(proc: subprocess.Popen, out: IO[str]) -> None:
    """Wait for the script; past SCRIPT_LIMIT, SIGTERM lets its trap stop the command, cancel the jobs
    and stop the daemons, and SIGKILL follows if that hangs."""
    try:
        proc.wait(timeout=SCRIPT_LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        out.write(f"\n[test] slurm_local.sh stopped after {SCRIPT_LIMIT} s\n")


def undo_leftovers(munge_before: list[int], conf_before: bytes | None) -> list[int]:
    """Kill by pid the daemons a killed script left behind, restore slurm.conf; the pids killed."""
    left = daemons(DAEMONS) + [pid for pid in daemons({"munged"}) if pid not in munge_before]
    for pid in left:  # no Slurm daemon ran before the test (skip_reason): these are the script's own
        os.kill(pid, signal.SIGKILL)
    if slurm_conf() != conf_before:
        DEFAULT_CONF.unlink(missing_ok=True)
        if conf_before is not None:
            DEFAULT_CONF.write_bytes(conf_before)
    return left


def run_cluster(cmd: list[str], root: Path, env: dict[str, str], state: Path) -> tuple[int, str]:
    """Run `cmd` in a local cluster with its state in `state`; the exit status and the output.
    Fails if the script left a daemon running or /etc/slurm/slurm.conf changed."""
    munge_before, conf_before = daemons({"munged"}), slurm_conf()
    log = state / "slurm_local.out"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            ["bash", str(SCRIPT), *cmd],
            cwd=root,
            env=dict(env, SLURM_LOCAL_STATE=str(state)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a timeout signals the script and its command, never pytest
        )
        try:
            wait_or_stop(proc, out)
        finally:
            conf_after = slurm_conf()
            left = undo_leftovers(munge_before, conf_before)
    output = log.read_text()
    assert not left, f"daemons outlived slurm_local.sh: {left}\n{output}"
    assert conf_after == conf_before, f"slurm_local.sh did not restore {DEFAULT_CONF}\n{output}"
    return proc.returncode, output


SKIP = skip_reason()


@pytest.mark.skipif(SKIP is not None, reason=SKIP or "")
def test_profile_runs_every_job_through_sbatch(sandbox, tmp_path_factory):
    root, env, ran = sandbox
    state = tmp_path_factory.mktemp("slurm-state")
    cmd = ["timeout", str(WORKFLOW_LIMIT), SNAKEMAKE, *PROFILE_ARGS]
    rc, output = run_cluster(cmd, root, env, state)
    assert rc == 0, output

    stages = rrl.plan(load_config("config/config.yaml"))
    assert sorted(ran()) == sorted(stage.name for stage in stages), output
    job_ids = re.findall(r"has been submitted with SLURM jobid (\d+) \(log: (\S+)\)", output)
    assert len(job_ids) == len(stages), f"one sbatch per stage expected\n{output}"
    controller = (state / "slurmctld.log").read_text()
    rule_dirs = {path.name for path in (root / "logs" / "slurm").glob("rule_*")}
    assert rule_dirs == {f"rule_{stage.rule}" for stage in stages}, "the plugin keeps every job's Slurm log"
    for job_id, log in job_ids:
        assert f"_slurm_rpc_submit_batch_job: JobId={job_id} " in controller, job_id
        assert re.search(rf"_job_complete: JobId={job_id} WEXITSTATUS 0\b", controller), job_id
        assert Path(log).is_file() and Path(log).is_relative_to(root / "logs" / "slurm"), log
