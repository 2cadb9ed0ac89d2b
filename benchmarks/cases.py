"""The benchmark cases: each implementation of each case, and the worker that times one of them.

``run.py`` drives these. Every measurement runs in a fresh worker process
(``python benchmarks/cases.py --worker CASE IMPL PARAMS OUT``) so that no
implementation inherits another's heap, threads or page cache of freed memory,
and so that peak RSS growth means something. The worker warms the
implementation up once on a tiny size (imports, lazy initialisation), then
times one call and writes a JSON record to OUT.

An implementation returns a *check* value (bytes moved, lines seen, runs done)
that the worker compares with the expected one: a wrong answer is an error,
never a fast time.
"""

from __future__ import annotations

import gc
import io
import json
import os
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

MiB = 1 << 20
KiB = 1 << 10

#: The line every byte-moving case feeds: 64 bytes of text ending in a newline, so that the peers
#: that decode or split output (sh, plumbum) see ordinary text rather than one endless line.
LINE = b"0123456789abcdef0123456789ABCDEF0123456789abcdef0123456789ABCDE\n"
assert len(LINE) == 64


def pattern(n: int) -> bytes:
    """``n`` bytes (a multiple of 64) of LINE repeated."""
    return LINE * (n // len(LINE))


Params = dict[str, Any]
ImplFn = Callable[[Params], Any]


@dataclass(frozen=True)
class Target:
    """A goal for one implementation: a speed ratio, a wall-time ratio, a CPU share or an RSS bound."""

    impl: str
    kind: str  # "speed" (t_vs / t_impl >= value), "wall" (t_impl / t_vs <= value), "cpu" (cpu / wall <= value),
    #            "rss" (peak RSS growth < value bytes)
    value: float
    vs: str | None = None

    def describe(self, labels: dict[str, str]) -> str:
        if self.kind == "speed":
            return f">= {self.value:g}x {labels.get(self.vs or '', self.vs)}"
        if self.kind == "wall":
            return f"wall <= {self.value:g}x {labels.get(self.vs or '', self.vs)}"
        if self.kind == "cpu":
            return f"parent CPU <= {self.value:.0%} of wall"
        if self.kind == "rss":
            return f"RSS growth < {self.value / MiB:g} MiB"
        raise ValueError(self.kind)


@dataclass(frozen=True)
class Impl:
    name: str
    label: str
    fn: ImplFn
    needs: str | None = None  # the peer module it imports; the impl is skipped when that is missing


@dataclass
class Case:
    name: str
    number: str
    title: str
    reference: str
    impls: list[Impl]
    targets: list[Target]
    full: Params
    quick: Params
    #: A tiny size for the warm-up call, made from the measured params.
    warm: Callable[[Params], Params]
    #: What a correct implementation returns for these params.
    expect: Callable[[Params], Any]
    #: Bytes moved per run (throughput column), or None.
    volume: Callable[[Params], int | None] = lambda p: None
    #: Also sample the process's thread count while timing.
    sample_threads: bool = False
    #: Prepare files in the parent once per run: returns extra params.
    setup: Callable[[Params, str], Params] | None = None
    note: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.labels = {i.name: i.label for i in self.impls}


# ------------------------------------------------------------------------------------------------
# 1. head -c N /dev/zero | cat | cat


def _head(p: Params) -> list[str]:
    return ["head", "-c", str(p["size"]), "/dev/zero"]


def pipeline_procflow(p: Params) -> int:
    from procflow import Proc

    (Proc(*_head(p)) | Proc("cat") | Proc("cat")).stdout_null().run()
    return p["size"]


def pipeline_bash(p: Params) -> int:
    subprocess.run(["bash", "-c", f"head -c {p['size']} /dev/zero | cat | cat >/dev/null"], check=True)
    return p["size"]


def pipeline_popen(p: Params) -> int:
    p1 = subprocess.Popen(_head(p), stdout=subprocess.PIPE)
    p2 = subprocess.Popen(["cat"], stdin=p1.stdout, stdout=subprocess.PIPE)
    assert p1.stdout is not None and p2.stdout is not None
    p1.stdout.close()
    p3 = subprocess.Popen(["cat"], stdin=p2.stdout, stdout=subprocess.DEVNULL)
    p2.stdout.close()
    codes = [p3.wait(), p2.wait(), p1.wait()]
    if any(codes):
        raise RuntimeError(f"pipeline failed: {codes}")
    return p["size"]


def pipeline_sh(p: Params) -> int:
    import sh

    head = sh.Command("head")
    # sh 2: _in= a command started with _piped=True hands its stdout fd to the next one directly.
    sh.cat(_in=sh.cat(_in=head("-c", p["size"], "/dev/zero", _piped=True), _piped=True), _out="/dev/null")
    return p["size"]


def pipeline_plumbum(p: Params) -> int:
    from plumbum import local

    chain = local["head"]["-c", str(p["size"]), "/dev/zero"] | local["cat"] | local["cat"]
    (chain > "/dev/null")()
    return p["size"]


def pipeline_sarge(p: Params) -> int:
    import sarge

    r = sarge.run(f"head -c {p['size']} /dev/zero | cat | cat > /dev/null")
    if any(r.returncodes):
        raise RuntimeError(f"pipeline failed: {r.returncodes}")
    return p["size"]


def pipeline_duct(p: Params) -> int:
    from duct import cmd

    cmd(*_head(p)).pipe(cmd("cat")).pipe(cmd("cat")).stdout_null().run()
    return p["size"]


def pipeline_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> None:
        await (sh(*_head(p)) | sh("cat") | sh("cat")).stdout(subprocess.DEVNULL)

    asyncio.run(main())
    return p["size"]


# ------------------------------------------------------------------------------------------------
# 2/3. bytes (or a generator of chunks) from Python -> cat -> captured


def _data(p: Params) -> bytes:
    data = p.get("_data")
    if data is None or len(data) != p["size"]:
        data = p["_data"] = pattern(p["size"])
    return data


def _gen(p: Params) -> Iterator[bytes]:
    chunk = pattern(64 * KiB)
    for _ in range(p["size"] // len(chunk)):
        yield chunk


def _hand_feed_drain(source: Iterator[bytes] | bytes, write_chunk: int = 64 * KiB) -> bytes:
    """The hand-written reference: one thread writes, one reads 64 KiB at a time into chunks joined once."""
    proc = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
    assert proc.stdin is not None and proc.stdout is not None
    wfd, rfd = proc.stdin.fileno(), proc.stdout.fileno()
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            chunks = [source] if isinstance(source, bytes) else source
            for chunk in chunks:
                mv = memoryview(chunk)
                while mv:
                    n = os.write(wfd, mv[:write_chunk])
                    mv = mv[n:]
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
        finally:
            proc.stdin.close()  # type: ignore[union-attr]

    out: list[bytes] = []

    def drain() -> None:
        try:
            while data := os.read(rfd, 64 * KiB):
                out.append(data)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)

    threads = [threading.Thread(target=feed), threading.Thread(target=drain)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    proc.stdout.close()
    if proc.wait() or errors:
        raise RuntimeError(f"cat failed: {proc.returncode} {errors}")
    return b"".join(out)


def feed_procflow(p: Params) -> int:
    from procflow import Proc

    return len(Proc("cat").input(_data(p)).stdout_capture().run().stdout)


def feed_hand(p: Params) -> int:
    return len(_hand_feed_drain(_data(p)))


def feed_subprocess(p: Params) -> int:
    return len(subprocess.run(["cat"], input=_data(p), stdout=subprocess.PIPE, check=True).stdout)


def feed_sh(p: Params) -> int:
    import sh

    return len(sh.cat(_in=_data(p), _return_cmd=True).stdout)


def feed_plumbum(p: Params) -> int:
    from plumbum import local

    return len((local["cat"] << _data(p))())


def feed_sarge(p: Params) -> int:
    import sarge

    return len(sarge.capture_stdout("cat", input=_data(p)).stdout.bytes)


def feed_duct(p: Params) -> int:
    from duct import cmd

    return len(cmd("cat").stdin_bytes(_data(p)).stdout_capture().run().stdout)


def feed_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> int:
        r = await sh("cat").stdin(_data(p)).result
        return len(r.output_bytes)

    return asyncio.run(main())


def gen_procflow(p: Params) -> int:
    from procflow import Proc

    return len(Proc("cat").input(_gen(p)).stdout_capture().run().stdout)


def gen_hand(p: Params) -> int:
    return len(_hand_feed_drain(_gen(p)))


def gen_sh(p: Params) -> int:
    import sh

    return len(sh.cat(_in=_gen(p), _return_cmd=True).stdout)


# ------------------------------------------------------------------------------------------------
# 4. sequential spawns


def true_procflow(p: Params) -> int:
    from procflow import Proc

    cmd = Proc("/bin/true")
    for _ in range(p["runs"]):
        cmd.run()
    return p["runs"]


def true_subprocess(p: Params) -> int:
    for _ in range(p["runs"]):
        subprocess.run(["/bin/true"], check=True)
    return p["runs"]


def true_sh(p: Params) -> int:
    import sh

    cmd = sh.Command("/bin/true")
    for _ in range(p["runs"]):
        cmd()
    return p["runs"]


def true_plumbum(p: Params) -> int:
    from plumbum import local

    cmd = local["/bin/true"]
    for _ in range(p["runs"]):
        cmd()
    return p["runs"]


def true_sarge(p: Params) -> int:
    import sarge

    for _ in range(p["runs"]):
        sarge.run("/bin/true")
    return p["runs"]


def true_duct(p: Params) -> int:
    from duct import cmd

    c = cmd("/bin/true")
    for _ in range(p["runs"]):
        c.run()
    return p["runs"]


def true_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> None:
        c = sh("/bin/true")
        for _ in range(p["runs"]):
            await c

    asyncio.run(main())
    return p["runs"]


def _count_hi(outputs: int, out: bytes | str) -> int:
    if out.strip() not in ("hi", b"hi"):
        raise RuntimeError(f"echo hi gave {out!r}")
    return outputs + 1


def echo_procflow(p: Params) -> int:
    from procflow import Proc

    cmd = Proc("echo", "hi").stdout_capture()
    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, cmd.run().stdout)
    return n


def echo_subprocess(p: Params) -> int:
    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, subprocess.run(["echo", "hi"], stdout=subprocess.PIPE, check=True).stdout)
    return n


