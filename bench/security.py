"""What security costs: read-by-id and search with access policies and audit on vs off.

Run: ``.venv/bin/python bench/security.py --db sqlite|postgres [--patients N --per-patient K
--seconds S --clients C]``. In one run, on one scratch database, it

On PostgreSQL each phase runs one app process and one ``smartmed worker`` with
``SMARTMED_JOBS_IN_APP=false`` (the deployment shape of docs/deployment.md): the app
appends audit records, the worker chains and materialises them; the run ends by checking
that every record became an AuditEvent.

1. starts the real server (``smartmed serve``) with security off (no token, no access
   policy, no audit) and loads N Patients with K Observations each, one family-doctor
   team with a contract for every patient, and measures the baseline;
2. restarts the server with security on (``SMARTMED_AUTH_REQUIRED=true``, audit log on) and
   measures the same requests with a family doctor's bearer token (access policy: the
   contracted patients) and with a resident's token (their own record);
3. prints requests/s, p50/p99 latency and the overhead against the baseline. Issue 4's
   target is an overhead under 25 %. A benchmark, not a test: it never fails on a figure.

The load generator, server start-up and closed-loop phases are those of bench/fhir_api.py.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))

import fhir_api as fa  # noqa: E402
from smartmed.config import Settings  # noqa: E402
from smartmed.fhir.storage.database import Database  # noqa: E402
from smartmed.identity.service import Identity  # noqa: E402

SECRET = "bench-secret-key-0123456789abcdef"
TEAM_EXT = "urn:smartmed:extension:contract-care-team"


def with_header(raw: bytes, name: str, value: str) -> bytes:
    return raw.replace(b"\r\n\r\n", f"\r\n{name}: {value}\r\n\r\n".encode(), 1)


async def seed_care(port: int, patient_ids: list[str]) -> None:
    """One team (Practitioner/bench-doc) under contract with every patient."""
    conn = await fa.HttpConnection.open("127.0.0.1", port)
    try:
        entries: list[dict[str, Any]] = [
            {
                "resource": {"resourceType": "Practitioner", "id": "bench-doc"},
                "request": {"method": "PUT", "url": "Practitioner/bench-doc"},
            },
            {
                "resource": {
                    "resourceType": "CareTeam",
                    "id": "bench-team",
                    "participant": [{"member": {"reference": "Practitioner/bench-doc"}}],
                },
                "request": {"method": "PUT", "url": "CareTeam/bench-team"},
            },
        ]
        for pid in patient_ids:
            entries.append(
                {
                    "resource": {
                        "resourceType": "Contract",
                        "status": "executed",
                        "subject": [{"reference": f"Patient/{pid}"}],
                        "applies": {"start": "2026-01-01", "end": "2099-01-01"},
                        "extension": [
                            {
                                "url": TEAM_EXT,
                                "valueReference": {"reference": "CareTeam/bench-team"},
                            }
                        ],
                    },
                    "request": {"method": "POST", "url": "Contract"},
                }
            )
        body = orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})
        raw = with_header(
            fa.http_request("POST", fa.PREFIX, port, body), "Prefer", "return=minimal"
        )
        status, answer = await conn.request(raw)
        if status != 200:
            raise RuntimeError(f"seeding contracts failed: HTTP {status} {answer[:300]!r}")
    finally:
        conn.close()


async def tokens(url: str, port: int, resident: str) -> dict[str, str]:
    settings = Settings(database_url=url, secret_key=SECRET)  # type: ignore[arg-type]
    db = Database(url)
    try:
        identity = Identity(db, settings)
        base = f"http://127.0.0.1:{port}"
        found = {}
        for name, user, roles in (
            ("doctor", "Practitioner/bench-doc", [{"role": "family-doctor"}]),
            ("resident", f"Patient/{resident}", [{"role": "resident"}]),
        ):
            token, _ = await identity.tokens.access_token(
                issuer=base,
                audience=f"{base}/fhir/R4",
                subject=f"bench-{name}",
                client_id="bench",
                scope="user/*.cruds",
                fhir_user=user,
                roles=roles,
            )
            found[name] = token
        return found
    finally:
        await db.dispose()


def requests(port: int, patient_ids: list[str], token: str | None) -> dict[str, list[bytes]]:
    rng = random.Random(7)
    sample = [rng.choice(patient_ids) for _ in range(500)]
    made = {
        "read Patient": [
            fa.http_request("GET", f"{fa.PREFIX}/Patient/{pid}", port) for pid in sample
        ],
        "search Observation": [
            fa.http_request(
                "GET",
                f"{fa.PREFIX}/Observation?subject=Patient/{pid}&code=http://loinc.org|8867-4",
                port,
            )
            for pid in sample
        ],
    }
    if token is not None:
        made = {
            k: [with_header(r, "Authorization", f"Bearer {token}") for r in v]
            for k, v in made.items()
        }
    return made


async def measure(
    label: str, port: int, reqs: dict[str, list[bytes]], args: argparse.Namespace, server: Any
) -> dict[str, fa.PhaseResult]:
    results = {}
    for op, raw in reqs.items():
        clients = fa.HttpClients(port, raw)
        ops = [await clients.make(i) for i in range(args.clients)]
        observe = fa.Observe(server_pids=server.pids(), postgres=args.db == "postgres")
        result = await fa.run_phase(f"{label}: {op}", ops, args.warmup, args.seconds, observe)
        clients.close()
        results[op] = result
    return results


def start_worker(url: str, workdir: Path, extra_env: list[str]) -> subprocess.Popen[bytes]:
    """One ``smartmed worker`` (jobs; audit chaining and materialising) beside the app."""
    env = dict(os.environ, SMARTMED_DATABASE_URL=url, SMARTMED_LOG_LEVEL="WARNING")
    env.update(item.split("=", 1) for item in extra_env)
    with (workdir / "worker.log").open("ab") as out:
        return subprocess.Popen(
            [str(fa.BIN / "smartmed"), "worker"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def stop_worker(proc: subprocess.Popen[bytes] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


async def audit_counts(dsn: str, settle: float = 60.0) -> tuple[int, int, int]:
    """(records, chained, materialised as AuditEvents), once the worker has caught up."""
    conn = await fa.asyncpg.connect(dsn)
    try:
        deadline = time.monotonic() + settle
        while True:
            records = await conn.fetchval("SELECT count(*) FROM audit_log")
            chained = await conn.fetchval("SELECT count(*) FROM audit_log WHERE hash IS NOT NULL")
            events = await conn.fetchval(
                "SELECT count(*) FROM resource WHERE type = 'AuditEvent' AND id LIKE 'audit-%'"
            )
            if events >= records or time.monotonic() > deadline:
                return records, chained, events
            await asyncio.sleep(1)
    finally:
        await conn.close()


async def main(args: argparse.Namespace) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="smartmed-security-"))
    if args.db == "postgres":
        url, dsn = await fa.create_pg_database()
    else:
        url, dsn = f"sqlite+aiosqlite:///{workdir}/bench.db", ""
    # PostgreSQL is deployed as app processes plus workers: the app serves and appends
    # audit records, a worker runs jobs and chains and materialises the audit log
    # (docs/audit.md). Both phases run that way, so the baseline pays for the worker too.
    shape = ["SMARTMED_JOBS_IN_APP=false"] if dsn else []
    off_env = [
        "SMARTMED_AUTH_REQUIRED=false",
        "SMARTMED_AUDIT_ENABLED=false",
        f"SMARTMED_SECRET_KEY={SECRET}",
        *shape,
    ]
    on_env = [
        "SMARTMED_AUTH_REQUIRED=true",
        "SMARTMED_AUDIT_ENABLED=true",
        f"SMARTMED_SECRET_KEY={SECRET}",
        *shape,
    ]
    worker = None
    audited: tuple[int, int, int] | None = None
    try:
        server = await fa.start_server(url, 1, workdir, off_env)
        worker = start_worker(url, workdir, off_env) if dsn else None
        try:
            ids, count, seconds = await fa.load_through_api(
                server.port, args.patients, args.per_patient, 50, 2, seed=1
            )
            print(f"loaded {count} resources in {seconds:.1f} s")
            await seed_care(server.port, ids)
            if dsn:
                conn = await fa.asyncpg.connect(dsn)
                try:
                    await conn.execute("ANALYZE")  # as autovacuum would, shortly after a load
                finally:
                    await conn.close()
            baseline = await measure(
                "off", server.port, requests(server.port, ids, None), args, server
            )
        finally:
            server.stop()
            stop_worker(worker)
        server = await fa.start_server(url, 1, workdir, on_env)
        worker = start_worker(url, workdir, on_env) if dsn else None
        try:
            minted = await tokens(url, server.port, ids[0])
            doctor = await measure(
                "on, doctor",
                server.port,
                requests(server.port, ids, minted["doctor"]),
                args,
                server,
            )
            resident = await measure(
                "on, resident",
                server.port,
                requests(server.port, [ids[0]], minted["resident"]),
                args,
                server,
            )
            if dsn:
                audited = await audit_counts(dsn)
        finally:
            server.stop()
            stop_worker(worker)
    finally:
        if dsn:
            await fa.drop_pg_database(dsn)
    print()
    print(
        f"security on vs off — {args.db}, {args.patients} patients × {args.per_patient} "
        f"observations, {args.clients} clients, {args.seconds:.0f} s per phase"
    )
    header = ["operation", "variant", "req/s", "p50 ms", "p99 ms", "errors", "overhead"]
    rows = []
    for op, base in baseline.items():
        for variant, results in (
            ("off (baseline)", baseline),
            ("on: doctor", doctor),
            ("on: resident", resident),
        ):
            r = results[op]
            overhead = (
                ""
                if results is baseline
                else f"{(base.rps / r.rps - 1) * 100:+.1f}%"
                if r.rps
                else "n/a"
            )
            rows.append(
                [
                    op,
                    variant,
                    fa.num(r.rps),
                    fa.num(r.pct(0.50), 2),
                    fa.num(r.pct(0.99), 2),
                    str(r.errors),
                    overhead,
                ]
            )
    for line in fa.render(header, rows):
        print(line)
    print(
        "overhead = baseline req/s ÷ secured req/s − 1 (time per request added by "
        "token check, access policy and audit record)"
    )
    if audited is not None:
        records, chained, events = audited
        print(
            f"audit: {records:,} records appended, {chained:,} chained, {events:,} "
            "materialised as AuditEvents by the worker (after it caught up)"
        )
    return 0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--per-patient", type=int, default=10)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
