"""Score reads against the bare FastAPI endpoint, measured with wrk, in interleaved rounds.

    .venv/bin/python -m benchmarks.reads --backend both          # docs/benchmarks.md figures
    .venv/bin/python -m benchmarks.reads --backend sqlite --sites 1000 --rounds 1 --seconds 3

`GET /v1/sites/{id}/score` (random site ids, a tenant key) and the bare app's `/constant`
are loaded in turn by `wrk -t2 -c64` (Debian's `wrk`; `apt-get install wrk`), with one
server process and then with `--workers 2` for both. Each round measures the project and the
bare endpoint back to back; the figures are medians of the rounds and the ratio of the medians.

The throughput must be the server's, not the load generator's: for every run the script reads
the CPU seconds the server processes (and their uvicorn workers) and wrk used, from /proc and
wait4. A server near one core per process while wrk uses a fraction of a core is server-bound;
the table prints both.

Every server binds 127.0.0.1 on a free port; every loop has a count; every process and
scratch database it starts is stopped or dropped.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from benchmarks import run

WRK = shutil.which("wrk")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_RPS = re.compile(r"Requests/sec:\s+([\d.]+)")
_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors:.*")
_PERCENTILE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", re.MULTILINE)
_UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


@dataclass(frozen=True)
class Load:
    """One wrk run: requests per second, latency percentiles, and who used the CPU."""

    rps: float
    p50_ms: float
    p99_ms: float
    server_cpu_s: float
    wrk_cpu_s: float
    seconds: float

    @property
    def server_cores(self) -> float:
        """Cores the server processes kept busy on average."""
        return self.server_cpu_s / self.seconds

    @property
    def wrk_cores(self) -> float:
        """Cores wrk kept busy on average."""
        return self.wrk_cpu_s / self.seconds

    @property
    def server_ms_per_request(self) -> float:
        """Server CPU time per request answered."""
        return 1000 * self.server_cpu_s / (self.rps * self.seconds)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (uvicorn's worker processes), from /proc."""
    found: list[int] = []
    todo = [pid]
    while todo and len(found) < 256:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*/children"):
            todo.extend(int(child) for child in task.read_text().split())
    return found


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU seconds used so far by `pids` (those still running)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLOCK_TICKS


def wrk_script(paths: list[str], headers: dict[str, str], directory: Path) -> Path:
    """A wrk Lua script that requests `paths` in turn, with `headers`."""
    script = directory / f"paths-{len(paths)}-{random.random():.6f}.lua"
    listed = ",\n".join(f'  "{p}"' for p in paths)
    set_headers = "\n".join(f'wrk.headers["{k}"] = "{v}"' for k, v in headers.items())
    script.write_text(
        f"{set_headers}\nlocal paths = {{\n{listed}\n}}\nlocal i = 0\n"
        "request = function()\n  i = i % #paths + 1\n"
        '  return wrk.format("GET", paths[i])\nend\n'
    )
    return script


