"""Side-by-side write benchmark: 3-node faultlab vs 3-node PySyncObj vs 3-node etcd, on this machine.

Same closed-loop load for every system: C clients (1, 16, 64 by default), each
writing a 100-byte value to its own key and sending the next write as soon as the
last is answered, for a fixed duration after a warm-up. Prints throughput and
p50/p99 per system, the ratios faultlab/PySyncObj and faultlab/etcd, whether each
system fsyncs, and the load generator's CPU; writes JSON to ``bench/results/``.

- faultlab: `faultlab-node raft` processes (fsync on), clients are closed loops in
  separate generator processes (``loadgen.py``) sharing one ``RaftClient`` (sessions on) per
  process, one unary ``KV.Put`` per write. faultlab-pipeline: the same cluster and generators
  with ``RaftClient(pipeline=True)``: the writes go over one ``KV.Pipeline`` stream per process,
  where what is ready at each write shares a message. ``--client-per-loop`` gives every
  closed loop a client of its own (for the pipeline: a stream of its own, so no batching).
- faultlab-inprocess: the same nodes with the clients inside the leader's process
  (``inproc_node.py``: closed loops of ``RaftNode.propose`` with sessions), as PySyncObj's are:
  the Raft core, WAL and replication without a gRPC client per write.
- etcd: the binary the k8s tooling builds (``~/.cache/faultlab/k8s/<version>/bin/etcd``;
  absent: said in the output), fsync on (its default); clients use etcd's gRPC
  ``KV.Put`` from the same generator processes, with the request encoded by hand
  (no stub generation), so both gRPC systems pay the same client costs.
- PySyncObj: three processes (``pso_node.py``), clients inside the leader's
  process (PySyncObj has no client protocol), tuned ``autoTickPeriod=0.001``,
  ``appendEntriesPeriod=0.002``, batching on; it keeps its log in memory (no fsync).
  ``pysyncobj``: each client is a chain of callbacks (no client threads: the
  cheapest client there is); ``pysyncobj-threads``: each client is a thread
  blocking in ``put(sync=True)``, as an application's request threads would be.

``--profile`` samples faultlab's leader with py-spy during the largest run and
prints where its time goes. Usage: ``python bench/raft/run.py [--duration 10]
[--clients 1,16,64] [--systems faultlab,faultlab-pipeline,faultlab-inprocess,pysyncobj,...] [--profile]``.

- grpc-floor: a no-op grpc.aio Put server driven by the same generators: the
  ceiling the Python gRPC stack itself sets on this machine (no consensus, no disk).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(HERE))

_host = [20]


def free_address() -> str:
    host = f"127.0.0.{_host[0]}"
    _host[0] += 1
    with socket.socket() as s:
        s.bind((host, 0))
        return f"{host}:{s.getsockname()[1]}"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(q * len(v)))]


def summarize(parts: list[dict[str, Any]], duration: float) -> dict[str, Any]:
    lat = [x for p in parts for x in p["latencies"]]
    count = sum(p["count"] for p in parts)
    return {"throughput": count / duration, "p50_ms": percentile(lat, 0.5) * 1e3,
            "p99_ms": percentile(lat, 0.99) * 1e3, "errors": sum(p["errors"] for p in parts),
            "generator_cpu_s": sum(p["cpu_s"] for p in parts), "writes": count}


# ---------------------------------------------------------------- clusters

class Cluster:
    name = ""
    fsync = False
    note = ""

    def start(self, workdir: Path) -> None: ...

    def stop(self) -> None: ...

    def targets(self) -> list[str]:
        return []

    def leader_pid(self) -> int | None:
        return None


class Procs:
    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []

    def spawn(self, cmd: list[str], log: Path, **kw: Any) -> subprocess.Popen[bytes]:
        with open(log, "ab") as f:
            p = subprocess.Popen(cmd, stdout=kw.pop("stdout", f), stderr=f, **kw)
        self.procs.append(p)
        return p

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        self.procs.clear()


UVLOOP_MAIN = ("import sys, uvloop; uvloop.install(); from faultlab.nodes.common.main import main; "
               "sys.argv[0] = 'faultlab-node'; main()")


class FaultlabCluster(Cluster):
    name = "faultlab"
    fsync = True

    def __init__(self, uvloop: bool, pipeline: bool = False) -> None:
        self.p = Procs()
        self.addrs: dict[str, str] = {}
        self.pids: dict[str, int] = {}
        self.uvloop = uvloop
        # pipeline: the same nodes, driven through RaftClient(pipeline=True) (KV.Pipeline streams).
        self.pipeline = pipeline
        self.name = "faultlab-pipeline" if pipeline else "faultlab"
        self.note = ("uvloop event loop" if uvloop else "default asyncio event loop") + (
            "; clients on KV.Pipeline streams" if pipeline else "; clients on unary KV.Put")

    def start(self, workdir: Path) -> None:
        self.addrs = {f"n{i}": free_address() for i in (1, 2, 3)}
        peers = ",".join(f"{k}={v}" for k, v in self.addrs.items())
        for mid, addr in self.addrs.items():
            launcher = ["-c", UVLOOP_MAIN] if self.uvloop else ["-m", "faultlab.nodes.common.main"]
            cmd = [sys.executable, *launcher, "raft", "--id", mid, "--listen", addr,
                   "--peers", peers, "--data-dir", str(workdir / mid), "--log-level", "WARNING"]
            # Nodes pick uvloop themselves when it is installed: --uvloop off must say so.
            env = {**os.environ, "FAULTLAB_UVLOOP": "1" if self.uvloop else "0"}
            self.pids[mid] = self.p.spawn(cmd, workdir / f"{mid}.log", env=env).pid
        asyncio.run(self._wait())

    async def _wait(self) -> None:
        from faultlab.nodes.raft.client import RaftClient

        async with RaftClient(self.addrs, timeout=30) as c:
            await c.put("warm", "up")
            self.leader = (await c.status()).id

    def targets(self) -> list[str]:
        return list(self.addrs.values())

    def leader_pid(self) -> int | None:
        return self.pids.get(self.leader)

    def stop(self) -> None:
        self.p.stop()


class InprocFaultlabCluster(FaultlabCluster):
    """The same faultlab nodes, with the clients inside the leader's process (``inproc_node.py``), as
    PySyncObj's are: the Raft core, WAL and replication without a gRPC client per write."""

    def __init__(self, uvloop: bool) -> None:
        super().__init__(uvloop)
        self.name = "faultlab-inprocess"
        self.note = ("uvloop event loop" if uvloop else "default asyncio event loop") + (
            "; clients in the leader's process (RaftNode.propose with sessions, no client network)")
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, workdir: Path) -> None:
        self.addrs = {f"n{i}": free_address() for i in (1, 2, 3)}
        peers = ",".join(f"{k}={v}" for k, v in self.addrs.items())
        for mid, addr in self.addrs.items():
            cmd = [sys.executable, str(HERE / "inproc_node.py"), "--id", mid, "--listen", addr,
                   "--peers", peers, "--data-dir", str(workdir / mid), "--log-level", "WARNING"]
            env = {**os.environ, "FAULTLAB_UVLOOP": "1" if self.uvloop else "0"}
            proc = self.p.spawn(cmd, workdir / f"{mid}.log", env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.procs[mid] = proc
            self.pids[mid] = proc.pid
        asyncio.run(self._wait())

    def run_load(self, clients: int, duration: float, warmup: float, value_bytes: int) -> dict[str, Any]:
        asyncio.run(self._wait())  # the leader now (an election may have moved it)
        proc = self.procs[self.leader]
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(f"load {clients} {duration} {warmup} {value_bytes}\n".encode())
        proc.stdin.flush()
        out: dict[str, Any] = json.loads(proc.stdout.readline())
        if "error" in out:
            raise RuntimeError(f"faultlab-inprocess: {out['error']}")
        return out


class GrpcFloor(Cluster):
    """One process answering Put at once: what the Python gRPC stack alone allows here."""

    name = "grpc-floor"
    fsync = False
    note = "no-op grpc.aio Put server, 1 process: the ceiling of Python gRPC on this machine"

    def __init__(self, uvloop: bool) -> None:
        self.p = Procs()
        self.address = ""
        self.uvloop = uvloop

    def start(self, workdir: Path) -> None:
        self.address = free_address()
        self.p.spawn([sys.executable, str(HERE / "echo_server.py"), self.address,
                      *(["--uvloop"] if self.uvloop else [])], workdir / "echo.log")
        asyncio.run(self._wait())

    async def _wait(self) -> None:
        from faultlab.nodes.raft.client import RaftClient

        async with RaftClient([self.address], timeout=30) as c:
            await c.put("warm", "up")

    def targets(self) -> list[str]:
        return [self.address]

    def stop(self) -> None:
        self.p.stop()


def find_etcd() -> Path | None:
    base = Path.home() / ".cache" / "faultlab" / "k8s"
    found = sorted(base.glob("*/bin/etcd"))
    return found[-1] if found else (Path(shutil.which("etcd")) if shutil.which("etcd") else None)


class EtcdCluster(Cluster):
    name = "etcd"
    fsync = True

    def __init__(self, binary: Path) -> None:
        self.binary = binary
        self.p = Procs()
        self.clients: list[str] = []
        self.note = str(binary)

    def start(self, workdir: Path) -> None:
        members = {f"e{i}": (free_address(), free_address()) for i in (1, 2, 3)}
        initial = ",".join(f"{m}=http://{peer}" for m, (_, peer) in members.items())
        for m, (client, peer) in members.items():
            cmd = [str(self.binary), "--name", m, "--data-dir", str(workdir / m),
                   "--listen-client-urls", f"http://{client}", "--advertise-client-urls", f"http://{client}",
                   "--listen-peer-urls", f"http://{peer}", "--initial-advertise-peer-urls", f"http://{peer}",
                   "--initial-cluster", initial, "--initial-cluster-state", "new",
                   "--initial-cluster-token", "faultlab-bench", "--log-level", "error"]
            self.p.spawn(cmd, workdir / f"{m}.log")
            self.clients.append(client)
        asyncio.run(self._wait())

    async def _wait(self) -> None:
        import grpc

        from bench.raft.loadgen import etcd_put_request

        deadline = time.monotonic() + 30
        while True:
            try:
                async with grpc.aio.insecure_channel(self.clients[0]) as ch:
                    put = ch.unary_unary("/etcdserverpb.KV/Put")
                    await put(etcd_put_request(b"warm", b"up"), timeout=2)
                    return
            except grpc.aio.AioRpcError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.2)

    def targets(self) -> list[str]:
        return self.clients

    def stop(self) -> None:
        self.p.stop()


