"""Run one timing under a hardware profile's limits, in a fresh process or a container.

``process`` isolation starts the worker with thread caps (runtime pools + OMP/MKL/OpenBLAS
environment), CPU affinity (``os.sched_setaffinity``) and an address-space limit
(``RLIMIT_AS``, which caps virtual memory and is stricter than a resident-memory cap).
A ``cpu_quota`` cannot be enforced without cgroups: that is recorded in ``enforced``.
``docker`` isolation runs the same worker in a container (see ``bench.measure.container``).

A worker never outlives the process that started it: on Linux it is killed when its parent dies
(``PR_SET_PDEATHSIG``). And it holds its parent's `worker_guard` lock (an inherited file
descriptor with an exclusive ``flock``), so a new measurement of the same store waits until
every worker of an earlier, killed one is gone, on any platform.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.measure import _worker
from bench.measure.profiles import Profile, ProfileError
from bench.measure.protocol import summarize

WORKER_PATH = Path(_worker.__file__).resolve()
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")
DEFAULT_TIMEOUT_S = 1800.0
WORKER_WAIT_S = 10.0
"""How long a measurement waits for the workers of an earlier, killed one to be gone."""
PR_SET_PDEATHSIG = 1
_STAGES = {"import": "importing the runtime", "load": "loading the model", "run": "running",
           "accuracy": "running the test inputs (accuracy mode)"}


class MeasurementError(RuntimeError):
    """A measurement failed; ``memory`` is True when it failed for exceeding the memory limit."""

    def __init__(self, message: str, memory: bool = False) -> None:
        super().__init__(message)
        self.memory = memory


class IsolationUnavailable(MeasurementError):
    """The isolation a profile asks for cannot be set up on this machine."""


class WorkerStillRunning(MeasurementError):
    """A timing worker of an earlier measurement of the same store is still alive."""


@contextmanager
def worker_guard(path: Path, wait_s: float = WORKER_WAIT_S) -> Iterator[int]:
    """An exclusive ``flock`` on ``path``, as a file descriptor to hand to every worker
    (`measure_isolated(hold_fd=...)`): the lock stays held while this process or any worker
    that inherited it lives. Waits up to ``wait_s`` for an earlier holder to be gone, then
    raises WorkerStillRunning."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise WorkerStillRunning(
                        f"a timing worker of an earlier bench measure is still running (it "
                        f"holds {path}); nothing was measured: try again once it has "
                        "finished") from None
                time.sleep(0.05)
        yield fd
    finally:
        os.close(fd)


@dataclass(frozen=True)
class Measurement:
    """Samples (seconds per batch) and the conditions they were taken under."""

    profile: str
    model_path: str
    isolation: str
    batch_size: int
    input_shape: tuple[int, ...]
    samples_s: list[float]
    summary: dict
    load_time_s: float
    peak_rss_mb: float
    providers: list[str]
    runtime_version: str
    threads: dict[str, int]
    affinity: list[int]
    memory_limit_mb: int | None
    enforced: dict[str, str] = field(default_factory=dict)
    session_config: dict[str, str] = field(default_factory=dict)
    runtime: str = "onnxruntime"
    runtime_coverage: dict | None = None
    """How the runtime executes the model's layers, where it says (OpenVINO's runtime model)."""
    logits: list[list[float]] | None = None
    """The model's logits over the test inputs (accuracy mode), one list per image."""

    def to_dict(self) -> dict:
        """Plain JSON-ready dict."""
        return asdict(self)


def worker_spec(
    model_path: str | Path, profile: Profile, input_shape: Sequence[int], batch_size: int,
    session_config: Mapping[str, str] | None = None, inputs: str | Path | None = None,
) -> dict:
    """The JSON spec the worker reads; ``inputs``: a test-inputs file to run after timing."""
    return {
        "accuracy": {"inputs": str(Path(inputs).resolve())} if inputs is not None else None,
        "session_config": dict(session_config or {}),
        "model": str(Path(model_path).resolve()),
        "runtime": profile.runtime,
        "provider": profile.execution_provider,
        "openvino": profile.openvino.model_dump(),
        "intra_op": profile.threads.intra_op,
        "inter_op": profile.threads.inter_op,
        "batch_size": batch_size,
        "input_shape": [int(d) for d in input_shape],
        "warmup": profile.warmup,
        "min_repetitions": profile.min_repetitions,
        "min_duration_s": profile.min_duration_s,
        "seed": 0,
    }


