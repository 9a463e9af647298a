"""Fixtures of the clients suite: the backends, the sidecars in front of them, and the bookkeeping
that turns each test into a (case, path) result.

Every test that takes ``via`` runs twice, ``[direct]`` (client -> backend) and ``[sidecar]``
(client -> datastream-sidecar -> backend). A test compares the sidecar run's observation with the
direct run's through the ``same_as_direct`` fixture, and the ``target`` fixture checks after a
sidecar run that the sidecar's /metrics counted answers on its traffic listener, so a case
cannot pass through a path that bypassed the sidecar.

Environment (all optional): DATASTREAM_SIDECAR, DATASTREAM_DEMO_REPLICA (binaries; default
target/debug/...), CLIENTS_OUT (logs and configs; default conformance/.out/clients),
CLIENTS_RESULTS (a JSON file that receives one record per test, read by report.py).
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from backends import Backends

# Everything here talks to 127.0.0.1; a proxy from the environment must never be in the way.
os.environ["NO_PROXY"] = os.environ["no_proxy"] = "127.0.0.1,localhost"

ROOT = Path(__file__).resolve().parents[2]
OUT = Path(os.environ.get("CLIENTS_OUT", ROOT / "conformance" / ".out" / "clients"))
SIDECAR_BIN = os.environ.get("DATASTREAM_SIDECAR", str(ROOT / "target" / "debug" / "datastream-sidecar"))
REPLICA_BIN = os.environ.get("DATASTREAM_DEMO_REPLICA", str(ROOT / "target" / "debug" / "datastream-demo-replica"))
# Upper bound on the life of every process started here (`timeout` ends it even if pytest is killed).
LIFETIME = "300"

# The policy of every sidecar here: a request timeout (1 s) far below the upload and the event
# stream of cases 1 and 2, which must still pass since it counts from the end of the request body
# to the response headers.
SIDECAR_CONFIG = """\
# Written by conformance/clients/conftest.py.
traffic:
  failover:
    requestTimeout: 1s
    connectTimeout: 500ms
