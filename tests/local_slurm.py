"""A private single-node SLURM (munged + slurmctld + slurmd) for tests and for trying ``sbatch run.sh``.

Everything lives in one folder of its own: the munge key and socket, ``slurm.conf`` (this
machine's CPUs and memory, one partition), the daemons' state, spool, logs and PID files. The
daemons are started with those PID files and stopped by the PIDs in them, never by name, so a
machine's own SLURM (if any) is left alone. Free TCP ports are picked for slurmctld and slurmd.

In a container without systemd or a writable cgroup hierarchy SLURM still runs with
``proctrack/linuxproc`` (processes tracked through /proc parentage) and ``task/none``.

Command line (as root; ``install`` needs Debian's apt)::

    python tests/local_slurm.py install          # apt-get install slurmctld slurmd slurm-client munge
    python tests/local_slurm.py up /tmp/slurm    # prints the SLURM_CONF to export
    SLURM_CONF=/tmp/slurm/slurm.conf sbatch run.sh demo
    python tests/local_slurm.py down /tmp/slurm
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Optional

PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
DAEMONS = ("munged", "slurmctld", "slurmd")


class SlurmUnavailable(RuntimeError):
    """SLURM cannot be installed or started here; the message says why (tests skip with it)."""


def missing_binaries() -> list[str]:
    return [name for name in ("munged", "slurmctld", "slurmd", "sbatch", "srun", "scontrol", "squeue", "scancel", "sinfo")
            if shutil.which(name) is None and not Path("/usr/sbin", name).exists()]


def install() -> None:
    """apt-get install the SLURM packages (root on Debian/Ubuntu only)."""
    if not missing_binaries():
        return
    if os.geteuid() != 0:
        raise SlurmUnavailable(f"SLURM is not installed ({', '.join(missing_binaries())} missing) and installing needs root")
    if shutil.which("apt-get") is None:
        raise SlurmUnavailable("SLURM is not installed and this machine has no apt-get (Debian/Ubuntu only)")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for command in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES]):
        result = subprocess.run(command, env=env, capture_output=True, text=True)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{' '.join(command)} failed ({result.returncode}): {result.stderr[-800:]}")
    if missing_binaries():
        raise SlurmUnavailable(f"installed {PACKAGES} but still missing: {missing_binaries()}")


def _binary(name: str) -> str:
    found = shutil.which(name) or str(Path("/usr/sbin", name))
    return found


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise SlurmUnavailable("cannot read MemTotal from /proc/meminfo")


class LocalSlurm:
    """One private single-node cluster rooted at ``root`` (``start()`` / ``stop()``)."""

    def __init__(self, root: Path, cpus: Optional[int] = None, memory_mb: Optional[int] = None) -> None:
        self.root = Path(root).resolve()
        self.cpus = cpus or os.cpu_count() or 1
        # Leave the system some memory; a job asking for more than this is refused at submit time.
        self.memory_mb = memory_mb or max(1024, int(_memory_mb() * 0.9))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.root / "slurm.conf"

    # -- files --------------------------------------------------------------------------------
    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """The environment for sbatch/squeue/scontrol against this cluster."""
        return dict(os.environ, SLURM_CONF=str(self.conf))

    def write_config(self) -> None:
        for sub in ("state", "spool", "munge"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        if not key.exists():
            key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        user = "root" if os.geteuid() == 0 else os.environ.get("USER", "nobody")
        self.conf.write_text("\n".join([
            "ClusterName=local",
            f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={self.log_file('slurmctld')}",
            f"SlurmdLogFile={self.log_file('slurmd')}",
            "SlurmctldDebug=info",
            "SlurmdDebug=info",
            # No systemd or delegated cgroups in a container: track processes through /proc.
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "SchedulerType=sched/backfill",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU_Memory",
            "ReturnToService=2",
            "JobRequeue=1",
            "KillWait=10",
            "MinJobAge=600",
            "SlurmctldTimeout=30",
            "SlurmdTimeout=30",
            "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={self.memory_mb} State=UNKNOWN",
            "PartitionName=local Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO",
            "",
        ]))

    # -- daemons ------------------------------------------------------------------------------
    def _run_daemon(self, daemon: str, command: list[str]) -> None:
        result = subprocess.run(command, env=self.env, capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise SlurmUnavailable(f"{daemon} did not start ({result.returncode}): {result.stderr.strip()[-800:]}"
                                   f"{self._log_tail(daemon)}")
        if not self._wait(lambda: self.pid(daemon) is not None, 20):
            raise SlurmUnavailable(f"{daemon} wrote no PID file {self.pid_file(daemon)}{self._log_tail(daemon)}")

    def _log_tail(self, daemon: str) -> str:
        log = self.log_file(daemon)
        return f"\n{log}:\n" + "\n".join(log.read_text(errors="replace").splitlines()[-15:]) if log.exists() else ""

    @staticmethod
    def _wait(condition, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.2)
        return False

    def pid(self, daemon: str) -> Optional[int]:
        """The PID of a running daemon of this cluster (from its PID file), else None."""
        try:
            pid = int(self.pid_file(daemon).read_text().split()[0])
        except (FileNotFoundError, ValueError, IndexError):
            return None
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        return pid

    def start(self, timeout: float = 60) -> None:
        """Write the configuration and start munged, slurmctld, slurmd; wait until the node is idle."""
        missing = missing_binaries()
        if missing:
            raise SlurmUnavailable(f"SLURM binaries missing: {', '.join(missing)} (python tests/local_slurm.py install)")
        self.write_config()
        self._run_daemon("munged", [
            _binary("munged"), "--force", f"--key-file={self.root / 'munge' / 'munge.key'}",
            f"--socket={self.munge_socket}", f"--pid-file={self.pid_file('munged')}",
            f"--log-file={self.log_file('munged')}", f"--seed-file={self.root / 'munge' / 'munge.seed'}",
        ])
        # -i: ignore state left by an earlier cluster in this folder.
        self._run_daemon("slurmctld", [_binary("slurmctld"), "-i", "-f", str(self.conf)])
        self._run_daemon("slurmd", [_binary("slurmd"), "-f", str(self.conf), "-N", self.node])
        if not self._wait(self._node_ready, timeout):
            state = self.scontrol("show", "node", self.node, check=False)
            raise SlurmUnavailable(f"node {self.node} never became idle:\n{state}{self._log_tail('slurmd')}{self._log_tail('slurmctld')}")

    def _node_ready(self) -> bool:
        result = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return result.returncode == 0 and result.stdout.strip().rstrip("*") in ("idle", "mixed", "allocated")

    def jobs(self) -> list[str]:
        """Ids of the jobs this cluster still has queued or running."""
        result = subprocess.run(["squeue", "-h", "-o", "%i"], env=self.env, capture_output=True, text=True)
        return result.stdout.split() if result.returncode == 0 else []

    def stop(self, timeout: float = 20) -> None:
        """Cancel this cluster's jobs (while slurmd can still end their steps), then stop the
        daemons by the PIDs in their PID files, slurmd first."""
        if self.pid("slurmctld") is not None and self.pid("slurmd") is not None:
            jobs = self.jobs()
            if jobs:
                subprocess.run(["scancel", *jobs], env=self.env, capture_output=True)
                self._wait(lambda: not self.jobs(), timeout)
        for daemon in reversed(DAEMONS):
            pid = self.pid(daemon)
            if pid is None:
                continue
            os.kill(pid, signal.SIGTERM)
            if not self._wait(lambda: not _alive(pid), timeout):
                os.kill(pid, signal.SIGKILL)
                self._wait(lambda: not _alive(pid), 5)

    def scontrol(self, *args: str, check: bool = True) -> str:
        result = subprocess.run(["scontrol", *args], env=self.env, capture_output=True, text=True)
        if check and result.returncode != 0:
            raise RuntimeError(f"scontrol {' '.join(args)} failed: {result.stderr.strip()}")
        return result.stdout + result.stderr

    def __enter__(self) -> "LocalSlurm":
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie child of ours counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def main(argv: list[str]) -> int:
    usage = "usage: local_slurm.py install | up DIR | down DIR"
    if not argv:
        print(usage, file=sys.stderr)
        return 2
    try:
        if argv[0] == "install":
            install()
            print("SLURM packages installed")
        elif argv[0] == "up" and len(argv) == 2:
            install()
            cluster = LocalSlurm(Path(argv[1]))
            cluster.start()
            print(f"export SLURM_CONF={cluster.conf}")
            print(f"# node {cluster.node}: {cluster.cpus} CPUs, {cluster.memory_mb} MB; "
                  f"PIDs munged={cluster.pid('munged')} slurmctld={cluster.pid('slurmctld')} slurmd={cluster.pid('slurmd')}")
        elif argv[0] == "down" and len(argv) == 2:
            LocalSlurm(Path(argv[1])).stop()
            print("stopped")
        else:
            print(usage, file=sys.stderr)
            return 2
    except SlurmUnavailable as error:
        print(f"local_slurm: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