def thread_env(profile: Profile) -> dict[str, str]:
    """Environment variables that cap OpenMP/BLAS pools at the profile's intra-op threads."""
    if profile.threads.intra_op == 0:
        return {}
    return dict.fromkeys(THREAD_ENV, str(profile.threads.intra_op))


def parse_worker_output(
    returncode: int, stdout: str, stderr: str, memory_limit_mb: int | None, oom_killed: bool
) -> dict:
    """The worker's JSON result, or a ``MeasurementError`` explaining the failure."""
    limit = f"the memory limit of {memory_limit_mb} MB"
    if oom_killed:
        raise MeasurementError(f"worker exceeded {limit} and was killed (OOM)", memory=True)
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    result = json.loads(lines[-1]) if lines else None
    if result is not None and result["ok"] and returncode == 0:
        return result
    if result is not None:
        detail = f"failed while {_STAGES.get(result['stage'], result['stage'])}: {result['error']}"
        memory = bool(result["memory"]) or _worker.is_memory_failure(stderr)
    else:
        tail = stderr.strip()[-2000:]
        detail = f"exited with code {returncode} without a result; stderr: {tail}"
        memory = _worker.is_memory_failure(stderr)
    if memory and memory_limit_mb is not None:
        raise MeasurementError(f"worker exceeded {limit}: {detail}", memory=True)
    raise MeasurementError(f"worker {detail}", memory=memory)


def _process_limits(profile: Profile) -> Callable[[], None]:
    """What the worker does before it runs the worker script (in the child, after fork): tie
    its life to this process, then take the profile's CPU and memory limits."""
    cpuset = profile.cpuset
    limit = profile.memory_limit_mb
    parent = os.getpid()
    prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") \
        else None

    def apply() -> None:
        if prctl is not None:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)
        if cpuset is not None:
            os.sched_setaffinity(0, cpuset)
        if limit is not None:
            nbytes = limit * 1024 * 1024
            resource.setrlimit(resource.RLIMIT_AS, (nbytes, nbytes))

    return apply


def check_cpuset(profile: Profile) -> None:
    """Fail clearly when the profile pins CPUs this process may not use."""
    if profile.cpuset is None:
        return
    available = os.sched_getaffinity(0)
    missing = sorted(set(profile.cpuset) - available)
    if missing:
        raise IsolationUnavailable(
            f"profile {profile.name!r} pins CPUs {missing}, not available here "
            f"(available: {sorted(available)})"
        )


def _machine_memory_mb() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1024 * 1024)
    except (AttributeError, ValueError, OSError):
        return None


def check_machine(profile: Profile) -> None:
    """ProfileError naming the key when a limit of the profile is one this machine cannot
    give: a memory limit above its RAM (or above this process's own address-space limit), a
    CPU quota above its CPUs."""
    where = f"profile {profile.name!r}"
    limit = profile.memory_limit_mb
    ram = _machine_memory_mb()
    if limit is not None and ram is not None and limit > ram:
        raise ProfileError(f"{where}: memory_limit_mb = {limit} is more than this machine's "
                           f"RAM ({ram} MB): a limit the machine cannot give emulates nothing; "
                           f"set it to at most {ram}")
    hard = resource.getrlimit(resource.RLIMIT_AS)[1]
    if limit is not None and hard != resource.RLIM_INFINITY and limit * 1024 * 1024 > hard:
        raise ProfileError(f"{where}: memory_limit_mb = {limit} is more than this process may "
                           f"set (its address-space limit is {hard // (1024 * 1024)} MB)")
    cpus = os.cpu_count()
    if profile.cpu_quota is not None and cpus is not None and profile.cpu_quota > cpus:
        raise ProfileError(f"{where}: cpu_quota = {profile.cpu_quota:g} is more than this "
                           f"machine's {cpus} CPUs")