class PySyncObjCluster(Cluster):
    name = "pysyncobj"
    fsync = False

    def __init__(self, threads: bool = False) -> None:
        self.p = Procs()
        self.nodes: list[subprocess.Popen[bytes]] = []
        # threads: each client a thread blocking in put(sync=True); else a chain of callbacks.
        self.mode = "threads" if threads else "callbacks"
        self.name = "pysyncobj-threads" if threads else "pysyncobj"
        self.note = ("clients in the leader's process, " +
                     ("one thread each, put(sync=True)" if threads else "callback chains, no client threads") +
                     "; log in memory")

    def start(self, workdir: Path) -> None:
        addrs = [free_address() for _ in range(3)]
        for a in addrs:
            partners = ",".join(x for x in addrs if x != a)
            proc = self.p.spawn([sys.executable, str(HERE / "pso_node.py"), "--self", a, "--partners", partners],
                                workdir / f"pso-{a}.log", stdin=subprocess.PIPE, stdout=subprocess.PIPE)
            self.nodes.append(proc)
        deadline = time.monotonic() + 30
        while self.leader() is None:
            if time.monotonic() > deadline:
                raise RuntimeError("PySyncObj elected no leader in 30s")
            time.sleep(0.2)

    def _ask(self, proc: subprocess.Popen[bytes], line: str) -> dict[str, Any]:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(line.encode() + b"\n")
        proc.stdin.flush()
        return json.loads(proc.stdout.readline())

    def leader(self) -> subprocess.Popen[bytes] | None:
        for proc in self.nodes:
            st = self._ask(proc, "status")
            if st["leader"] and st["ready"]:
                return proc
        return None

    def run_load(self, clients: int, duration: float, warmup: float, value_bytes: int) -> dict[str, Any]:
        leader = self.leader()
        if leader is None:
            raise RuntimeError("PySyncObj has no leader")
        return self._ask(leader, f"load {clients} {duration} {warmup} {value_bytes} {self.mode}")

    def leader_pid(self) -> int | None:
        leader = self.leader()
        return leader.pid if leader else None

    def stop(self) -> None:
        for proc in self.nodes:
            with contextlib.suppress(Exception):
                assert proc.stdin is not None
                proc.stdin.write(b"quit\n")
                proc.stdin.flush()
        self.p.stop()