def echo_sh(p: Params) -> int:
    import sh

    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, sh.echo("hi"))
    return n


def echo_plumbum(p: Params) -> int:
    from plumbum import local

    cmd = local["echo"]["hi"]
    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, cmd())
    return n


def echo_sarge(p: Params) -> int:
    import sarge

    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, sarge.capture_stdout("echo hi").stdout.bytes)
    return n


def echo_duct(p: Params) -> int:
    from duct import cmd

    c = cmd("echo", "hi")
    n = 0
    for _ in range(p["runs"]):
        n = _count_hi(n, c.read())
    return n


def echo_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> int:
        c = sh("echo", "hi")
        n = 0
        for _ in range(p["runs"]):
            n = _count_hi(n, await c)
        return n

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# 5. lines of a file from cat


def lines_setup(p: Params, tmpdir: str) -> Params:
    path = os.path.join(tmpdir, f"lines-{p['size']}.txt")
    if not os.path.exists(path):
        line_bytes = lines_file_line_count(p["size"])
        with open(path, "wb") as f:
            f.write(pattern(p["size"]))
        assert os.path.getsize(path) == line_bytes * len(LINE)
    return {"path": path}


def lines_file_line_count(size: int) -> int:
    return size // len(LINE)


def _tally(lines: Any) -> tuple[int, int]:
    n = chars = 0
    for line in lines:
        n += 1
        chars += len(line)
    return n, chars


