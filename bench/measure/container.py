"""Docker isolation: the measurement worker in a container built here, with nothing pulled.

The image is a tiny root file system imported from an in-memory tarball (``docker import``):
a few empty folders plus the host's top-level symlinks (merged ``/usr``). The host's system
libraries, interpreter, virtual environment, worker folder and model folder are bind-mounted
read-only at their own paths, so the container runs the host's exact Python stack under
cgroup limits: CPU quota, cpuset, memory (resident, no swap) and no network.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import sys
import tarfile
from pathlib import Path

from bench.measure.isolation import (
    IsolationUnavailable,
    MeasurementError,
    check_cpuset,
    parse_worker_output,
    thread_env,
)
from bench.measure.profiles import Profile

IMAGE_REPOSITORY = "medq-bench-worker"
ROOTFS_DIRS = ("dev", "etc", "proc", "root", "run", "sys", "tmp", "usr")
TOP_LEVEL = ("bin", "lib", "lib32", "lib64", "libx32", "sbin")
HOST_FILES = ("/etc/ld.so.cache",)


def rootfs_tarball() -> bytes:
    """The image's root file system: empty folders and the host's top-level symlinks."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in ROOTFS_DIRS:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name in TOP_LEVEL:
            if os.path.islink(f"/{name}"):
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, os.readlink(f"/{name}")
                tar.addfile(info)
    return buffer.getvalue()


def docker_client():
    """A client of a Docker engine that answers, or ``IsolationUnavailable`` saying why not."""
    try:
        import docker
    except ImportError as err:
        raise IsolationUnavailable(
            "docker isolation needs the 'docker' Python package (pip install 'medq-bench[full]')"
        ) from err
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except docker.errors.DockerException as err:
        raise IsolationUnavailable(
            f"docker isolation needs a running Docker engine, none answered: {err}"
        ) from err
    return client


def ensure_image(client) -> str:
    """Import the worker image once; its tag is a hash of the root file system."""
    import docker

    data = rootfs_tarball()
    image = f"{IMAGE_REPOSITORY}:{hashlib.sha256(data).hexdigest()[:12]}"
    try:
        client.images.get(image)
    except docker.errors.ImageNotFound:
        repository, tag = image.split(":")
        client.api.import_image_from_data(data, repository=repository, tag=tag)
    return image


def host_mounts(extra: list[Path]) -> dict[str, dict[str, str]]:
    """Read-only binds of the host paths the worker needs, at their own paths."""
    dirs = [Path("/usr")] + [Path(f"/{n}") for n in TOP_LEVEL if Path(f"/{n}").is_dir()]
    dirs = [d for d in dirs if not d.is_symlink()]
    dirs += [Path(sys.base_prefix), Path(sys.prefix), *extra]
    kept: list[Path] = []
    for d in sorted({p.absolute() for p in dirs}, key=lambda p: len(p.parts)):
        if not any(d.is_relative_to(k) for k in kept):
            kept.append(d)
    kept += [Path(f) for f in HOST_FILES if Path(f).is_file()]
    return {str(p): {"bind": str(p), "mode": "ro"} for p in kept}


def _limits(profile: Profile) -> dict:
    limits: dict = {}
    if profile.cpu_quota is not None:
        limits["nano_cpus"] = int(profile.cpu_quota * 1e9)
    if profile.cpuset is not None:
        limits["cpuset_cpus"] = ",".join(str(c) for c in profile.cpuset)
    if profile.memory_limit_mb is not None:
        limits["mem_limit"] = limits["memswap_limit"] = f"{profile.memory_limit_mb}m"
    return limits


def run_in_container(
    spec: dict, profile: Profile, worker_path: Path, timeout_s: float
) -> tuple[dict, dict[str, str]]:
    """Run the worker in a fresh container; returns its result and what was enforced."""
    check_cpuset(profile)
    client = docker_client()
    image = ensure_image(client)
    inputs = [Path(spec["accuracy"]["inputs"]).parent] if spec.get("accuracy") else []
    mounts = host_mounts([worker_path.parent, Path(spec["model"]).parent, *inputs])
    container = client.containers.run(
        image,
        command=[sys.executable, str(worker_path), json.dumps(spec)],
        detach=True,
        environment={**thread_env(profile), "PYTHONDONTWRITEBYTECODE": "1"},
        volumes=mounts,
        network_disabled=True,
        network_mode="none",
        working_dir="/tmp",
        **_limits(profile),
    )
    try:
        try:
            status = container.wait(timeout=timeout_s)
        except Exception as err:
            raise MeasurementError(f"container did not finish within {timeout_s:g} s") from err
        stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
        stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
        container.reload()
        oom_killed = bool(container.attrs["State"].get("OOMKilled"))
    finally:
        container.remove(force=True)
    result = parse_worker_output(
        status["StatusCode"], stdout, stderr, profile.memory_limit_mb, oom_killed
    )
    enforced = {
        "threads": "session options" + (" + OMP/MKL/OpenBLAS env" if thread_env(profile) else ""),
        "cpuset": "cgroup cpuset" if profile.cpuset is not None else "none",
        "memory": "cgroup memory, no swap" if profile.memory_limit_mb is not None else "none",
        "cpu_quota": "cgroup CFS quota" if profile.cpu_quota is not None else "none",
        "network": "none",
        "image": image,
    }
    return result, enforced