# ---------------------------------------------------------------- load

GENERATOR_FLAGS: list[str] = []


def generator_load(system: str, targets: list[str], clients: int, duration: float, warmup: float,
                   value_bytes: int, extra: tuple[str, ...] = ()) -> dict[str, Any]:
    procs = 1 if clients == 1 else 2
    share = [clients // procs + (1 if i < clients % procs else 0) for i in range(procs)]
    running = []
    offset = 0
    tmp = Path(tempfile.mkdtemp(prefix="loadgen-"))
    for i, n in enumerate(share):
        cmd = [sys.executable, str(HERE / "loadgen.py"), "--system", system, "--targets", ",".join(targets),
               "--clients", str(n), "--duration", str(duration), "--warmup", str(warmup),
               "--value-bytes", str(value_bytes), "--offset", str(offset), "--out", str(tmp / f"{i}.json"),
               *GENERATOR_FLAGS, *extra]
        offset += n
        running.append(subprocess.Popen(cmd, cwd=ROOT))
    parts = []
    for i, p in enumerate(running):
        code = p.wait(timeout=duration + warmup + 120)
        out = tmp / f"{i}.json"
        if not out.exists():
            raise RuntimeError(f"load generator {i} for {system} exited {code} without a result")
        parts.append(json.loads(out.read_text()))
    shutil.rmtree(tmp, ignore_errors=True)
    result = summarize(parts, duration)
    result["generator_processes"] = procs
    return result


AREAS = (
    ("fsync (WAL thread, waiting on the disk)", ("RaftStorage._sync",)),
    ("WAL encode + write", ("storage.py",)),
    ("raft core (core.py, log.py, progress.py)", ("raft/core.py", "raft/log.py", "raft/progress.py")),
    ("state machine apply", ("statemachine.py",)),
    ("shell loop (node.py)", ("raft/node.py",)),
    ("KV/Peer servicers (service.py)", ("raft/service.py",)),
    ("transport + protobuf conversion", ("raft/transport.py",)),
    ("grpc.aio (C core, callbacks, calls)", ("grpc/", "grpc_")),
    ("asyncio event loop + thread pool", ("asyncio/", "concurrent/futures", "selectors.py", "threading.py")),
)


def profile(pid: int, seconds: float, out: Path) -> dict[str, Any] | None:
    """py-spy samples of the leader: share per area (by innermost frame) and top functions."""
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        return None
    subprocess.run([spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-f", "raw", "-o", str(out),
                    "--nonblocking"], capture_output=True, check=False)
    if not out.exists():
        return None
    areas: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    total = 0
    for line in out.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        count = int(n)
        total += count
        frames = stack.split(";")
        leaf = frames[-1]
        area = "other"
        if any("RaftStorage._sync" in f for f in frames):
            area = AREAS[0][0]
        else:
            for f in reversed(frames):
                hit = next((name for name, keys in AREAS[1:] if any(k in f for k in keys)), None)
                if hit is not None:
                    area = hit
                    break
        areas[area] += count
        for f in frames:
            if "/raft/" in f or "nodes/raft" in f:
                own[f.split(" (")[0]] += count
        own["(leaf) " + leaf.split(" (")[0]] += 0
    if not total:
        return None
    return {"samples": total,
            "areas_pct": {a: round(c / total * 100, 1) for a, c in areas.most_common()},
            "raft_functions_inclusive_pct": {f: round(c / total * 100, 1) for f, c in own.most_common(15) if c}}


def run_system(cluster: Cluster, clients_list: list[int], duration: float, warmup: float, value_bytes: int,
               workdir: Path, do_profile: bool) -> dict[str, Any]:
    results: dict[str, Any] = {"fsync": cluster.fsync, "note": cluster.note, "runs": {}}
    cluster.start(workdir)
    try:
        for clients in clients_list:
            prof: dict[str, Any] | None = None
            if isinstance(cluster, PySyncObjCluster | InprocFaultlabCluster):
                part = cluster.run_load(clients, duration, warmup, value_bytes)
                r = summarize([part], duration)
                r["generator_cpu_s"] = None
                r["server_process_cpu_s"] = part["cpu_s"]
            else:
                profiler = None
                if do_profile and cluster.name.startswith("faultlab") and clients == max(clients_list):
                    pid = cluster.leader_pid()
                    if pid is not None:
                        import threading

                        holder: dict[str, Any] = {}

                        def spy(pid: int = pid, holder: dict[str, Any] = holder) -> None:
                            time.sleep(warmup)
                            holder["p"] = profile(pid, min(duration, 8), workdir / "leader-profile.txt")
                        profiler = threading.Thread(target=spy)
                        profiler.start()
                system = "faultlab" if cluster.name in ("grpc-floor", "faultlab-pipeline") else cluster.name
                extra = ("--pipeline",) if isinstance(cluster, FaultlabCluster) and cluster.pipeline else ()
                r = generator_load(system, cluster.targets(), clients, duration, warmup, value_bytes, extra)
                if profiler is not None:
                    profiler.join()
                    prof = holder.get("p")
            results["runs"][str(clients)] = r
            print(f"  {cluster.name:17s} clients={clients:3d}  {r['throughput']:8.0f} writes/s  "
                  f"p50 {r['p50_ms']:6.2f} ms  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}"
                  + (f"  generator cpu {r['generator_cpu_s']:.1f}s" if r.get("generator_cpu_s") is not None
                     else f"  (in-process clients; process cpu {r.get('server_process_cpu_s', 0):.1f}s)"),
                  flush=True)
            if prof:
                results["profile_leader"] = prof
                print(f"  where faultlab's leader spends its time ({prof['samples']} py-spy samples, "
                      f"{clients} clients; by innermost known frame):")
                for area, pct in prof["areas_pct"].items():
                    print(f"    {pct:5.1f}%  {area}")
                print("  faultlab functions (inclusive):")
                for fn, pct in prof["raft_functions_inclusive_pct"].items():
                    print(f"    {pct:5.1f}%  {fn}")
    finally:
        cluster.stop()
    return results


def make_cluster(name: str, uv: bool, systems_out: dict[str, Any]) -> Cluster | None:
    """The cluster for a system name; None (said, and noted in ``systems_out``) when it cannot run."""
    if name in ("faultlab", "faultlab-pipeline"):
        return FaultlabCluster(uv, pipeline=name == "faultlab-pipeline")
    if name == "faultlab-inprocess":
        return InprocFaultlabCluster(uv)
    if name == "grpc-floor":
        return GrpcFloor(uv)
    if name in ("pysyncobj", "pysyncobj-threads"):
        try:
            import pysyncobj  # type: ignore[import-not-found]  # noqa: F401
        except ImportError:
            print(f"  {name}: not installed (pip install 'faultlab[bench]'); skipped")
            systems_out[name] = {"skipped": "pysyncobj not installed"}
            return None
        return PySyncObjCluster(threads=name == "pysyncobj-threads")
    if name == "etcd":
        binary = find_etcd()
        if binary is None:
            msg = ("etcd binary not found (~/.cache/faultlab/k8s/<version>/bin/etcd, built by "
                   "tools/k8s/build.sh); etcd skipped")
            print(f"  etcd: {msg}")
            systems_out["etcd"] = {"skipped": msg}
            return None
        return EtcdCluster(binary)
    raise SystemExit(f"unknown system {name!r}")


def _has_uvloop() -> bool:
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--value-bytes", type=int, default=100)
    ap.add_argument("--systems",
                    default="faultlab,faultlab-pipeline,faultlab-inprocess,pysyncobj,pysyncobj-threads,etcd,"
                            "grpc-floor")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--uvloop", choices=("auto", "on", "off"), default="auto",
                    help="run faultlab nodes (and the generators) on uvloop when installed (auto)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat every system this many times, interleaved, and report medians: on a shared "
                         "2-core machine one run of a system varies by 20%% or more")
    ap.add_argument("--client-per-loop", action="store_true",
                    help="every closed loop of a generator gets its own client (RaftClient, etcd channel) "
                         "instead of sharing one per generator process")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results"))
    a = ap.parse_args()
    clients_list = [int(x) for x in a.clients.split(",")]
    uv = a.uvloop == "on" or (a.uvloop == "auto" and _has_uvloop())
    if uv:
        GENERATOR_FLAGS.append("--uvloop")
    if a.client_per_loop:
        GENERATOR_FLAGS.append("--client-per-loop")
    systems = a.systems.split(",")
    print(f"machine: {os.cpu_count()} cpus, {platform.python_implementation()} {platform.python_version()}, "
          f"load average {os.getloadavg()[0]:.1f}; {a.duration:.0f}s per run after {a.warmup:.0f}s warm-up, "
          f"{a.value_bytes}-byte values, closed loop, "
          f"{'a client per loop' if a.client_per_loop else 'one client per generator process'}; "
          f"uvloop {'on' if uv else 'off'} "
          f"(faultlab nodes and the gRPC load generators)")
    report: dict[str, Any] = {"started": time.strftime("%Y-%m-%dT%H:%M:%S"), "duration_s": a.duration,
                              "value_bytes": a.value_bytes, "cpus": os.cpu_count(),
                              "client_per_loop": a.client_per_loop,
                              "load_average_at_start": os.getloadavg()[0], "uvloop": uv, "systems": {}}
    per_round: list[dict[str, Any]] = []
    for rnd in range(a.rounds):
        if a.rounds > 1:
            print(f"round {rnd + 1} of {a.rounds}", flush=True)
        systems_out: dict[str, Any] = {}
        for name in systems:
            cluster = make_cluster(name, uv, systems_out)
            if cluster is None:
                continue
            print(f"{name} (fsync: {'yes' if cluster.fsync else 'no'}{'; ' + cluster.note if cluster.note else ''})")
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                systems_out[name] = run_system(cluster, clients_list, a.duration, a.warmup, a.value_bytes,
                                               Path(tmp), a.profile and rnd == 0)
        per_round.append(systems_out)
    report["systems"] = per_round[0] if a.rounds == 1 else per_round[-1]
    if a.rounds > 1:
        report["rounds"] = per_round
    ratios: dict[str, dict[str, float]] = {}
    ratio_rounds: dict[str, dict[str, list[float]]] = {}
    for ours in ("faultlab", "faultlab-pipeline", "faultlab-inprocess"):
        for peer in ("pysyncobj", "pysyncobj-threads", "etcd", "grpc-floor"):
            for c in map(str, clients_list):
                # One ratio per round (both systems measured in that round), then the median.
                vals = [r[ours]["runs"][c]["throughput"] / r[peer]["runs"][c]["throughput"]
                        for r in per_round
                        if c in r.get(ours, {}).get("runs", {}) and c in r.get(peer, {}).get("runs", {})
                        and r[peer]["runs"][c]["throughput"]]
                if vals:
                    ratios.setdefault(f"{ours}/{peer}", {})[c] = statistics.median(vals)
                    ratio_rounds.setdefault(f"{ours}/{peer}", {})[c] = vals
    report["throughput_ratios"] = ratios
    if a.rounds > 1:
        report["throughput_ratios_per_round"] = ratio_rounds
    if a.rounds > 1:
        print(f"median throughput over {a.rounds} rounds:")
        for name in systems:
            runs = [r[name]["runs"] for r in per_round if "runs" in r.get(name, {})]
            if runs:
                print(f"  {name:17s} " + ", ".join(
                    f"{c} clients {statistics.median(x[str(c)]['throughput'] for x in runs):,.0f}/s"
                    for c in clients_list))
    print("throughput ratios" + (f" (median of {a.rounds} rounds)" if a.rounds > 1 else "") + ":")
    for name, by_clients in ratios.items():
        print(f"  {name}: " + ", ".join(f"{c} clients {v:.2f}" for c, v in by_clients.items()))
        if a.rounds > 1:
            print("    per round: " + "; ".join(f"{c} clients " + ", ".join(f"{v:.2f}" for v in vals)
                                             for c, vals in ratio_rounds[name].items()))
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"raft-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    from plot import svg  # bench/raft/plot.py

    path.with_suffix(".svg").write_text(svg(report))
    print(f"wrote {path.with_suffix('.svg')} (throughput by system and client count, p50 on each bar)")


if __name__ == "__main__":
    main()
