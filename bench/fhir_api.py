"""Benchmark the FHIR API end to end, beside the same operations done directly on the database.

Run: ``.venv/bin/python bench/fhir_api.py --db sqlite|postgres|both [options]`` (see ``--help``
and ``bench/README.md``). For each backend it makes a scratch database, starts the real server
(``smartmed serve``) as a subprocess, loads N Patients and N*K vital-sign Observations through
the API (transaction bundles), then runs each operation at a fixed concurrency for a fixed
time (closed loop: every client sends its next request when the previous one is answered):

- read Patient by id      GET /Patient/{id}
- search Patient by name  GET /Patient?name=<family-name prefix>
- search Observation      GET /Observation?subject=Patient/{id}&code=http://loinc.org|8867-4
- create Patient          POST /Patient
- create Observation      POST /Observation

(reads and searches first, so that they see exactly the loaded data)

and the same operation straight through the driver the server uses (asyncpg / aiosqlite) with
equivalent SQL, in the same run, at the same concurrency and duration. It prints requests/s,
p50 and p99 latency and errors for both, their ratio (ours / database), where the CPU went
(load generator, server processes, PostgreSQL backends) and, for PostgreSQL, each figure
against the performance targets. A benchmark, not a test: it never fails on a slow figure.

The load generator is a raw asyncio HTTP/1.1 keep-alive client on uvloop (one connection per
client); its own cost is measured against a canned-response server and printed first.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import random
import re
import shlex
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiosqlite
import asyncpg
import orjson
import uvloop

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
PREFIX = "/fhir/R4"
PG_ADMIN_URL = os.environ.get(
    "SMARTMED_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
CLK_TCK = os.sysconf("SC_CLK_TCK")

# Performance targets (PostgreSQL, concurrency 16, generator on the same 2-core machine).
TARGET_RPS = {"create Patient": 320.0, "create Observation": 240.0, "read Patient by id": 1600.0}
TARGET_P99_MS = 50.0

# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------

SURNAMES = (
    "Wang Li Zhang Liu Chen Yang Huang Zhao Wu Zhou Xu Sun Ma Zhu Hu Guo He Lin Gao Luo Zheng "
    "Liang Xie Song Tang Han Feng Deng Cao Peng Zeng Xiao Tian Dong Pan Yuan Cai Jiang Yu Du "
    "Ye Cheng Wei Su Lu Ding Ren Shen Yao Jin Fu Zhong Cui Qian Qin Fan Shi Dai Tan Jia Xia"
).split()
GIVEN_F = "Fang Min Jing Li Xiu Yan Juan Ying Hua Hui Lan Mei Qing Xia Yun".split()
GIVEN_M = "Wei Qiang Lei Jun Yong Jie Tao Ming Chao Gang Hao Peng Bo Hui Long".split()
# LOINC vital signs: code, display, UCUM unit, low, high.
VITALS = (
    ("8867-4", "Heart rate", "/min", 50, 110),
    ("9279-1", "Respiratory rate", "/min", 10, 24),
    ("8310-5", "Body temperature", "Cel", 35.8, 38.5),
    ("29463-7", "Body weight", "kg", 40, 110),
    ("8302-2", "Body height", "cm", 145, 195),
    ("59408-5", "Oxygen saturation in Arterial blood by Pulse oximetry", "%", 90, 100),
)
HEART_RATE = "8867-4"


def make_patient(rng: random.Random) -> dict[str, Any]:
    """A typical ~30-element Patient."""
    female = rng.random() < 0.5
    family = rng.choice(SURNAMES)
    given = rng.choice(GIVEN_F if female else GIVEN_M)
    birth = datetime(1930, 1, 1) + timedelta(days=rng.randrange(90 * 365))
    return {
        "resourceType": "Patient",
        "identifier": [
            {
                "system": "urn:oid:2.16.156.10011.1.1",
                "value": f"{rng.randrange(10**17, 10**18)}",
            }
        ],
        "active": True,
        "name": [{"use": "official", "family": family, "given": [given]}],
        "telecom": [
            {"system": "phone", "value": f"138{rng.randrange(10**8):08d}", "use": "mobile"}
        ],
        "gender": "female" if female else "male",
        "birthDate": birth.date().isoformat(),
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randrange(1, 300)} Renmin Road"],
                "city": "Anyang",
                "postalCode": f"4550{rng.randrange(10, 99)}",
                "country": "CN",
            }
        ],
    }


def make_observation(rng: random.Random, subject: str, k: int) -> dict[str, Any]:
    """A vital-sign Observation (LOINC code, UCUM quantity) about ``subject``."""
    code, display, unit, low, high = VITALS[k % len(VITALS)]
    when = datetime(2025, 1, 1, tzinfo=UTC) + timedelta(minutes=rng.randrange(600_000))
    value = round(rng.uniform(low, high), 1)
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "vital-signs",
                        "display": "Vital Signs",
                    }
                ]
            }
        ],
        "code": {"coding": [{"system": "http://loinc.org", "code": code, "display": display}]},
        "subject": {"reference": subject},
        "effectiveDateTime": when.isoformat().replace("+00:00", "Z"),
        "valueQuantity": {
            "value": value,
            "unit": unit,
            "system": "http://unitsofmeasure.org",
            "code": unit,
        },
    }


# --------------------------------------------------------------------------------------------
# The load generator: raw HTTP/1.1 keep-alive over asyncio protocols
# --------------------------------------------------------------------------------------------


class HttpConnection(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    @classmethod
    async def open(cls, host: str, port: int) -> HttpConnection:
        loop = asyncio.get_running_loop()
        _, proto = await loop.create_connection(cls, host, port)
        return proto

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if self.waiter is not None:
            self._parse()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(ConnectionError(f"connection closed: {exc}"))
        self.waiter = None

    def _parse(self) -> None:
        buf = self.buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            return
        head = bytes(buf[:end]).lower()
        status = int(head[9:12])
        start = end + 4
        i = head.find(b"\r\ncontent-length:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            total = start + int(head[i + 17 : j if j >= 0 else len(head)])
            if len(buf) < total:
                return
            body = bytes(buf[start:total])
        elif b"\r\ntransfer-encoding: chunked" in head:
            chunks, pos = [], start
            while True:
                eol = buf.find(b"\r\n", pos)
                if eol < 0:
                    return
                size = int(bytes(buf[pos:eol]).split(b";")[0], 16)
                if size == 0:
                    trailer = buf.find(b"\r\n\r\n", eol)
                    if trailer < 0:
                        return
                    total = trailer + 4
                    break
                if len(buf) < eol + 2 + size + 2:
                    return
                chunks.append(bytes(buf[eol + 2 : eol + 2 + size]))
                pos = eol + 2 + size + 2
            body = b"".join(chunks)
        else:
            total, body = start, b""
        del buf[:total]
        waiter, self.waiter = self.waiter, None
        assert waiter is not None
        waiter.set_result((status, body))

    def request(self, raw: bytes) -> asyncio.Future[tuple[int, bytes]]:
        """Send one prepared request; the future gives (status, body)."""
        if self.closed or self.transport is None:
            raise ConnectionError("connection closed")
        fut: asyncio.Future[tuple[int, bytes]] = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(raw)
        return fut

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def http_request(method: str, path: str, port: int, body: bytes | None = None) -> bytes:
    """The bytes of one HTTP/1.1 request."""
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: application/fhir+json\r\n"
    )
    if body is None:
        return (head + "\r\n").encode()
    head += f"Content-Type: application/fhir+json\r\nContent-Length: {len(body)}\r\n\r\n"
    return head.encode() + body


async def http_call(
    port: int, method: str, path: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """One request on a fresh connection (setup work, not measured)."""
    conn = await HttpConnection.open("127.0.0.1", port)
    try:
        return await conn.request(http_request(method, path, port, body))
    finally:
        conn.close()


# --------------------------------------------------------------------------------------------
# CPU accounting from /proc
# --------------------------------------------------------------------------------------------


def proc_cpu(pid: int) -> float:
    """User+system CPU seconds of one process (0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def descendants(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        for task in Path(f"/proc/{p}/task").glob("*"):
            with contextlib.suppress(OSError):
                todo += [int(c) for c in (task / "children").read_text().split()]
    return out


def postgres_pids() -> list[int]:
    pids = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            with contextlib.suppress(OSError):
                if (d / "comm").read_text().strip() == "postgres":
                    pids.append(int(d.name))
    return pids


@dataclass
class CpuSnapshot:
    wall: float
    gen: float
    server: float
    db: dict[int, float]

    def db_since(self, before: CpuSnapshot) -> float:
        """PostgreSQL CPU between two snapshots; backends come and go (autovacuum, workers)."""
        return sum(cpu - before.db.get(pid, 0.0) for pid, cpu in self.db.items())


def cpu_snapshot(server_pids: list[int], postgres: bool) -> CpuSnapshot:
    return CpuSnapshot(
        time.perf_counter(),
        time.process_time(),
        sum(proc_cpu(p) for p in server_pids),
        {p: proc_cpu(p) for p in postgres_pids()} if postgres else {},
    )


def connection_split(port: int, worker_pids: list[int]) -> str:
    """How many established client connections each server worker holds, e.g. '9+7'."""
    try:
        out = subprocess.run(
            ["ss", "-tnpH", "state", "established", f"( sport = :{port} )"],
            capture_output=True,
            text=True,
            timeout=5,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    counts = Counter(int(m) for m in re.findall(r"pid=(\d+)", out))
    return "+".join(str(counts.get(p, 0)) for p in worker_pids)


# --------------------------------------------------------------------------------------------
# Closed-loop phases
# --------------------------------------------------------------------------------------------

Op = Callable[[], Awaitable[bool]]


@dataclass
class PhaseResult:
    name: str
    ok: int = 0
    errors: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error_samples: list[str] = field(default_factory=list)
    gen_cpu: float = 0.0
    server_cpu: float = 0.0
    db_cpu: float = 0.0
    split: str = ""

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        """Latency percentile in ms (nearest rank)."""
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[max(0, min(len(ordered) - 1, int(q * len(ordered) + 0.999999) - 1))] * 1e3

    def per_req_us(self, cpu: float) -> float:
        n = self.ok + self.errors
        return cpu / n * 1e6 if n else float("nan")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "rps": round(self.rps, 1),
            "p50_ms": round(self.pct(0.50), 3),
            "p99_ms": round(self.pct(0.99), 3),
            "gen_cpu_s": round(self.gen_cpu, 3),
            "server_cpu_s": round(self.server_cpu, 3),
            "db_cpu_s": round(self.db_cpu, 3),
            "connections_per_worker": self.split,
            "error_samples": self.error_samples,
        }


@dataclass
class Observe:
    """What to watch during the measured window of a phase."""

    server_pids: list[int] = field(default_factory=list)
    postgres: bool = False
    port: int | None = None
    worker_pids: list[int] = field(default_factory=list)
    profile_to: Path | None = None
    profile_pid: int | None = None


async def run_phase(
    name: str, ops: list[Op], warmup: float, duration: float, observe: Observe
) -> PhaseResult:
    """One client per op in a closed loop; only completions in the window count."""
    result = PhaseResult(name)
    t_start = time.perf_counter()
    t_measure = t_start + warmup
    t_end = t_measure + duration

    async def client(op: Op) -> None:
        lat = result.latencies
        perf = time.perf_counter
        while True:
            t0 = perf()
            if t0 >= t_end:
                return
            try:
                good = await op()
            except Exception as exc:  # noqa: BLE001 - every failure is an error sample
                good = False
                if len(result.error_samples) < 3:
                    result.error_samples.append(f"{type(exc).__name__}: {exc}"[:300])
            t1 = perf()
            if t_measure <= t1 <= t_end:
                if good:
                    lat.append(t1 - t0)
                    result.ok += 1
                else:
                    result.errors += 1

    async def watcher() -> tuple[CpuSnapshot, CpuSnapshot]:
        await asyncio.sleep(max(0.0, t_measure - time.perf_counter()))
        before = cpu_snapshot(observe.server_pids, observe.postgres)
        spy = None
        if observe.profile_to is not None and observe.profile_pid is not None:
            spy = await asyncio.create_subprocess_exec(
                str(BIN / "py-spy"),
                "record",
                "--pid",
                str(observe.profile_pid),
                "--subprocesses",
                "--nonblocking",
                "--function",
                "--rate",
                "100",
                "--duration",
                str(max(1, int(duration))),
                "--format",
                "raw",
                "-o",
                str(observe.profile_to),
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
        await asyncio.sleep(max(0.0, t_measure + duration / 2 - time.perf_counter()))
        if observe.port is not None and len(observe.worker_pids) > 1:
            result.split = await asyncio.to_thread(
                connection_split, observe.port, observe.worker_pids
            )
        await asyncio.sleep(max(0.0, t_end - time.perf_counter()))
        after = cpu_snapshot(observe.server_pids, observe.postgres)
        if spy is not None:
            await spy.wait()
        return before, after

    watch = asyncio.ensure_future(watcher())
    tasks = [asyncio.ensure_future(client(op)) for op in ops]
    _, pending = await asyncio.wait(tasks, timeout=warmup + duration + 30)
    for task in pending:  # a request that never came back: give up on it
        task.cancel()
        result.errors += 1
    before, after = await watch
    result.seconds = after.wall - before.wall
    result.gen_cpu = after.gen - before.gen
    result.server_cpu = after.server - before.server
    result.db_cpu = after.db_since(before)
    return result


class HttpClients:
    """Clients that each hold one keep-alive connection and send requests from a list."""

    def __init__(
        self, port: int, requests: list[bytes], *, pick: str = "cycle", seed: int = 0
    ) -> None:
        self.port = port
        self.requests = requests
        self.pick = pick
        self.seed = seed
        self.samples: list[str] = []
        self.conns: list[HttpConnection] = []

    async def make(self, i: int) -> Op:
        rng = random.Random(self.seed * 1000 + i)
        requests, n, port, samples = self.requests, len(self.requests), self.port, self.samples
        conn = await HttpConnection.open("127.0.0.1", port)
        self.conns.append(conn)
        counter = i
        pick_random = self.pick == "random"

        async def op() -> bool:
            nonlocal conn, counter
            if pick_random:
                raw = requests[rng.randrange(n)]
            else:
                counter += 1
                raw = requests[counter % n]
            if conn.closed:
                conn = await HttpConnection.open("127.0.0.1", port)
                self.conns.append(conn)
            status, body = await conn.request(raw)
            if 200 <= status < 300:
                return True
            if len(samples) < 3:
                samples.append(f"HTTP {status}: {body[:300]!r}")
            return False

        return op

    def close(self) -> None:
        for conn in self.conns:
            conn.close()
        self.conns = []

    async def open(self, concurrency: int, observe: Observe, *, balance: bool) -> list[Op]:
        """``concurrency`` clients; with ``balance``, each server worker holds an equal share.

        Several uvicorn workers accept from one listening socket and whichever wakes first
        takes the connection, so 16 keep-alive connections land 16+0 as often as 8+8. To
        balance, a connection accepted by a worker that has its share already is parked
        (kept open, unused, so the next one goes elsewhere) and closed at the end.
        """
        workers = observe.worker_pids
        if not balance or observe.port is None or len(workers) < 2:
            return [await self.make(i) for i in range(concurrency)]
        share = {pid: concurrency // len(workers) for pid in workers}
        for pid in workers[: concurrency % len(workers)]:
            share[pid] += 1
        held: Counter[int] = Counter()
        ops: list[Op] = []
        parked: list[HttpConnection] = []
        for i in range(concurrency):
            for _ in range(100):
                op = await self.make(i)
                conn = self.conns[-1]
                owner = await self._owner(observe.port, conn)
                if owner is None or held[owner] < share.get(owner, 0):
                    break
                parked.append(self.conns.pop())
            if owner is not None:
                held[owner] += 1
            ops.append(op)
        for conn in parked:
            conn.close()
        return ops

    @staticmethod
    async def _owner(port: int, conn: HttpConnection) -> int | None:
        """The pid of the server process that accepted ``conn`` (None if unknown)."""
        assert conn.transport is not None
        local = conn.transport.get_extra_info("sockname")[1]
        query = f"( sport = :{port} and dport = :{local} )"
        for _ in range(200):
            out = await asyncio.to_thread(
                subprocess.run,
                ["ss", "-tnpH", "state", "established", query],
                capture_output=True,
                text=True,
            )
            found = re.search(r"pid=(\d+)", out.stdout)
            if found:
                return int(found[1])
            await asyncio.sleep(0.01)
        return None


# --------------------------------------------------------------------------------------------
# Baselines: the same operations straight through the driver
# --------------------------------------------------------------------------------------------

SQLITE_DT = "%Y-%m-%d %H:%M:%S.%f"  # SQLAlchemy's DateTime storage format on SQLite


Template = tuple[dict[str, Any], list[tuple[str, list[tuple[Any, ...]], int | None]]]


class Baseline:
    """Equivalent SQL through the server's driver, with no HTTP, validation or indexing.

    Its inserts copy resources the server wrote during the load, with the very index rows
    the server extracted for them (read back from the ``idx_*`` tables), under a new id:
    the baseline pays for the same rows, not for validation or extraction, which are the
    server's own work that the ratio shows.
    """

    style = "pg"

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.templates: dict[str, list[Template]] = {}
        self.counter = 0

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        raise NotImplementedError

    async def load_templates(self, index_tables: list[str], count: int = 200) -> None:
        mark = "$1" if self.style == "pg" else "?"
        for type_ in ("Patient", "Observation"):
            items: list[Template] = []
            resources = await self.fetch_dicts(
                f"SELECT pk, content FROM resource WHERE type = {mark} ORDER BY pk LIMIT {count}",
                type_,
            )
            for res in resources:
                inserts = []
                for table in index_tables:
                    rows = await self.fetch_dicts(
                        f"SELECT * FROM {table} WHERE res_pk = {mark}", res["pk"]
                    )
                    if not rows:
                        continue
                    cols = [c for c in rows[0] if c not in ("res_pk", "pk")]
                    sql = _insert_sql(table, ["res_pk", *cols], self.style)
                    target = cols.index("target_id") + 1 if "target_id" in cols else None
                    inserts.append((sql, [tuple(r[c] for c in cols) for r in rows], target))
                items.append((orjson.loads(res["content"]), inserts))
            if not items:
                raise RuntimeError(f"no {type_} in the database to copy for the baseline")
            self.templates[type_] = items

    def next_resource(
        self, type_: str, subject: str | None
    ) -> tuple[str, str, datetime, list[tuple[str, list[tuple[Any, ...]], int | None]]]:
        self.counter += 1
        items = self.templates[type_]
        body, inserts = items[self.counter % len(items)]
        id_ = str(uuid.uuid4())
        now = datetime.now(UTC).replace(tzinfo=None)
        stamped = dict(body)
        stamped["id"] = id_
        stamped["meta"] = {
            "versionId": "1",
            "lastUpdated": now.isoformat(timespec="milliseconds") + "Z",
        }
        if subject is not None:
            stamped["subject"] = {"reference": subject}
            target_id = subject.split("/")[1]
            inserts = [
                (sql, [(*r[: t - 1], target_id, *r[t:]) for r in rows] if t else rows, t)
                for sql, rows, t in inserts
            ]
        return id_, orjson.dumps(stamped).decode(), now, inserts

    async def create(self, type_: str, subject: str | None = None) -> None:
        raise NotImplementedError

    async def read(self, type_: str, id_: str) -> bool:
        raise NotImplementedError

    async def search_name(self, prefix: str) -> int:
        raise NotImplementedError

    async def search_obs(self, patient_id: str, code: str) -> int:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


def _insert_sql(table: str, columns: list[str], style: str) -> str:
    marks = ", ".join(f"${i + 1}" if style == "pg" else "?" for i in range(len(columns)))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


def _search_name_sql(style: str) -> str:
    match = (
        "s.norm LIKE $1 ESCAPE '\\'" if style == "pg" else "s.norm >= ? AND s.norm < ?"
    )  # the same predicates the server's search SQL uses on each backend
    false = "false" if style == "pg" else "0"
    return (
        "SELECT r.id, r.content FROM resource r WHERE r.type = 'Patient' "
        f"AND r.deleted IS {false} AND EXISTS (SELECT 1 FROM idx_string s "
        "WHERE s.res_pk = r.pk AND s.resource_type = 'Patient' AND s.param = 'name' "
        f"AND {match}) ORDER BY r.pk LIMIT 21"
    )


def _search_obs_sql(style: str) -> str:
    p1, p2 = ("$1", "$2") if style == "pg" else ("?", "?")
    false = "false" if style == "pg" else "0"
    return (
        "SELECT r.id, r.content FROM resource r WHERE r.type = 'Observation' "
        f"AND r.deleted IS {false} "
        "AND EXISTS (SELECT 1 FROM idx_reference f WHERE f.res_pk = r.pk "
        "AND f.resource_type = 'Observation' AND f.param = 'subject' "
        f"AND f.target_id = {p1} AND f.target_type = 'Patient') "
        "AND EXISTS (SELECT 1 FROM idx_token t WHERE t.res_pk = r.pk "
        "AND t.resource_type = 'Observation' AND t.param = 'code' "
        f"AND t.system = 'http://loinc.org' AND t.code = {p2}) ORDER BY r.pk LIMIT 21"
    )


READ_SQL = (
    "SELECT pk, version_id, last_updated, deleted, content FROM resource "
    "WHERE type = {} AND id = {}"
)


class PgBaseline(Baseline):
    """asyncpg pool, one transaction per write, plain prepared statements for reads."""

    style = "pg"

    async def open(self, dsn: str) -> PgBaseline:
        async def no_reset(_conn: asyncpg.Connection) -> None:
            return None

        # Released connections are not reset (asyncpg's default costs a round trip); the
        # server's SQLAlchemy pool rolls back instead. This is the floor.
        self.pool = await asyncpg.create_pool(
            dsn, min_size=self.concurrency, max_size=self.concurrency, reset=no_reset
        )
        self.read_sql = READ_SQL.format("$1", "$2")
        self.name_sql = _search_name_sql("pg")
        self.obs_sql = _search_obs_sql("pg")
        tables = await self.pool.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = current_schema() "
            "AND tablename LIKE 'idx\\_%' ORDER BY tablename"
        )
        await self.load_templates([t["tablename"] for t in tables])
        return self

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await self.pool.fetch(sql, *params)]

    async def create(self, type_: str, subject: str | None = None) -> None:
        id_, content, now, inserts = self.next_resource(type_, subject)
        async with self.pool.acquire() as c, c.transaction():
            pk = await c.fetchval(
                "INSERT INTO resource (type, id, version_id, last_updated, deleted, content) "
                "VALUES ($1, $2, 1, $3, false, $4) RETURNING pk",
                type_,
                id_,
                now,
                content,
            )
            await c.execute(
                "INSERT INTO resource_history (type, id, version_id, last_updated, action, "
                "content) VALUES ($1, $2, 1, $3, 'create', $4)",
                type_,
                id_,
                now,
                content,
            )
            for sql, rows, _ in inserts:
                await c.executemany(sql, [(pk, *r) for r in rows])
            await c.execute(
                "INSERT INTO outbox (created_at, resource_type, resource_id, version_id, action) "
                "VALUES ($1, $2, $3, 1, 'create')",
                now,
                type_,
                id_,
            )

    async def read(self, type_: str, id_: str) -> bool:
        row = await self.pool.fetchrow(self.read_sql, type_, id_)
        return row is not None

    async def search_name(self, prefix: str) -> int:
        return len(await self.pool.fetch(self.name_sql, prefix + "%"))

    async def search_obs(self, patient_id: str, code: str) -> int:
        return len(await self.pool.fetch(self.obs_sql, patient_id, code))

    async def close(self) -> None:
        await self.pool.close()


class SqliteBaseline(Baseline):
    """aiosqlite: one writer connection behind a lock (as the server), a pool for reads."""

    style = "sqlite"

    async def open(self, path: str) -> SqliteBaseline:
        async def connect() -> aiosqlite.Connection:
            conn = await aiosqlite.connect(path, timeout=30, isolation_level=None)
            for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "busy_timeout=30000"):
                await conn.execute(f"PRAGMA {pragma}")
            return conn

        self.writer = await connect()
        self.write_lock = asyncio.Lock()
        self.readers: asyncio.Queue[aiosqlite.Connection] = asyncio.Queue()
        self.all = [self.writer]
        for _ in range(self.concurrency):
            conn = await connect()
            self.all.append(conn)
            self.readers.put_nowait(conn)
        self.read_sql = READ_SQL.format("?", "?")
        self.name_sql = _search_name_sql("sqlite")
        self.obs_sql = _search_obs_sql("sqlite")
        tables = await self._fetch(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'idx\\_%' "
            "ESCAPE '\\' ORDER BY name",
            (),
        )
        await self.load_templates([t[0] for t in tables])
        return self

    async def fetch_dicts(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        async with self.writer.execute(sql, params) as cur:
            names = [d[0] for d in cur.description]
            return [dict(zip(names, row, strict=True)) for row in await cur.fetchall()]

    async def create(self, type_: str, subject: str | None = None) -> None:
        id_, content, now, inserts = self.next_resource(type_, subject)
        ts = now.strftime(SQLITE_DT)
        async with self.write_lock:
            c = self.writer
            await c.execute("BEGIN IMMEDIATE")
            try:
                cur = await c.execute(
                    "INSERT INTO resource (type, id, version_id, last_updated, deleted, content) "
                    "VALUES (?, ?, 1, ?, 0, ?)",
                    (type_, id_, ts, content),
                )
                pk = cur.lastrowid
                await c.execute(
                    "INSERT INTO resource_history (type, id, version_id, last_updated, action, "
                    "content) VALUES (?, ?, 1, ?, 'create', ?)",
                    (type_, id_, ts, content),
                )
                for sql, rows, _ in inserts:
                    await c.executemany(sql, [(pk, *r) for r in rows])
                await c.execute(
                    "INSERT INTO outbox (created_at, resource_type, resource_id, version_id, "
                    "action) VALUES (?, ?, ?, 1, 'create')",
                    (ts, type_, id_),
                )
                await c.execute("COMMIT")
            except BaseException:
                await c.execute("ROLLBACK")
                raise

    async def _fetch(self, sql: str, params: tuple[Any, ...]) -> list[Any]:
        conn = await self.readers.get()
        try:
            async with conn.execute(sql, params) as cur:
                return list(await cur.fetchall())
        finally:
            self.readers.put_nowait(conn)

    async def read(self, type_: str, id_: str) -> bool:
        return bool(await self._fetch(self.read_sql, (type_, id_)))

    async def search_name(self, prefix: str) -> int:
        return len(await self._fetch(self.name_sql, (prefix, prefix + "\U0010ffff")))

    async def search_obs(self, patient_id: str, code: str) -> int:
        return len(await self._fetch(self.obs_sql, (patient_id, code)))

    async def close(self) -> None:
        for conn in self.all:
            await conn.close()


def baseline_ops(
    fn: Callable[[random.Random, int], Awaitable[Any]], seed: int, concurrency: int
) -> list[Op]:
    def make(i: int) -> Op:
        rng = random.Random(seed * 1000 + i)

        async def op() -> bool:
            await fn(rng, i)
            return True

        return op

    return [make(i) for i in range(concurrency)]


# --------------------------------------------------------------------------------------------
# Servers
# --------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def pids(self) -> list[int]:
        return descendants(self.proc.pid)

    def worker_pids(self) -> list[int]:
        """The processes that serve requests (the uvicorn workers, or the one process)."""
        children = [p for p in self.pids() if p != self.proc.pid]
        workers = [p for p in children if "resource_tracker" not in _cmdline(p)]
        return workers or [self.proc.pid]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


async def start_server(url: str, workers: int, workdir: Path, extra_env: list[str]) -> Server:
    port = free_port()
    env = dict(os.environ, SMARTMED_DATABASE_URL=url, SMARTMED_LOG_LEVEL="WARNING")
    for item in extra_env:
        key, _, value = item.partition("=")
        env[key] = value
    log = workdir / f"server-{port}.log"
    cmd = [str(BIN / "smartmed"), "serve", "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--workers", str(workers)]
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    server = Server(proc, port, log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        status = 0
        with contextlib.suppress(OSError):
            status, _ = await http_call(port, "GET", "/readyz")
        if status == 200 and len(server.worker_pids()) >= workers:
            # One worker answering does not mean all have started: wait until every
            # server process is idle (startup loads the definitions, which takes seconds).
            pids = server.pids()
            before = [proc_cpu(p) for p in pids]
            await asyncio.sleep(0.5)
            if all(proc_cpu(p) - b < 0.05 for p, b in zip(pids, before, strict=True)):
                return server
            continue
        await asyncio.sleep(0.2)
    server.stop()
    raise RuntimeError(f"server not ready in 120 s:\n{log.read_text()[-3000:]}")


CANNED = (
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n"
    b'{"status":"ok"}'
)


def canned_server(port: int) -> None:
    """A trivial keep-alive server that answers every request with a fixed 200 (no parsing)."""

    class Canned(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            data = self.pending + data
            n = data.count(b"\r\n\r\n")
            self.pending = data[data.rfind(b"\r\n\r\n") + 4 :] if n else data
            if n:
                self.transport.write(CANNED * n)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Canned, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        uvloop.run(main())


# --------------------------------------------------------------------------------------------
# Databases
# --------------------------------------------------------------------------------------------


async def create_pg_database() -> tuple[str, str]:
    """A fresh PostgreSQL database: (SQLAlchemy URL, asyncpg DSN)."""
    name = f"smartmed_bench_{uuid.uuid4().hex[:12]}"
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    base = PG_ADMIN_URL.rsplit("/", 1)[0]
    return base.replace("postgresql://", "postgresql+asyncpg://", 1) + f"/{name}", f"{base}/{name}"


async def outbox_drained(backend: str, dsn: str, limit: float = 600.0) -> float:
    """Seconds until the server has dispatched the events of everything loaded: measuring
    while it still dispatches a load's worth of events would time that work too."""
    query = "SELECT count(*) FROM outbox WHERE processed_at IS NULL"
    started = time.perf_counter()
    while time.perf_counter() - started < limit:
        if backend == "postgres":
            conn = await asyncpg.connect(dsn)
            try:
                left = int(await conn.fetchval(query))
            finally:
                await conn.close()
        else:
            async with aiosqlite.connect(dsn) as db, db.execute(query) as cursor:
                row = await cursor.fetchone()
                left = int(row[0]) if row else 0
        if left == 0:
            break
        await asyncio.sleep(1.0)
    return time.perf_counter() - started


async def drop_pg_database(dsn: str) -> None:
    conn = await asyncpg.connect(PG_ADMIN_URL)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rsplit("/", 1)[1]}" WITH (FORCE)')
    finally:
        await conn.close()


async def pg_version() -> str:
    try:
        conn = await asyncpg.connect(PG_ADMIN_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        return f"unreachable ({type(exc).__name__})"
    try:
        version = await conn.fetchval("SHOW server_version")
        settings = await conn.fetch(
            "SELECT name, setting, unit FROM pg_settings WHERE name IN ('shared_buffers', "
            "'synchronous_commit', 'fsync', 'autovacuum', 'max_connections', 'jit') ORDER BY name"
        )
    finally:
        await conn.close()
    shown = []
    for row in settings:
        value = row["setting"]
        if row["unit"] == "8kB":
            value = f"{int(value) * 8 // 1024} MB"
        shown.append(f"{row['name']}={value}")
    return f"{version} ({', '.join(shown)})"


# --------------------------------------------------------------------------------------------
# Loading through the API
# --------------------------------------------------------------------------------------------


async def load_through_api(
    port: int, patients: int, per_patient: int, batch: int, inflight: int, seed: int
) -> tuple[list[str], int, float]:
    """Transaction bundles of ``batch`` Patients with their Observations; (ids, count, s)."""
    rng = random.Random(seed)
    bundles: list[tuple[bytes, list[int]]] = []
    for start in range(0, patients, batch):
        entries: list[dict[str, Any]] = []
        positions = []
        for _ in range(min(batch, patients - start)):
            ref = f"urn:uuid:{uuid.UUID(int=rng.getrandbits(128), version=4)}"
            positions.append(len(entries))
            entries.append(
                {
                    "fullUrl": ref,
                    "resource": make_patient(rng),
                    "request": {"method": "POST", "url": "Patient"},
                }
            )
            for k in range(per_patient):
                entries.append(
                    {
                        "resource": make_observation(rng, ref, k),
                        "request": {"method": "POST", "url": "Observation"},
                    }
                )
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        bundles.append((body, positions))
    ids: list[str] = []
    queue = list(enumerate(bundles))
    results: dict[int, list[str]] = {}

    async def loader() -> None:
        conn = await HttpConnection.open("127.0.0.1", port)
        try:
            while queue:
                index, (body, positions) = queue.pop(0)
                raw = http_request("POST", PREFIX, port, body)
                raw = raw.replace(b"\r\n\r\n", b"\r\nPrefer: return=minimal\r\n\r\n", 1)
                status, answer = await conn.request(raw)
                if status != 200:
                    raise RuntimeError(f"load bundle failed: HTTP {status} {answer[:500]!r}")
                entry = orjson.loads(answer)["entry"]
                results[index] = [entry[p]["response"]["location"].split("/")[1] for p in positions]
        finally:
            conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(loader() for _ in range(inflight)))
    seconds = time.perf_counter() - t0
    for index in sorted(results):
        ids += results[index]
    return ids, patients * (1 + per_patient), seconds


# --------------------------------------------------------------------------------------------
# Profiles
# --------------------------------------------------------------------------------------------

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def _package(where: str) -> str:
    """``smartmed/fhir/search`` for smartmed, else the top-level package or stdlib module."""
    parts = where.split("/")
    if parts[0] == "smartmed" and len(parts) > 3:
        return "/".join(parts[:3])
    if parts[0] == "smartmed":
        return where
    return parts[0].removesuffix(".py")


# Activities: (label, where, test on "func (file)"). "any" rules are tried first, in order,
# on the whole stack; then the "up" rules on each frame from the leaf upwards, so that a
# stdlib leaf counts for the library or smartmed code that called it.
ACTIVITIES: tuple[tuple[str, str, Callable[[str], bool]], ...] = (
    ("DB: BEGIN (asyncpg Transaction.start)", "any", lambda f: "Transaction.start " in f),
    (
        "DB: COMMIT / ROLLBACK",
        "any",
        lambda f: "(asyncpg/transaction.py)" in f and ("commit" in f or "rollback" in f),
    ),
    ("validation", "any", lambda f: "(smartmed/fhir/validate.py)" in f),
    (
        "search index extraction",
        "any",
        lambda f: "(smartmed/fhir/search/extract.py)" in f or "fhirpath_fast.py)" in f,
    ),
    ("DB: statements (asyncpg, socket I/O)", "any", lambda f: "(asyncpg/" in f),
    ("DB: aiosqlite (thread hand-off)", "any", lambda f: "(aiosqlite/" in f),
    (
        "uvicorn worker supervision (pipes)",
        "any",
        lambda f: "(multiprocessing/connection.py)" in f,
    ),
    ("SQLAlchemy (build, compile, cache, execute)", "up", lambda f: "(sqlalchemy/" in f),
    ("smartmed code (other)", "up", lambda f: "(smartmed/" in f),
    ("uvicorn HTTP protocol", "up", lambda f: "(uvicorn/" in f),
    (
        "FastAPI / Starlette routing, middleware",
        "up",
        lambda f: "(fastapi/" in f or "(starlette/" in f or "(pydantic" in f,
    ),
    (
        "event loop + C callbacks (uvloop, asyncpg protocol)",
        "up",
        lambda f: "Runner.run (" in f,
    ),
)


def _activity(frames: list[str]) -> str:
    for label, where, test in ACTIVITIES:
        if where == "any" and any(test(f) for f in frames):
            return label
    for frame in reversed(frames):
        for label, where, test in ACTIVITIES:
            if where == "up" and test(frame):
                return label
    return "other"


def summarize_profile(path: Path, top: int = 20) -> str:
    """Time by activity, own time by package, and the top functions by own time.

    py-spy names files relative to their ``sys.path`` entry (``asyncpg/connection.py``,
    ``smartmed/fhir/api.py``, ``asyncio/runners.py``). Time in C code (asyncpg's protocol,
    uvloop, orjson, socket syscalls) is charged to the Python frame that called it.
    """
    own: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    by_activity: Counter[str] = Counter()
    total = 0
    if not path.exists():
        return f"  (no profile written to {path})"
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        frames = []
        for raw in stack.split(";"):
            m = _FRAME.match(raw)
            if m is not None:  # skips the "process N:..." and "thread ..." prefixes
                frames.append(f"{m['func']} ({m['file']})")
        if not frames:
            continue
        total += count
        leaf = frames[-1]
        own[leaf] += count
        by_package[_package(leaf.rsplit(" (", 1)[1][:-1])] += count
        by_activity[_activity(frames)] += count
    if not total:
        return "  (empty profile)"

    def share(n: int) -> str:
        return f"{100 * n / total:5.1f}%"

    lines = [f"  {total} samples (all server processes, on-CPU Python stacks, 100 Hz)"]
    lines.append("  time by activity:")
    lines += [f"    {share(n)}  {name}" for name, n in by_activity.most_common()]
    lines.append("  own time by package/module:")
    lines += [f"    {share(n)}  {name}" for name, n in by_package.most_common(10)]
    lines.append(f"  top {top} functions by own time:")
    lines += [f"    {share(n)}  {name}" for name, n in own.most_common(top)]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# Reporting
# --------------------------------------------------------------------------------------------


def num(x: float, digits: int = 1) -> str:
    return "-" if x != x else f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    return "-" if not b or a != a or b != b else f"{a / b:.2f}"


def render(header: list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to width: the first left-aligned, the rest right-aligned; '|' separates."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        out = []
        for i, (cell, width) in enumerate(zip(cells, widths, strict=True)):
            out.append(cell.ljust(width) if i == 0 else cell.rjust(width))
        return "  ".join(out).rstrip()

    head = line(header)
    return [head, "-" * len(head), *(line(r) for r in rows)]


def print_table(
    title: str, rows: list[tuple[PhaseResult, PhaseResult | None]], has_db_cpu: bool
) -> None:
    print(f"\n{title}")
    header = ["operation", "|", "API req/s", "p50 ms", "p99 ms", "err", "|"]
    header += ["DB req/s", "p50 ms", "p99 ms", "err", "|", "req/s", "p50", "p99"]
    body = []
    for ours, base in rows:
        cells = [ours.name, "|", num(ours.rps), num(ours.pct(0.5), 2), num(ours.pct(0.99), 2)]
        cells += [str(ours.errors), "|"]
        if base is not None:
            cells += [num(base.rps), num(base.pct(0.5), 2), num(base.pct(0.99), 2)]
            cells += [str(base.errors), "|", ratio(ours.rps, base.rps)]
            cells += [ratio(ours.pct(0.5), base.pct(0.5)), ratio(ours.pct(0.99), base.pct(0.99))]
        else:
            cells += ["-"] * 4 + ["|"] + ["-"] * 3
        body.append(cells)
    print("  ours = through the HTTP API; DB = the same operation through the driver with")
    print("  equivalent SQL; ratio = ours / DB (req/s below 1 and latency above 1 = our overhead)")
    print("\n".join(render(header, body)))

    def us(result: PhaseResult | None, cpu: float | None) -> str:
        return "-" if result is None or cpu is None else num(result.per_req_us(cpu), 0)

    def cores(result: PhaseResult | None, *cpus: float) -> str:
        if result is None or not result.seconds:
            return "-"
        parts = [c / result.seconds for c in cpus]
        return "+".join(f"{c:.2f}" for c in parts) + f" = {sum(parts):.2f}"

    print("\n  CPU per request in µs (gen = this load generator, server = all smartmed processes,")
    print(
        "  pg = PostgreSQL backends"
        + ("" if has_db_cpu else "; SQLite runs inside the server or the bench process")
        + ") and cores busy in the window"
    )
    header = ["operation", "|", "API gen", "server", "pg", "cores gen+server+pg", "|"]
    header += ["DB bench", "pg", "cores bench+pg", "|", "conns/worker"]
    body = []
    for ours, base in rows:
        pg_ours = ours.db_cpu if has_db_cpu else None
        pg_base = base.db_cpu if base is not None and has_db_cpu else None
        cells = [ours.name, "|", us(ours, ours.gen_cpu), us(ours, ours.server_cpu)]
        cells += [us(ours, pg_ours)]
        cells += [cores(ours, ours.gen_cpu, ours.server_cpu, *([ours.db_cpu] * has_db_cpu))]
        cells += ["|", us(base, base.gen_cpu if base else None), us(base, pg_base)]
        base_cpu = () if base is None else (base.gen_cpu, *([base.db_cpu] * has_db_cpu))
        cells += [cores(base, *base_cpu)]
        cells += ["|", ours.split or "1 process"]
        body.append(cells)
    print("\n".join(render(header, body)))
    for ours, base in rows:
        for r in (ours, base):
            if r is not None and r.error_samples:
                print(f"  errors in '{r.name}': {r.error_samples}")


# --------------------------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------------------------


@dataclass
class BackendReport:
    backend: str
    workers: int
    load_rate: float
    healthz: PhaseResult
    rows: list[tuple[PhaseResult, PhaseResult | None]]
    profiles: dict[str, str]


async def bench_backend(backend: str, args: argparse.Namespace, workdir: Path) -> BackendReport:
    workers = 1 if backend == "sqlite" else (args.workers or 2)
    if backend == "sqlite":
        path = workdir / "smartmed.db"
        url, dsn = f"sqlite+aiosqlite:///{path}", str(path)
    else:
        url, dsn = await create_pg_database()
        if args.pg_set:
            conn = await asyncpg.connect(PG_ADMIN_URL)
            try:
                for item in args.pg_set:
                    name, _, value = item.partition("=")
                    if not re.fullmatch(r"[a-z_.]+", name):
                        raise ValueError(f"not a PostgreSQL setting name: {name!r}")
                    value = value.replace("'", "''")
                    database = dsn.rsplit("/", 1)[1]
                    await conn.execute(f"ALTER DATABASE \"{database}\" SET {name} = '{value}'")
            finally:
                await conn.close()
    server: Server | None = None
    baseline: Baseline | None = None
    try:
        server = await start_server(url, workers, workdir, args.server_env)
        worker_pids = server.worker_pids()
        observe = Observe(server.pids(), backend == "postgres", server.port, worker_pids)
        label = "PostgreSQL" if backend == "postgres" else "SQLite"
        print(
            f"\n== {label}: server pid {server.proc.pid}, {workers} worker(s) {worker_pids}, "
            f"port {server.port}",
            flush=True,
        )
        C, W, D = args.concurrency, args.warmup, args.duration
        clients = HttpClients(server.port, [http_request("GET", "/healthz", server.port)])
        ops = await clients.open(C, observe, balance=not args.no_balance)
        healthz = await run_phase(
            "GET /healthz (framework floor)", ops, W, args.ceiling_duration, observe
        )
        clients.close()
        print(
            f"   /healthz on this server: {healthz.rps:,.0f} req/s, p50 {healthz.pct(0.5):.2f} ms,"
            f" p99 {healthz.pct(0.99):.2f} ms, server {healthz.per_req_us(healthz.server_cpu):.0f}"
            f" µs CPU/req",
            flush=True,
        )
        ids, loaded, seconds = await load_through_api(
            server.port, args.patients, args.observations_per_patient, args.batch, 4, args.seed
        )
        load_rate = loaded / seconds
        print(
            f"   loaded {args.patients:,} Patients + "
            f"{args.patients * args.observations_per_patient:,} Observations = {loaded:,} "
            f"resources in {seconds:.1f} s through the API: {load_rate:,.0f} resources/s "
            f"(transaction bundles of {args.batch} patients, 4 in flight)",
            flush=True,
        )
        drained = await outbox_drained(backend, dsn)
        print(f"   outbox drained {drained:.1f} s after the load (events of the loaded resources)")
        if backend == "postgres":
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("ANALYZE")  # as autovacuum would, shortly after a load
            finally:
                await conn.close()
        baseline = (
            await PgBaseline(C).open(dsn)
            if backend == "postgres"
            else await SqliteBaseline(C).open(dsn)
        )
        base_observe = Observe([], backend == "postgres")

        rng = random.Random(args.seed + 1)
        port = server.port
        patient_bodies = [
            http_request("POST", f"{PREFIX}/Patient", port, orjson.dumps(make_patient(rng)))
            for _ in range(2000)
        ]
        obs_bodies = [
            http_request(
                "POST",
                f"{PREFIX}/Observation",
                port,
                orjson.dumps(make_observation(rng, f"Patient/{rng.choice(ids)}", k)),
            )
            for k in range(2000)
        ]
        reads = [http_request("GET", f"{PREFIX}/Patient/{i}", port) for i in ids]
        prefixes = sorted({s[:3].lower() for s in SURNAMES})
        name_searches = [http_request("GET", f"{PREFIX}/Patient?name={p}", port) for p in prefixes]
        code = quote(f"http://loinc.org|{HEART_RATE}", safe="")
        obs_searches = [
            http_request("GET", f"{PREFIX}/Observation?subject=Patient/{i}&code={code}", port)
            for i in ids
        ]
        b = baseline
        plans: list[tuple[str, list[bytes], str, Callable[[random.Random, int], Awaitable[Any]]]]
        # Reads and searches first, on exactly the loaded data; the creates (by the API and
        # by the baseline, which is several times faster) grow the database afterwards.
        plans = [
            ("read Patient by id", reads, "random", lambda r, i: b.read("Patient", r.choice(ids))),
            (
                "search Patient?name=",
                name_searches,
                "random",
                lambda r, i: b.search_name(r.choice(prefixes)),
            ),
            (
                "search Observation?subject&code",
                obs_searches,
                "random",
                lambda r, i: b.search_obs(r.choice(ids), HEART_RATE),
            ),
            ("create Patient", patient_bodies, "cycle", lambda r, i: b.create("Patient")),
            (
                "create Observation",
                obs_bodies,
                "cycle",
                lambda r, i: b.create("Observation", f"Patient/{r.choice(ids)}"),
            ),
        ]
        rows: list[tuple[PhaseResult, PhaseResult | None]] = []
        profiles: dict[str, str] = {}
        for n, (name, requests, pick, base_fn) in enumerate(plans):
            if args.profile is not None:
                slug = re.sub(r"[^a-z]+", "-", name.lower()).strip("-")
                observe.profile_to = args.profile / f"{backend}-{slug}.txt"
                observe.profile_pid = server.proc.pid
            clients = HttpClients(port, requests, pick=pick, seed=args.seed + n)
            ops = await clients.open(C, observe, balance=not args.no_balance)
            ours = await run_phase(name, ops, W, D, observe)
            clients.close()
            ours.error_samples = (clients.samples + ours.error_samples)[:3]
            print(
                f"   {name:<32} API {ours.rps:9,.1f} req/s  p50 {ours.pct(0.5):7.2f}  "
                f"p99 {ours.pct(0.99):7.2f} ms  err {ours.errors}",
                flush=True,
            )
            if observe.profile_to is not None:
                profiles[name] = summarize_profile(observe.profile_to)
            base = None
            if not args.no_baseline:
                ops = baseline_ops(base_fn, args.seed + n, C)
                base = await run_phase(name, ops, W, D, base_observe)
                print(
                    f"   {name:<32} DB  {base.rps:9,.1f} req/s  p50 {base.pct(0.5):7.2f}  "
                    f"p99 {base.pct(0.99):7.2f} ms  err {base.errors}",
                    flush=True,
                )
            rows.append((ours, base))
        return BackendReport(backend, workers, load_rate, healthz, rows, profiles)
    finally:
        if baseline is not None:
            await baseline.close()
        if server is not None:
            server.stop()
        if backend == "postgres":
            if args.keep_db:
                print(f"   kept the database: {dsn}")
            else:
                await drop_pg_database(dsn)


async def generator_ceiling(args: argparse.Namespace) -> list[tuple[str, PhaseResult]]:
    """The load generator against a canned-response server: what it can send at most."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, __file__, "--canned-server", str(port)], start_new_session=True
    )
    out: list[tuple[str, PhaseResult]] = []
    try:
        for _ in range(100):
            with contextlib.suppress(OSError):
                await http_call(port, "GET", "/")
                break
            await asyncio.sleep(0.05)
        observe = Observe([proc.pid])
        clients = HttpClients(port, [http_request("GET", "/", port)])
        c, d = args.concurrency, args.ceiling_duration
        ops = await clients.open(c, observe, balance=False)
        raw = await run_phase("raw asyncio client", ops, 1.0, d, observe)
        clients.close()
        out.append(("raw asyncio HTTP/1.1 (used here)", raw))
        import aiohttp

        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(connector=connector) as session:

            async def op() -> bool:
                async with session.get(f"http://127.0.0.1:{port}/") as response:
                    await response.read()
                    return response.status == 200

            result = await run_phase("aiohttp", [op] * c, 1.0, d, observe)
            out.append(("aiohttp ClientSession (for comparison)", result))
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
    return out


def machine_facts(pg: str) -> list[str]:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with contextlib.suppress(OSError):
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 2**20:.0f} GiB"
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "src"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    server_code = subprocess.run(
        [sys.executable, "-c", "import smartmed; print(smartmed.__file__)"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("SMARTMED_")]
    env += [f"PYTHONPATH={os.environ['PYTHONPATH']}"] if "PYTHONPATH" in os.environ else []
    libs = ", ".join(
        f"{d} {dist_version(d)}"
        for d in ("fastapi", "starlette", "uvicorn", "sqlalchemy", "asyncpg", "aiosqlite")
    )
    return [
        f"machine: {os.cpu_count()} cores ({len(os.sched_getaffinity(0))} usable), {cpu}, "
        f"{mem} RAM, {platform.system()} {platform.release()}",
        f"python: {platform.python_version()} ({platform.python_implementation()}), uvloop "
        f"{dist_version('uvloop')}",
        f"databases: PostgreSQL {pg}; SQLite {sqlite3.sqlite_version}",
        f"environment: {' '.join(env) or '(no SMARTMED_* or PYTHONPATH set)'}",
        f"libraries: {libs}",
        f"repository at {commit or '?'}"
        + (" (src/ has uncommitted changes)" if dirty else "")
        + f"; the server imports {server_code}",
    ]


async def main(args: argparse.Namespace) -> int:
    print("$ " + shlex.join([os.path.relpath(sys.executable, Path.cwd()), *sys.argv]))
    backends = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    pg = await pg_version()
    for line in machine_facts(pg):
        print(line)
    print(
        f"settings: {args.patients:,} patients x {args.observations_per_patient} observations, "
        f"concurrency {args.concurrency}, {args.warmup:g} s warm-up + {args.duration:g} s per "
        f"phase, closed loop, server workers: SQLite 1, PostgreSQL {args.workers or 2}"
        + (f", server env {args.server_env}" if args.server_env else "")
        + (f", PostgreSQL settings {args.pg_set}" if args.pg_set else "")
        + ("" if args.no_balance else ", connections balanced across workers")
    )
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        print(f"profiling with py-spy into {args.profile} (figures are perturbed by sampling)")
    print("\nLoad generator ceiling: against a canned-response server (no parsing, 1 process)")
    ceiling = await generator_ceiling(args)
    for label, r in ceiling:
        print(
            f"  {label:<40} {r.rps:9,.0f} req/s  p50 {r.pct(0.5):5.2f} ms  p99 "
            f"{r.pct(0.99):5.2f} ms  generator CPU {r.per_req_us(r.gen_cpu):5.1f} µs/req "
            f"({100 * r.gen_cpu / r.seconds:3.0f}% of a core)",
            flush=True,
        )
    reports: list[BackendReport] = []
    keep = tempfile.mkdtemp(prefix="smartmed-bench-") if args.keep_db else None
    with (
        contextlib.nullcontext(keep)
        if keep
        else tempfile.TemporaryDirectory(prefix="smartmed-bench-") as tmp
    ):
        if keep:
            print(f"keeping the scratch files (SQLite database, server logs) in {keep}")
        for backend in backends:
            try:
                reports.append(await bench_backend(backend, args, Path(tmp)))
            except Exception as exc:  # noqa: BLE001 - report and go on with the next backend
                print(f"\n!! {backend} benchmark failed: {type(exc).__name__}: {exc}", flush=True)
    print("\n" + "=" * 100)
    for rep in reports:
        label = "PostgreSQL" if rep.backend == "postgres" else "SQLite"
        print_table(
            f"{label}: concurrency {args.concurrency}, {rep.workers} server worker(s), "
            f"{args.duration:g} s per phase; load through the API {rep.load_rate:,.0f} "
            f"resources/s; /healthz {rep.healthz.rps:,.0f} req/s "
            f"(p99 {rep.healthz.pct(0.99):.2f} ms)",
            rep.rows,
            rep.backend == "postgres",
        )
        for name, text in rep.profiles.items():
            print(f"\nprofile: {label} '{name}'\n{text}")
    pg_rep = next((r for r in reports if r.backend == "postgres"), None)
    if pg_rep is not None:
        print(
            f"\nTargets (PostgreSQL, concurrency {args.concurrency}, {pg_rep.workers} workers); "
            f"a miss is reported, never a failure"
        )
        for ours, _ in pg_rep.rows:
            line = f"  {ours.name:<32}"
            if ours.name in TARGET_RPS:
                want = TARGET_RPS[ours.name]
                verdict = "PASS" if ours.rps >= want else "MISS"
                line += f"{ours.rps:9,.0f} req/s (>= {want:,.0f}) {verdict}   "
            else:
                line += f"{ours.rps:9,.0f} req/s (no target)      "
            p99 = ours.pct(0.99)
            line += f"p99 {p99:6.1f} ms (<= {TARGET_P99_MS:g}) "
            line += "PASS" if p99 <= TARGET_P99_MS else "MISS"
            print(line)
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "argv": sys.argv,
                    "ceiling": {label: r.summary() for label, r in ceiling},
                    "backends": [
                        {
                            "backend": rep.backend,
                            "workers": rep.workers,
                            "load_resources_per_s": round(rep.load_rate, 1),
                            "healthz": rep.healthz.summary(),
                            "phases": [
                                {"api": o.summary(), "baseline": b.summary() if b else None}
                                for o, b in rep.rows
                            ],
                        }
                        for rep in reports
                    ],
                },
                indent=2,
            )
        )
    return 0 if len(reports) == len(backends) else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument("--patients", type=int, default=2000, help="N Patients to load")
    parser.add_argument(
        "--observations-per-patient", type=int, default=5, help="K Observations per Patient"
    )
    parser.add_argument("--concurrency", type=int, default=16, help="clients in the closed loop")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds measured per phase")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds before measuring")
    parser.add_argument(
        "--ceiling-duration", type=float, default=5.0, help="seconds for the generator ceiling"
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="server workers on PostgreSQL (default 2)"
    )
    parser.add_argument("--batch", type=int, default=50, help="Patients per load bundle")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--no-baseline", action="store_true", help="skip the direct-database baselines"
    )
    parser.add_argument(
        "--profile",
        type=Path,
        default=None,
        metavar="DIR",
        help="py-spy record the server during each API phase; raw stacks into DIR",
    )
    parser.add_argument(
        "--server-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for the server (e.g. SMARTMED_DATABASE_POOL_SIZE=20)",
    )
    parser.add_argument(
        "--no-balance",
        action="store_true",
        help="keep the connections wherever the kernel puts them (default: reconnect until "
        "the server workers hold an even share)",
    )
    parser.add_argument(
        "--keep-db",
        action="store_true",
        help="keep the scratch PostgreSQL database (and print its DSN) to look at plans",
    )
    parser.add_argument(
        "--pg-set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="ALTER DATABASE <scratch> SET NAME = VALUE before the server starts (it applies to "
        "the server and the baseline alike), e.g. plan_cache_mode=force_custom_plan",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write results as JSON")
    parser.add_argument("--canned-server", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


if __name__ == "__main__":
    arguments = parse_args()
    if arguments.canned_server is not None:
        canned_server(arguments.canned_server)
        sys.exit(0)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(main(arguments)))
