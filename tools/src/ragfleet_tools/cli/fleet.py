"""Local fleet management: start the four services and local Ray as background processes,
wait for them to be healthy, and stop them again.

State lives under ``home`` (default ``./var``): ``run/<name>.pid``, ``logs/<name>.log``, the
services' data (index, model cache) and ``auth/`` (owner-only): the gateway's API keys file, the
CLI's own key and the fleet's service credential.

Replicas (``replicas`` > 1): the embedder and the gateway run that many processes each, replica
``i`` (from 0) on its service's port + ``REPLICA_PORT_STEP * i`` and named ``<service>`` for
the first, ``<service>-<i+1>`` after it; the generator's model deployment gets that many Ray
Serve replicas. The retriever stays one process: its embedded index is single-writer, so two
processes must never open one index directory (production scales it on OpenSearch).
``run/replicas`` records how many the running fleet has, for ``status``, ``ask`` and ``down``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPLICA_PORT_STEP = 10
"""Replica ``i`` of a service listens on its port + ``REPLICA_PORT_STEP * i``: with the default
ports the embedders on 50051, 50061, 50071..., the gateways on 50050, 50060... (REST 8080,
8090...), clear of 50052 and 50053 (retriever, generator), 8001 and 6380."""
MAX_REPLICAS = 8


class FleetSettings(BaseSettings):
    """Where the local fleet lives and listens. Each ``*_port`` field reads the same variable as
    the service it belongs to (``RAGFLEET_EMBEDDER_PORT`` and so on), so one setting configures
    both."""

    model_config = SettingsConfigDict(env_prefix="RAGFLEET_", extra="ignore")

    home: Path = Field(default=Path("var"), description="state directory of the local fleet")
    host: str = "127.0.0.1"
    gateway_port: int = 50050
    gateway_rest_port: int = 8080
    embedder_port: int = 50051
    retriever_port: int = 50052
    generator_port: int = 50053
    generator_http_port: int = 8001
    ray_port: int = Field(default=6380, description="GCS port of the local Ray head")
    ray_num_cpus: int = Field(default=0, ge=0, description="CPUs Ray may use; 0 means all")
    replicas: int = Field(
        default=1,
        ge=1,
        le=MAX_REPLICAS,
        description="processes of the embedder and the gateway, Serve replicas of the model",
    )
    tenant: str = Field(
        default="default", min_length=1, description="the tenant of the key `ragfleet up` makes"
    )
    api_key: str = Field(
        default="", description="the key the CLI sends to the gateway; empty: the fleet's own"
    )
    startup_timeout_s: float = 600.0

    def address(self, port: int) -> str:
        return f"{self.host}:{port}"

    @property
    def ray_address(self) -> str:
        return self.address(self.ray_port)


class ServiceExited(RuntimeError):
    """A process of the fleet ended while the fleet was starting."""

    def __init__(self, name: str, log: Path, tail: str) -> None:
        super().__init__(f"{name} exited during start-up; last lines of {log}:\n{tail}")
        self.name = name


@dataclass(frozen=True)
class ServiceProcess:
    """A service the CLI runs as a background process, and where its health is answered."""

    name: str
    module: str
    port: int
    env: Mapping[str, str]


# Ray puts Unix sockets at <temp dir>/session_<date>_<time>_<us>_<pid>/sockets/plasma_store
# (69 characters after the temp dir) and refuses paths over 107 bytes.
_RAY_SOCKET_SUFFIX = 69
_UNIX_SOCKET_MAX = 107


def ray_temp_dir(ray_dir: Path) -> Path:
    """Ray's temporary folder for the fleet: ``ray_dir/tmp`` when its socket paths fit the
    Unix limit, else a short folder in the system temp dir named after ``ray_dir``."""
    inside = ray_dir / "tmp"
    if len(str(inside).encode()) + _RAY_SOCKET_SUFFIX <= _UNIX_SOCKET_MAX:
        return inside
    digest = hashlib.sha256(str(ray_dir).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ragfleet-ray-{digest}"


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs. An exited child not yet reaped (a zombie: ``ragfleet up`` is the
    parent of what it spawned) still answers kill(pid, 0), so /proc says which it is."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _write_secret(path: Path, value: str) -> None:
    """Writes ``value`` to a new owner-only file at ``path``; an existing file is kept."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as out:
        out.write(value)