def load(
    base: str, script: Path, server_pid: int, connections: int, threads: int, seconds: int
) -> Load:
    """Run wrk against `base` with `script`; refuse any non-2xx answer or socket error."""
    assert WRK is not None, "wrk is not installed (apt-get install wrk)"
    pids = process_tree(server_pid)
    before = cpu_seconds(pids)
    started = time.perf_counter()
    proc = subprocess.Popen(
        [WRK, f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", "-s",
         str(script), base],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    elapsed = time.perf_counter() - started
    server = cpu_seconds(pids) - before
    if status != 0:
        raise RuntimeError(f"wrk failed:\n{output}")
    for pattern in (_NON_2XX, _SOCKET_ERRORS):
        found = pattern.search(output)
        if found:
            raise RuntimeError(f"wrk saw errors from {base}: {found.group(0)}\n{output}")
    latency = {q: float(v) * _UNIT[u] for q, v, u in _PERCENTILE.findall(output)}
    rps = _RPS.search(output)
    assert rps is not None, output
    return Load(
        rps=float(rps.group(1)),
        p50_ms=latency["50"],
        p99_ms=latency["99"],
        server_cpu_s=server,
        wrk_cpu_s=usage.ru_utime + usage.ru_stime,
        seconds=elapsed,
    )


def compare(
    api: run.Server,
    bare: run.Server,
    score_paths: list[str],
    headers: dict[str, str],
    *,
    rounds: int,
    seconds: int,
    connections: int = 64,
    threads: int = 2,
) -> dict[str, Any]:
    """Interleaved rounds of score reads and the bare endpoint; medians and their ratio."""
    with tempfile.TemporaryDirectory(prefix="riskalert-wrk-") as tmp:
        scores = wrk_script(score_paths, headers, Path(tmp))
        constant = wrk_script(["/constant"], {}, Path(tmp))
        # Warm both (key cache, pools, imports) before measuring.
        load(api.base, scores, api.proc.pid, connections, threads, 2)
        load(bare.base, constant, bare.proc.pid, connections, threads, 2)
        runs: dict[str, list[Load]] = {"score": [], "bare": []}
        for _ in range(rounds):
            runs["score"].append(load(api.base, scores, api.proc.pid, connections, threads,
                                      seconds))  # fmt: skip
            runs["bare"].append(load(bare.base, constant, bare.proc.pid, connections, threads,
                                     seconds))  # fmt: skip

    def median(name: str, attribute: str) -> float:
        return float(statistics.median(getattr(r, attribute) for r in runs[name]))

    return {
        "connections": connections,
        "wrk_threads": threads,
        "rounds": rounds,
        "seconds": seconds,
        **{
            f"{name}_{attribute}": median(name, attribute)
            for name in runs
            for attribute in (
                "rps",
                "p50_ms",
                "p99_ms",
                "server_cores",
                "wrk_cores",
                "server_ms_per_request",
            )
        },
        "ratio": median("score", "rps") / median("bare", "rps"),
    }


def run_backend(backend: str, args: argparse.Namespace, logs: Path) -> dict[str, Any]:
    """Preload sites on a scratch database, then compare with one and with several workers."""
    out: dict[str, Any] = {}
    with run.scratch_database(backend, keep=False, label="reads") as db:
        keys, out["preload"] = run.preload(db, args.sites, 0, args.seed)
        rng = random.Random(args.seed)
        engine = create_engine(db.url)
        with engine.connect() as conn:
            site_ids = [int(i) for i in conn.exec_driver_sql(
                "SELECT id FROM target WHERE kind = 'site'").scalars()]  # fmt: skip
        engine.dispose()
        paths = [f"/v1/sites/{rng.choice(site_ids)}/score" for _ in range(1000)]
        headers = {"Authorization": f"Bearer {keys.reader}"}
        for workers in args.workers:
            run.log(f"{backend}: reads with {workers} server process(es)")
            api = run.start_api(db, "inline", logs, serve_workers=workers)
            bare = run.start_bare(logs, workers=workers)
            try:
                out[f"workers_{workers}"] = compare(
                    api, bare, paths, headers, rounds=args.rounds, seconds=args.seconds
                )
            finally:
                run.stop_server(bare)
                run.stop_server(api)
            run.log(f"{backend}: {out[f'workers_{workers}']}")
    return out


def table(results: dict[str, Any]) -> str:
    """One line per backend and worker count."""
    lines = [
        "| engine | processes | score req/s | bare req/s | ratio | score p50 / p99 ms "
        "| server cores (score / bare) | server ms per request (score / bare) "
        "| wrk cores (score / bare) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for backend, by_workers in results["backends"].items():
        for key, r in by_workers.items():
            if not key.startswith("workers_"):
                continue
            lines.append(
                f"| {backend} | {key.removeprefix('workers_')} | {r['score_rps']:,.0f} "
                f"| {r['bare_rps']:,.0f} | **{r['ratio']:.2f}** "
                f"| {r['score_p50_ms']:.1f} / {r['score_p99_ms']:.1f} "
                f"| {r['score_server_cores']:.2f} / {r['bare_server_cores']:.2f} "
                f"| {r['score_server_ms_per_request']:.2f} / {r['bare_server_ms_per_request']:.2f} "
                f"| {r['score_wrk_cores']:.2f} / {r['bare_wrk_cores']:.2f} |"
            )
    return "\n".join(lines)


def main() -> None:
    """Parse the options, run each backend, print the table."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--backend", choices=["sqlite", "postgresql", "both"], default="both")
    p.add_argument("--sites", type=int, default=10_000)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if WRK is None:
        sys.exit("wrk is not installed: apt-get install wrk")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    results: dict[str, Any] = {"machine": run.machine(), "args": vars(args), "backends": {}}
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_dir = run.RESULTS / f"reads-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=True)
    for backend in backends:
        results["backends"][backend] = run_backend(backend, args, run_dir)
    text = table(results)
    (run_dir / "table.md").write_text(text + "\n")
    print(text)
    run.log(f"results in {run_dir.relative_to(run.ROOT)}")


if __name__ == "__main__":
    main()
