"""Private PostgreSQL and Redis servers on free loopback ports, for tests that restart them: the
shared servers on 5432/6379 serve every engineer and are never restarted by a test.

PostgreSQL refuses to run as root, so as root the cluster is built and run as the `postgres` OS user.
Both are throwaway: no fsync, no persistence (Redis loses its queue on restart, as a crashed
non-persistent broker would)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from celery import Celery

from gate.runs.queue import make_celery, store_queue_at
from gate.settings import Settings

STARTUP_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait(ready, what: str, timeout: float = STARTUP_TIMEOUT_S) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not come up within {timeout}s")
        time.sleep(0.05)


class PrivateRedis:
    def __init__(self, folder: Path):
        self.folder, self.port = folder, free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> PrivateRedis:
        with open(self.folder / "redis.log", "ab") as log:  # the child keeps its own descriptor
            self.process = subprocess.Popen(
                [
                    "redis-server",
                    "--port",
                    str(self.port),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(self.folder),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        _wait(lambda: self._pings(client), f"redis-server on port {self.port}")
        return self

    @staticmethod
    def _pings(client: redis.Redis) -> bool:
        try:
            return bool(client.ping())
        except redis.ConnectionError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    def restart(self) -> None:
        """Down and up on the same port, with an empty dataset: every queued message is lost."""
        self.stop()
        self.start()


class PrivatePostgres:
    def __init__(self, folder: Path):
        self.folder, self.port = folder / "postgres", free_port()  # owned by the server's user
        self.data = self.folder / "data"
        self.bin = Path(max(glob.glob("/usr/lib/postgresql/*/bin/initdb"))).parent
        self.user = "postgres" if os.geteuid() == 0 else None

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        subprocess.run(command, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PrivatePostgres:
        if not self.data.exists():
            self.folder.mkdir()
            if self.user:
                entry = pwd.getpwnam(self.user)
                os.chown(self.folder, entry.pw_uid, entry.pw_gid)
            self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "postgres.log"), "-w", "start")
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def restart(self) -> None:
        """A fast shutdown (every connection is cut) and a start on the same port."""
        self.stop()
        self.start()


def private_folder() -> Path:
    """World-traversable, so the `postgres` user can reach its own folder inside."""
    folder = Path(tempfile.mkdtemp(prefix="lpips-gate-services-"))
    folder.chmod(0o755)
    return folder


def remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)


# --- material shared by the worker tests --------------------------------------------------------


def copy_weights(folder: Path) -> Path:
    """The provisioned weights (manifest included), copied so that a concurrent `weights fetch` by
    someone else cannot change them under a running test. Fails if they were never provisioned."""
    from gate.settings import Settings

    source = Settings().weights_dir
    manifest = source / "manifest.json"
    if not manifest.is_file():
        raise FileNotFoundError(f"no weights in {source}: run `lpips-gate weights fetch --net alex --net vgg`")
    target = folder / "weights"
    shutil.copytree(source, target)
    return target


def write_pairs(
    root: Path,
    count: int,
    *,
    size: int = 64,
    prefix: str = "p",
    first_seed: int = 0,
    poison: tuple[int, ...] = (),
    poison_suffix: str = ".poison.png",
) -> list[tuple[str, str]]:
    """`count` (ref, cand) PNG pairs under `root`, as paths relative to it: seeded noise, the candidate
    perturbed by an amount that grows with the index, so every distance differs. Pairs whose index is
    in `poison` get a candidate named with `poison_suffix`."""
    import numpy as np
    from PIL import Image

    pairs = []
    for i in range(count):
        rng = np.random.default_rng(first_seed + i)
        ref = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        noise = rng.integers(-(8 + 4 * i), 9 + 4 * i, ref.shape)
        cand = np.clip(ref.astype(np.int64) + noise, 0, 255).astype(np.uint8)
        names = (f"{prefix}{i:03d}_ref.png", f"{prefix}{i:03d}" + (poison_suffix if i in poison else "_cand.png"))
        for pixels, name in zip((ref, cand), names):
            Image.fromarray(pixels).save(root / name)
        pairs.append(names)
    return pairs


def producer(broker_url: str, database_url: str) -> Celery:
    """A producer's Celery app sending to the queue of the store at `database_url`."""
    return make_celery(Settings(broker_url=broker_url), queue=store_queue_at(database_url))