def _bin(name: str) -> str:
    """A console script installed next to the running interpreter."""
    return str(Path(sys.executable).parent / name)


def replica_name(service: str, index: int) -> str:
    """``service`` for the first replica (index 0), ``service-<index+1>`` for the others."""
    return service if index == 0 else f"{service}-{index + 1}"


class Fleet:
    """The local fleet under ``settings.home``; ``replicas`` defaults to what the running fleet
    recorded (``run/replicas``), else ``settings.replicas``."""

    def __init__(self, settings: FleetSettings, replicas: int | None = None) -> None:
        self.settings = settings
        self.home = settings.home.resolve()
        self.run_dir = self.home / "run"
        self.log_dir = self.home / "logs"
        self.ray_dir = self.home / "ray"
        self.replicas = replicas or self.recorded_replicas() or settings.replicas

    # --- replicas ------------------------------------------------------------------------
    @property
    def _replicas_file(self) -> Path:
        return self.run_dir / "replicas"

    def recorded_replicas(self) -> int | None:
        """How many replicas the fleet under ``home`` was started with (None: not recorded)."""
        try:
            return int(self._replicas_file.read_text())
        except (FileNotFoundError, ValueError):
            return None

    def record_replicas(self) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._replicas_file.write_text(str(self.replicas))

    def forget_replicas(self) -> None:
        self._replicas_file.unlink(missing_ok=True)

    def replica_ports(self, port: int) -> list[int]:
        return [port + REPLICA_PORT_STEP * i for i in range(self.replicas)]

    def replica_addresses(self, port: int) -> str:
        """The comma-separated address list of a scaled service's replicas
        (``ragfleet.runtime.channels``)."""
        return ",".join(self.settings.address(p) for p in self.replica_ports(port))

    @property
    def embedder_addresses(self) -> str:
        return self.replica_addresses(self.settings.embedder_port)

    @property
    def gateway_addresses(self) -> str:
        return self.replica_addresses(self.settings.gateway_port)

    def port_conflicts(self) -> list[str]:
        """Ports the fleet would use twice (replica ports included); empty when none."""
        s = self.settings
        owners: dict[int, list[str]] = {}
        ports = {
            "retriever": [s.retriever_port],
            "generator": [s.generator_port],
            "generator http": [s.generator_http_port],
            "ray": [s.ray_port],
            "embedder": self.replica_ports(s.embedder_port),
            "gateway": self.replica_ports(s.gateway_port),
            "gateway rest": self.replica_ports(s.gateway_rest_port),
        }
        for owner, used in ports.items():
            for port in used:
                owners.setdefault(port, []).append(owner)
        return [
            f"port {port}: {' and '.join(names)}"
            for port, names in sorted(owners.items())
            if len(names) > 1
        ]

    def process_names(self, service: str) -> list[str]:
        """The names of ``service``'s processes that have a pid file, whatever the replica
        count (so ``down`` stops every replica a run started)."""
        found = [p.stem for p in self.run_dir.glob(f"{service}*.pid")]
        return sorted(
            (n for n in found if n == service or n.removeprefix(f"{service}-").isdigit()),
            key=lambda n: (len(n), n),
        )

    # --- Ray -----------------------------------------------------------------------------
    @property
    def ray_token_path(self) -> Path:
        return self.ray_dir / "auth_token"

    def ray_env(self) -> dict[str, str]:
        """The environment of every process that starts or joins the fleet's Ray: token
        authentication with the fleet's own token file (never ``~/.ray``), no usage stats, and
        on a loopback host a one-machine Ray. ``ray start --node-ip-address=127.0.0.1`` alone
        replaces the loopback address by the machine's own ("remotely reachable") and its
        servers listen on every interface; with Ray's switch for multi-machine clusters off
        (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, which despite its name applies on Linux too)
        the node's address stays 127.0.0.1 and GCS, raylet, agents and workers listen on
        loopback only."""
        env = {
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN_PATH": str(self.ray_token_path),
            "RAY_USAGE_STATS_ENABLED": "0",
        }
        if _is_loopback(self.settings.host):
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        return env

    def ensure_ray_token(self) -> Path:
        """Creates the fleet's Ray token (owner-only) unless it exists; returns its path."""
        path = self.ray_token_path
        if not path.exists():
            self.ray_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as token:
                token.write(secrets.token_hex(32))
        return path

    # --- credentials ---------------------------------------------------------------------
    @property
    def auth_dir(self) -> Path:
        return self.home / "auth"

    @property
    def keys_file(self) -> Path:
        return self.auth_dir / "api_keys.json"

    @property
    def cli_key_path(self) -> Path:
        return self.auth_dir / "cli_key"

    @property
    def service_credential_path(self) -> Path:
        return self.auth_dir / "service_credential"

    def ensure_credentials(self) -> str | None:
        """Creates, unless they exist, the service credential and a key of ``settings.tenant``
        (roles query and ingest) for the CLI, its hash in the gateway's keys file; all
        owner-only. Returns the key when it was made now (to print once), else None."""
        from ragfleet_gateway.auth import Role, add_key, new_key

        self.auth_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.auth_dir, 0o700)
        _write_secret(self.service_credential_path, secrets.token_urlsafe(32))
        if self.cli_key_path.exists():
            return None
        key, entry = new_key(
            self.settings.tenant, frozenset({Role.QUERY, Role.INGEST}), label="ragfleet up"
        )
        add_key(self.keys_file, entry)
        _write_secret(self.cli_key_path, key)
        return key

    def api_key(self) -> str | None:
        """The key the CLI sends: ``RAGFLEET_API_KEY``, else the fleet's own (None: none)."""
        if self.settings.api_key:
            return self.settings.api_key
        try:
            return self.cli_key_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    def service_credential(self) -> str | None:
        try:
            return self.service_credential_path.read_text().strip() or None
        except FileNotFoundError:
            return None

    # --- what runs -----------------------------------------------------------------------
    def services(self) -> list[ServiceProcess]:
        s = self.settings
        common = {"RAGFLEET_LOG_FORMAT": "json"}
        credential = str(self.service_credential_path)
        # Replicas on one machine split its cores: torch in each embedder would otherwise run
        # a thread per core, and N embedders would fight over them.
        threads: dict[str, str] = {}
        if self.replicas > 1 and "OMP_NUM_THREADS" not in os.environ:
            cores = s.ray_num_cpus or os.cpu_count() or 1
            threads["OMP_NUM_THREADS"] = str(max(1, cores // self.replicas))
        embedders = [
            ServiceProcess(
                replica_name("embedder", i),
                "ragfleet_embedder",
                port,
                {
                    **common,
                    "RAGFLEET_EMBEDDER_HOST": s.host,
                    "RAGFLEET_EMBEDDER_PORT": str(port),
                    "RAGFLEET_EMBEDDER_SERVICE_CREDENTIAL_FILE": credential,
                    **threads,
                },
            )
            for i, port in enumerate(self.replica_ports(s.embedder_port))
        ]
        gateways = [
            ServiceProcess(
                replica_name("gateway", i),
                "ragfleet_gateway",
                port,
                {
                    **common,
                    "RAGFLEET_GATEWAY_HOST": s.host,
                    "RAGFLEET_GATEWAY_PORT": str(port),
                    "RAGFLEET_GATEWAY_REST_PORT": str(rest_port),
                    "RAGFLEET_GATEWAY_API_KEYS_FILE": str(self.keys_file),
                    "RAGFLEET_GATEWAY_SERVICE_CREDENTIAL_FILE": credential,
                    "RAGFLEET_GATEWAY_EMBEDDER_ADDRESS": self.embedder_addresses,
                    "RAGFLEET_GATEWAY_RETRIEVER_ADDRESS": s.address(s.retriever_port),
                    "RAGFLEET_GATEWAY_GENERATOR_ADDRESS": s.address(s.generator_port),
                    # Ingest jobs run on the fleet's Ray, never a second one in the gateway.
                    "RAGFLEET_GATEWAY_INGEST_RAY_ADDRESS": s.ray_address,
                    # The replicas share the answer store and the ingest manifest (SQLite
                    # databases, which take turns writing); a spool folder is one process's.
                    "RAGFLEET_GATEWAY_FEEDBACK_STORE": "sqlite:///"
                    + str((self.home / "feedback" / "feedback.sqlite3").resolve()),
                    "RAGFLEET_GATEWAY_FEEDBACK_SPOOL_DIR": str(
                        self.home / "feedback" / replica_name("spool", i)
                    ),
                    "RAGFLEET_GATEWAY_INGEST_MANIFEST_PATH": str(
                        self.home / "ingest" / "manifest.sqlite"
                    ),
                    **self.ray_env(),
                },
            )
            for i, (port, rest_port) in enumerate(
                zip(
                    self.replica_ports(s.gateway_port),
                    self.replica_ports(s.gateway_rest_port),
                    strict=True,
                )
            )
        ]
        return [
            *embedders,
            ServiceProcess(
                "retriever",
                "ragfleet_retriever",
                s.retriever_port,
                {
                    **common,
                    "RAGFLEET_RETRIEVER_HOST": s.host,
                    "RAGFLEET_RETRIEVER_PORT": str(s.retriever_port),
                    "RAGFLEET_RETRIEVER_DATA_DIR": str(self.home / "index"),
                    "RAGFLEET_RETRIEVER_SERVICE_CREDENTIAL_FILE": credential,
                },
            ),
            *gateways,
        ]

    def generator_env(self) -> dict[str, str]:
        """The deployer's environment. With replicas the model deployment gets that many Serve
        replicas, which share the one CPU a single replica reserves (unless
        ``RAGFLEET_GENERATOR_NUM_CPUS`` says otherwise), so Ray's other work keeps its CPUs."""
        s = self.settings
        scaled: dict[str, str] = {}
        if self.replicas > 1:
            scaled["RAGFLEET_GENERATOR_NUM_REPLICAS"] = str(self.replicas)
            if "RAGFLEET_GENERATOR_NUM_CPUS" not in os.environ:
                scaled["RAGFLEET_GENERATOR_NUM_CPUS"] = f"{1 / self.replicas:.3f}"
        return {
            **self.ray_env(),
            **scaled,
            "RAGFLEET_GENERATOR_RAY_ADDRESS": s.ray_address,
            "RAGFLEET_GENERATOR_HOST": s.host,
            "RAGFLEET_GENERATOR_PORT": str(s.generator_port),
            "RAGFLEET_GENERATOR_HTTP_PORT": str(s.generator_http_port),
            "RAGFLEET_GENERATOR_MODEL_CACHE_DIR": str(self.home / "models"),
            "RAGFLEET_GENERATOR_SERVICE_CREDENTIAL_FILE": str(self.service_credential_path),
        }

    def health_targets(self) -> dict[str, str]:
        """Every process (each replica) and the generator's Serve proxy, by name."""
        s = self.settings
        targets = {p.name: s.address(p.port) for p in self.services()}
        return {**targets, "generator": s.address(s.generator_port)}

    # --- processes -----------------------------------------------------------------------
    def _pid_file(self, name: str) -> Path:
        return self.run_dir / f"{name}.pid"

    def running_pid(self, name: str) -> int | None:
        try:
            pid = int(self._pid_file(name).read_text())
        except (FileNotFoundError, ValueError):
            return None
        return pid if _alive(pid) else None

    def spawn(self, name: str, argv: list[str], env: Mapping[str, str]) -> int:
        """Starts ``argv`` in its own session (so ``down`` can stop it and its children), with
        output appended to ``logs/<name>.log``; returns the pid."""
        if (pid := self.running_pid(name)) is not None:
            return pid
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **env},
                start_new_session=True,
            )
        self._pid_file(name).write_text(str(proc.pid))
        return proc.pid

    def start_ray(self) -> int:
        """Starts the local Ray head on loopback, with its token and temporary files under
        ``home/ray``; returns the pid of ``ray start --block``."""
        s = self.settings
        self.ensure_ray_token()
        argv = [
            _bin("ray"),
            "start",
            "--head",
            "--block",
            f"--port={s.ray_port}",
            f"--node-ip-address={s.host}",
            f"--temp-dir={ray_temp_dir(self.ray_dir)}",
            "--include-dashboard=false",
            "--disable-usage-stats",
        ]
        if s.ray_num_cpus:
            argv.append(f"--num-cpus={s.ray_num_cpus}")
        return self.spawn("ray", argv, self.ray_env())

    def deploy_generator(self, timeout_s: float, watch: Sequence[str] = ()) -> None:
        """Deploys the generator application onto the local Ray cluster and waits for it.
        Meanwhile the processes named in ``watch`` must stay alive: when one exits, the deploy
        is stopped and ``ServiceExited`` raised at once rather than after the timeout."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_dir / "generator.log", "ab") as log:
            deployer = subprocess.Popen(
                [sys.executable, "-m", "ragfleet_generator"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, **self.generator_env()},
            )
        deadline = time.monotonic() + timeout_s
        try:
            while (returncode := deployer.poll()) is None:
                self.check_alive(watch)
                if time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the generator was not deployed within {timeout_s:.0f} s:\n"
                        + self.log_tail("generator")
                    )
                time.sleep(0.5)
        finally:
            if deployer.poll() is None:
                deployer.kill()
                deployer.wait()
        if returncode != 0:
            raise RuntimeError(
                f"the generator failed to deploy (exit {returncode}):\n"
                + self.log_tail("generator")
            )

    def check_alive(self, names: Sequence[str]) -> None:
        """Raises ``ServiceExited`` for the first of ``names`` whose process is gone."""
        for name in names:
            if self.running_pid(name) is None:
                raise ServiceExited(name, self.log_dir / f"{name}.log", self.log_tail(name, 15))

    def stop(self, names: Sequence[str], grace_s: float = 15.0) -> list[str]:
        """SIGTERM to each one's process group at once, SIGKILL to those still there after
        ``grace_s``. Returns the names that were running."""
        running: dict[str, int] = {}
        for name in names:
            pid = self.running_pid(name)
            self._pid_file(name).unlink(missing_ok=True)
            if pid is not None:
                running[name] = pid
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline and any(_alive(p) for p in running.values()):
            time.sleep(0.1)
        for pid in running.values():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        return list(running)

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.log_dir / f"{name}.log"
        if not path.exists():
            return f"(no log at {path})"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


async def health_status(address: str, timeout_s: float = 2.0) -> str:
    """The grpc.health.v1 status of the whole server at ``address``, or why it did not answer."""
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout_s)
        except grpc.aio.AioRpcError as err:
            return f"DOWN ({err.code().name})"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


async def wait_serving(
    targets: Mapping[str, str], timeout_s: float, check: Callable[[], None] | None = None
) -> dict[str, str]:
    """Polls until every target reports SERVING or the timeout passes; returns the last status.
    ``check`` runs before each poll and may raise to stop waiting (a process that exited)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if check is not None:
            check()
        statuses = dict(
            zip(
                targets,
                await asyncio.gather(*(health_status(a) for a in targets.values())),
                strict=True,
            )
        )
        if all(v == "SERVING" for v in statuses.values()) or time.monotonic() > deadline:
            return statuses
        await asyncio.sleep(0.5)