def lines_procflow(p: Params) -> int:
    from procflow import Proc

    with Proc("cat", p["path"]).lines() as it:
        n, _ = _tally(it)
    return n


def lines_popen(p: Params) -> int:
    proc = subprocess.Popen(["cat", p["path"]], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    with proc:
        n, _ = _tally(proc.stdout)
    if proc.returncode:
        raise RuntimeError(f"cat failed: {proc.returncode}")
    return n


def lines_sh(p: Params) -> int:
    import sh

    n, _ = _tally(sh.cat(p["path"], _iter=True))
    return n


def lines_plumbum(p: Params) -> int:
    from plumbum import local

    n = 0
    for out, _err in local["cat"][p["path"]].popen().iter_lines():
        if out is not None:
            n += 1
    return n


def lines_sarge(p: Params) -> int:
    import sarge

    # Capture's readline() gives up after its timeout (default 0.02 s) and returns b"", which ends the
    # iteration early whenever its reader thread falls behind on a busy machine: give it time.
    r = sarge.run(["cat", p["path"]], stdout=sarge.Capture(timeout=60), async_=True)
    r.wait_events()  # async_ starts the commands in a thread: wait until they run
    n, _ = _tally(r.stdout)
    r.close()
    if any(r.returncodes):
        raise RuntimeError(f"cat failed: {r.returncodes}")
    return n


def lines_duct(p: Params) -> int:
    from duct import cmd

    with cmd("cat", p["path"]).reader() as r:
        # ReaderHandle is an io.IOBase that says it is not readable(), and iterating it directly reads
        # one byte per call (IOBase.readline): wrap it, as a user who wants text lines would.
        r.readable = lambda: True  # type: ignore[method-assign]
        n, _ = _tally(io.TextIOWrapper(r, encoding="utf-8"))  # type: ignore[type-var]
    return n


def lines_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> int:
        n = 0
        async for _line in sh("cat", p["path"]):
            n += 1
        return n

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# 6. many concurrent captured sleeps


def conc_procflow_start(p: Params) -> int:
    from procflow import Proc

    cmd = Proc("sleep", p["sleep"]).stdout_capture()
    running = [cmd.start() for _ in range(p["count"])]
    return sum(r.wait().ok for r in running)


def conc_procflow_run_all(p: Params) -> int:
    from procflow import Proc, run_all

    cmd = Proc("sleep", p["sleep"]).stdout_capture()
    return sum(r.ok for r in run_all([cmd] * p["count"], jobs=p["count"]))


def conc_popen(p: Params) -> int:
    procs = [subprocess.Popen(["sleep", p["sleep"]], stdout=subprocess.PIPE) for _ in range(p["count"])]
    n = 0
    for proc in procs:
        proc.communicate()
        n += proc.returncode == 0
    return n


def conc_sh(p: Params) -> int:
    import sh

    running = [sh.sleep(p["sleep"], _bg=True, _return_cmd=True) for _ in range(p["count"])]
    n = 0
    for r in running:
        r.wait()
        n += r.exit_code == 0
    return n


def conc_plumbum(p: Params) -> int:
    from plumbum import local

    cmd = local["sleep"][p["sleep"]]
    procs = [cmd.popen() for _ in range(p["count"])]
    n = 0
    for proc in procs:
        proc.communicate()
        n += proc.returncode == 0
    return n


def conc_sarge(p: Params) -> int:
    import sarge

    pipes = [sarge.run(f"sleep {p['sleep']}", stdout=sarge.Capture(), async_=True) for _ in range(p["count"])]
    n = 0
    for pl in pipes:
        pl.close()
        n += pl.returncode == 0
    return n


def conc_duct(p: Params) -> int:
    from duct import cmd

    c = cmd("sleep", p["sleep"]).stdout_capture()
    handles = [c.start() for _ in range(p["count"])]
    return sum(h.wait().status == 0 for h in handles)


def conc_shellous(p: Params) -> int:
    import asyncio

    from shellous import sh

    async def main() -> int:
        c = sh("sleep", p["sleep"]).result
        results = await asyncio.gather(*(c.coro() for _ in range(p["count"])))
        return sum(r.exit_code == 0 for r in results)

    return asyncio.run(main())


# ------------------------------------------------------------------------------------------------
# The cases


def _peers(prefix: str, names: tuple[str, ...] = ("sh", "plumbum", "sarge", "duct", "shellous")) -> list[Impl]:
    mod = sys.modules[__name__]
    return [Impl(n, n, getattr(mod, f"{prefix}_{n}"), needs=n) for n in names]


CASES: list[Case] = [
    Case(
        name="pipeline",
        number="1",
        title="3-stage pipeline `head -c N /dev/zero | cat | cat` (output to /dev/null)",
        reference="bash",
        impls=[
            Impl("procflow", "procflow", pipeline_procflow),
            Impl("bash", "bash -c", pipeline_bash),
            Impl("popen", "Popen, hand-wired", pipeline_popen),
            *_peers("pipeline"),
        ],
        targets=[Target("procflow", "speed", 0.9, "bash"), Target("procflow", "cpu", 0.05)],
        full={"size": 512 * MiB},
        quick={"size": 4 * MiB},
        warm=lambda p: {**p, "size": 64 * KiB},
        expect=lambda p: p["size"],
        volume=lambda p: p["size"],
        note="The kernel moves the bytes child to child; the parent should only spawn and wait.",
    ),
    Case(
        name="feed-bytes",
        number="2",
        title="bytes from Python -> `cat` -> captured",
        reference="hand",
        impls=[
            Impl("procflow", "procflow .input(bytes)", feed_procflow),
            Impl("hand", "hand-written 2 threads", feed_hand),
            Impl("subprocess", "subprocess.run(input=)", feed_subprocess),
            *_peers("feed"),
        ],
        targets=[Target("procflow", "speed", 0.9, "hand"), Target("procflow", "speed", 3.0, "subprocess")],
        full={"size": 128 * MiB},
        quick={"size": 2 * MiB},
        warm=lambda p: {**p, "size": 64 * KiB},
        expect=lambda p: p["size"],
        volume=lambda p: p["size"],
        note="hand-written: a feeder thread os.write()s 64 KiB slices, a drainer thread os.read()s 64 KiB "
        "into a list joined once.",
    ),
    Case(
        name="feed-gen",
        number="3",
        title="a generator of 64 KiB chunks -> `cat` -> captured",
        reference="hand",
        impls=[
            Impl("procflow", "procflow .input(gen)", gen_procflow),
            Impl("hand", "hand-written 2 threads", gen_hand),
            Impl("sh", "sh (_in=gen)", gen_sh, needs="sh"),
        ],
        targets=[Target("procflow", "speed", 0.9, "hand")],
        full={"size": 128 * MiB},
        quick={"size": 2 * MiB},
        warm=lambda p: {**p, "size": 64 * KiB},
        expect=lambda p: p["size"],
        volume=lambda p: p["size"],
        note="Only sh among the peers accepts an iterator as input.",
    ),
    Case(
        name="spawn-true",
        number="4a",
        title="sequential spawn of `/bin/true`",
        reference="subprocess",
        impls=[
            Impl("procflow", "procflow .run()", true_procflow),
            Impl("subprocess", "subprocess.run", true_subprocess),
            *_peers("true"),
        ],
        targets=[Target("procflow", "speed", 0.9, "subprocess")],
        full={"runs": 500},
        quick={"runs": 10},
        warm=lambda p: {**p, "runs": 3},
        expect=lambda p: p["runs"],
    ),
    Case(
        name="spawn-echo",
        number="4b",
        title="sequential spawn of `echo hi`, stdout captured",
        reference="subprocess",
        impls=[
            Impl("procflow", "procflow .stdout_capture().run()", echo_procflow),
            Impl("subprocess", "subprocess.run(stdout=PIPE)", echo_subprocess),
            *_peers("echo"),
        ],
        targets=[Target("procflow", "speed", 0.9, "subprocess")],
        full={"runs": 500},
        quick={"runs": 10},
        warm=lambda p: {**p, "runs": 3},
        expect=lambda p: p["runs"],
    ),
    Case(
        name="lines",
        number="5",
        title="lines of a file from `cat` (64-byte lines)",
        reference="popen",
        impls=[
            Impl("procflow", "procflow .lines()", lines_procflow),
            Impl("popen", "for line in Popen.stdout (text)", lines_popen),
            *_peers("lines"),
        ],
        targets=[Target("procflow", "speed", 0.9, "popen"), Target("procflow", "rss", 16 * MiB)],
        full={"size": 64 * MiB},
        quick={"size": 1 * MiB},
        warm=lambda p: {**p, "path": p["warm_path"]},
        expect=lambda p: lines_file_line_count(p["size"]),
        volume=lambda p: p["size"],
        setup=lambda p, tmp: {**lines_setup(p, tmp), "warm_path": lines_setup({"size": 64 * KiB}, tmp)["path"]},
        note="RSS growth: the worker's peak RSS during the call minus its RSS before it (fresh process each).",
    ),
    Case(
        name="concurrent",
        number="6",
        title="concurrent captured `sleep` (started all, then waited all)",
        reference="popen",
        impls=[
            Impl("procflow", "procflow start() all, wait() all", conc_procflow_start),
            Impl("procflow-run_all", "procflow run_all(jobs=N)", conc_procflow_run_all),
            Impl("popen", "Popen all, then communicate()", conc_popen),
            *_peers("conc"),
        ],
        targets=[
            Target("procflow", "wall", 1.15, "popen"),
            Target("procflow-run_all", "wall", 1.15, "popen"),
        ],
        full={"count": 200, "sleep": "0.2"},
        quick={"count": 10, "sleep": "0.05"},
        warm=lambda p: {**p, "count": 2, "sleep": "0"},
        expect=lambda p: p["count"],
        sample_threads=True,
        note="threads: the peak number of threads in the process while it ran (sampled every 2 ms).",
    ),
]

BY_NAME = {c.name: c for c in CASES}


# ------------------------------------------------------------------------------------------------
# The worker


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _status_field(name: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return int(line.split()[1])
    raise KeyError(name)


def _reset_peak_rss() -> bool:
    """Reset the kernel's RSS high-water mark (``echo 5 > /proc/self/clear_refs``), where allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class ThreadSampler:
    """Samples the process's OS thread count every ``interval`` seconds (not counting itself)."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-thread-sampler", daemon=True)

    def _run(self) -> None:
        while True:
            self.peak = max(self.peak, _status_field("Threads") - 1)
            if self._stop.wait(self.interval):
                return

    def __enter__(self) -> ThreadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def measure(case: Case, impl: Impl, params: Params) -> dict[str, Any]:
    """Warm ``impl`` up, then time one call; returns the record run.py collects."""
    impl.fn(case.warm(dict(params)))
    expected = case.expect(params)
    params = dict(params)
    if case.name == "feed-bytes":
        _data(params)  # build the input before the clock starts
    gc.collect()
    threads_before = _status_field("Threads")
    peak_reset = _reset_peak_rss()
    rss0 = _rss()
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    sampler = ThreadSampler() if case.sample_threads else None
    if sampler:
        sampler.__enter__()
    t0 = time.perf_counter()
    try:
        got = impl.fn(params)
    finally:
        t1 = time.perf_counter()
        if sampler:
            sampler.__exit__()
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    peak = _status_field("VmHWM") * KiB if peak_reset else ru1.ru_maxrss * KiB
    if got != expected:
        raise RuntimeError(f"{case.name}/{impl.name}: expected {expected!r}, got {got!r}")
    return {
        "seconds": t1 - t0,
        "cpu": (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime),
        "rss_growth": max(0, peak - rss0),
        "threads_before": threads_before,
        "threads_peak": sampler.peak if sampler else None,
    }


def worker_main(argv: list[str]) -> int:
    case_name, impl_name, params_json, out_path = argv
    case = BY_NAME[case_name]
    impl = next(i for i in case.impls if i.name == impl_name)
    try:
        record = measure(case, impl, json.loads(params_json))
    except BaseException as e:  # noqa: BLE001 - reported to run.py, which shows it in the table
        record = {"error": f"{type(e).__name__}: {e}"[:500]}
    with open(out_path, "w") as f:
        json.dump(record, f)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--worker":
        sys.exit(worker_main(sys.argv[2:]))
    sys.exit("usage: cases.py --worker CASE IMPL PARAMS_JSON OUT  (run benchmarks/run.py instead)")