def check_isolation(profile: Profile) -> None:
    """Raise ``IsolationUnavailable`` (or ProfileError, for limits beyond this machine) now if
    this machine cannot give the profile's isolation."""
    check_machine(profile)
    check_cpuset(profile)
    if profile.isolation == "docker":
        from bench.measure.container import docker_client

        docker_client()


def _run_process(spec: dict, profile: Profile, timeout_s: float, hold_fd: int | None = None
                 ) -> tuple[dict, dict[str, str]]:
    check_machine(profile)
    check_cpuset(profile)
    env = {**os.environ, **thread_env(profile), "PYTHONDONTWRITEBYTECODE": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, str(WORKER_PATH), json.dumps(spec)],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout_s,
            preexec_fn=_process_limits(profile),
            pass_fds=() if hold_fd is None else (hold_fd,),
            check=False,
        )
    except subprocess.TimeoutExpired as err:
        raise MeasurementError(f"worker did not finish within {timeout_s:g} s") from err
    result = parse_worker_output(
        proc.returncode, proc.stdout, proc.stderr, profile.memory_limit_mb, False
    )
    enforced = {
        "threads": "session options" + (" + OMP/MKL/OpenBLAS env" if thread_env(profile) else ""),
        "cpuset": "sched_setaffinity" if profile.cpuset is not None else "none",
        "memory": "RLIMIT_AS" if profile.memory_limit_mb is not None else "none",
        "cpu_quota": "not enforced (process isolation)" if profile.cpu_quota else "none",
    }
    return result, enforced


def measure_isolated(
    model_path: str | Path,
    profile: Profile,
    input_shape: Sequence[int],
    batch_size: int | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    hold_fd: int | None = None,
    session_config: Mapping[str, str] | None = None,
    inputs: str | Path | None = None,
) -> Measurement:
    """Time ``model_path`` under ``profile`` in a fresh worker.

    ``input_shape`` is the shape of one sample, without the batch axis; ``batch_size``
    defaults to the profile's first batch size. For the ``torch`` runtime ``model_path`` is
    a whole pickled ``nn.Module`` (``torch.save(model)``; trusted files only). ``hold_fd``: a
    `worker_guard` descriptor the (process) worker inherits. ``session_config``: ONNX Runtime
    session config entries (those the cell was deployed with). ``inputs``: a test-inputs file
    (in the model's folder) to run the model over after timing (accuracy mode).
    """
    batch = batch_size if batch_size is not None else profile.batch_sizes[0]
    spec = worker_spec(model_path, profile, input_shape, batch, session_config, inputs)
    if profile.isolation == "docker":
        from bench.measure.container import run_in_container

        result, enforced = run_in_container(spec, profile, WORKER_PATH, timeout_s)
    else:
        result, enforced = _run_process(spec, profile, timeout_s, hold_fd)
    return Measurement(
        profile=profile.name,
        model_path=spec["model"],
        isolation=profile.isolation,
        batch_size=batch,
        input_shape=tuple(spec["input_shape"]),
        samples_s=result["samples_s"],
        summary=summarize(result["samples_s"], profile.percentiles),
        load_time_s=result["load_time_s"],
        peak_rss_mb=result["peak_rss_mb"],
        providers=result["providers"],
        runtime_version=result["runtime_version"],
        threads={"intra_op": profile.threads.intra_op, "inter_op": profile.threads.inter_op},
        affinity=result["affinity"],
        memory_limit_mb=profile.memory_limit_mb,
        enforced=enforced,
        session_config=spec["session_config"],
        runtime=profile.runtime,
        runtime_coverage=result.get("runtime_coverage"),
        logits=result.get("logits"),
    )


def measure_profile(
    model_path: str | Path, profile: Profile, input_shape: Sequence[int]
) -> list[Measurement]:
    """One ``measure_isolated`` per batch size of the profile, each in its own worker."""
    return [measure_isolated(model_path, profile, input_shape, b) for b in profile.batch_sizes]