"""
REQUEST_TIMEOUT_S = 1.0

# ---- ports and processes --------------------------------------------------------------------------

_taken: set[int] = set()


def free_port() -> int:
    """A port below the ephemeral range (so no outgoing connection's source port can take it), free
    now and not handed out before in this run. A start still checks that its process bound it."""
    while True:
        p = random.randint(20000, 32000)
        if p in _taken:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                continue
        _taken.add(p)
        return p


def http_get(port: int, path: str, timeout: float = 2) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read()
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read()


def wait_until(proc: subprocess.Popen, seconds: float, check) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if check():
                return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


class Sidecar:
    """A local-mode datastream-sidecar in front of one endpoint, started as conformance/run.sh does."""

    def __init__(self, name: str, endpoint: int, config: Path):
        self.name, self.endpoint, self.config = name, endpoint, config
        self.log = OUT / f"{name}.log"
        self.proc = None
        self.port = self.admin = 0

    def start(self) -> "Sidecar":
        for _ in range(5):
            self.port, self.admin = free_port(), free_port()
            args = [
                "timeout", LIFETIME, SIDECAR_BIN,
                "--listen", f"127.0.0.1:{self.port}", "--admin", f"127.0.0.1:{self.admin}",
                "--endpoints", f"127.0.0.1:{self.endpoint}",
                "--drain-delay", "0s", "--drain-timeout", "1s",
                "--config", str(self.config),
            ]  # fmt: skip
            with open(self.log, "ab") as log:
                log.write(f"### {' '.join(args)}\n".encode())
                log.flush()
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # "sidecar listening" is logged once every listener is bound (a bind failure exits), so
            # with it in our log and /ready answering on our admin port, the ports are ours.
            if wait_until(self.proc, 20, lambda: b"sidecar listening" in self.log.read_bytes()) and wait_until(
                self.proc, 20, lambda: http_get(self.admin, "/ready")[0] == 200
            ):
                return self
            stop(self.proc)
        raise RuntimeError(f"sidecar {self.name} did not start (log: {self.log})")

    def answered(self) -> int:
        """Answers sent (/metrics): responses on the traffic listener, as conformance/run.sh counts
        them, plus the errors the sidecar answered itself (a request refused while its head is
        parsed, such as a missing Host, counts only there; the sidecars here have no other listener)."""
        _, _, body = http_get(self.admin, "/metrics", timeout=5)
        n = 0.0
        for line in body.decode().splitlines():
            if (
                line.startswith("datastream_sidecar_responses_total{") and 'listener="traffic"' in line
            ) or line.startswith("datastream_sidecar_local_errors_total{"):
                n += float(line.rsplit(" ", 1)[1])
        return int(n)

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


class Replica:
    """The demo replica (HTTP/1.1 + h2c), as conformance/run.sh starts it."""

    def __init__(self, name: str):
        self.name = name
        self.log = OUT / f"{name}.log"
        self.proc = None
        self.port = 0

    def start(self) -> "Replica":
        rid = f"clients-{os.getpid()}-{self.name}"
        for _ in range(5):
            self.port = free_port()
            args = ["timeout", LIFETIME, REPLICA_BIN, "--listen", f"127.0.0.1:{self.port}", "--replica-id", rid]
            with open(self.log, "ab") as log:
                self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
            # The id answering on the port proves that our process, not a stranger, bound it.
            if wait_until(self.proc, 20, lambda: http_get(self.port, "/healthz")[1].get("x-replica-id") == rid):
                return self
            stop(self.proc)
        raise RuntimeError(f"demo replica {self.name} did not start (log: {self.log})")

    def stop(self) -> None:
        if self.proc:
            stop(self.proc)


# ---- the environment -------------------------------------------------------------------------------


class Target:
    """Where a test's client connects: a backend directly, or the sidecar in front of it."""

    def __init__(self, backend: str, via: str, port: int, sidecar: Sidecar | None):
        self.backend, self.via, self.port, self.sidecar = backend, via, port, sidecar
        self.host = "127.0.0.1"
        self.before = sidecar.answered() if sidecar else 0

    @property
    def authority(self) -> str:
        return f"{self.host}:{self.port}"

    def url(self, path: str, scheme: str = "http") -> str:
        return f"{scheme}://{self.authority}{path}"


class Env:
    def __init__(self, backends: Backends):
        self.backends = backends
        self.ports = dict(backends.ports)
        self.sidecars: dict[str, Sidecar] = {}
        self.replica: Replica | None = None

    def start(self) -> "Env":
        OUT.mkdir(parents=True, exist_ok=True)
        config = OUT / "sidecar.yaml"
        config.write_text(SIDECAR_CONFIG)
        if Path(REPLICA_BIN).exists():
            self.replica = Replica("clients-demo-replica").start()
            self.ports["demo-replica"] = self.replica.port
        for name, port in self.ports.items():
            self.sidecars[name] = Sidecar(f"clients-sidecar-{name}", port, config).start()
        with open(OUT / "processes.txt", "w") as f:
            for name, port in self.ports.items():
                s = self.sidecars[name]
                f.write(f"{name}: backend 127.0.0.1:{port}, sidecar 127.0.0.1:{s.port} (admin {s.admin})\n")
        return self

    def stop(self) -> None:
        for s in self.sidecars.values():
            s.stop()
        if self.replica:
            self.replica.stop()


@pytest.fixture(scope="session")
def env():
    if not Path(SIDECAR_BIN).exists():
        pytest.exit(f"no sidecar binary at {SIDECAR_BIN} (cargo build -p datastream-sidecar)", returncode=2)
    # A backend or sidecar that cannot start is a setup error (pytest exits 2), never a result.
    try:
        backends = Backends().start()
    except Exception as err:
        pytest.exit(f"backends did not start: {err!r}", returncode=2)
    e = Env(backends)
    try:
        try:
            e.start()
        except Exception as err:
            pytest.exit(f"setup failed: {err}", returncode=2)
        yield e
    finally:
        e.stop()
        backends.stop()


def pytest_generate_tests(metafunc):
    if "via" in metafunc.fixturenames:
        metafunc.parametrize("via", ["direct", "sidecar"])


@pytest.fixture
def target(env, via):
    """target(backend[, path]) -> Target for this test's path. After a sidecar run, the sidecar must have
    counted at least one more answer (Sidecar.answered) than before the test."""
    made: list[Target] = []

    def make(backend: str, path: str | None = None) -> Target:
        """path overrides the test's own ("direct" for same_as_direct's fallback)."""
        if backend not in env.ports:
            pytest.skip(f"backend {backend} is not running (no binary at {REPLICA_BIN}?)")
        if (path or via) == "direct":
            t = Target(backend, via, env.ports[backend], None)
        else:
            s = env.sidecars[backend]
            t = Target(backend, via, s.port, s)
        made.append(t)
        return t

    yield make
    for t in made:
        if t.sidecar:
            after = t.sidecar.answered()
            assert after > t.before, f"sidecar {t.sidecar.name} counted no answer: the case bypassed it"


@pytest.fixture
def same_as_direct(request, via):
    """same_as_direct(observation, observe_direct): on the direct run, keeps the observation; on the
    sidecar run, asserts that it equals the direct one (from the direct run of the same case, or
    observed again with observe_direct if that run did not happen or did not get this far). Both
    observations go to the results file."""
    key = case_key(request.node)

    def check(obs, observe_direct):
        request.node.user_properties.append(("observation", obs))
        if via == "direct":
            _observations[key] = obs
            return
        direct = _observations.get(key)
        if direct is None:
            direct = observe_direct()
            _observations[key] = direct
        request.node.user_properties.append(("direct_observation", direct))
        assert obs == direct, "through the sidecar the client observed something else than directly"

    return check


_observations: dict[str, object] = {}


@pytest.fixture
def note(request):
    """note(name, value): kept with the test's record in the results file (what the backend saw,
    for instance); pytest's record_property does the same but warns with JUnit's xunit2."""

    def add(name: str, value) -> None:
        request.node.user_properties.append((name, value))

    return add

# ---- results -----------------------------------------------------------------------------------------


def case_key(item) -> str:
    """The test's name and its parameters other than the path: one row of the table."""
    params = getattr(item, "callspec", None)
    others = [str(v) for k, v in (params.params.items() if params else []) if k != "via"]
    return item.originalname + (f"[{'-'.join(others)}]" if others else "")


_results: list[dict] = []


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    params = getattr(item, "callspec", None)
    via = params.params.get("via") if params else None
    rec = next((r for r in _results if r["nodeid"] == item.nodeid), None)
    if rec is None:
        rec = {
            "nodeid": item.nodeid,
            "case": case_key(item),
            "via": via or "-",
            "sidecar_only": item.get_closest_marker("sidecar_only") is not None,
            "outcome": "passed",
            "message": "",
            "duration": 0.0,
        }
        _results.append(rec)
    rec["duration"] += rep.duration
    if rep.failed:
        rec["outcome"] = "failed" if rep.when == "call" else "error"
        rec["message"] += f"[{rep.when}] " + (rep.longreprtext or "") + "\n"
    elif rep.skipped and rec["outcome"] == "passed":
        rec["outcome"] = "skipped"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rec["message"] = reason
    if rep.when == "teardown":
        rec["properties"] = {k: v for k, v in item.user_properties}


def pytest_sessionfinish(session, exitstatus):
    path = os.environ.get("CLIENTS_RESULTS")
    if path:
        Path(path).write_text(json.dumps(_results, indent=1, default=str))
