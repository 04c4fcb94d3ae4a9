#!/usr/bin/env python3
"""The chaos and soak run: the real `rocm-llm serve` and real llama-server
children with tiny models, under spec edits, SIGHUP storms, child faults and
client load, with invariants checked all through. Standard library only.
scripts/soak.sh wraps it (finds the binaries); docs/hardening.md describes
what it does and what counts as a violation.

It exits 0 when no invariant was violated, 1 otherwise, 2 on bad usage and
3 when it could not set up (a binary is missing, the daemon did not start).
All traffic is on 127.0.0.1; it stops by itself after MINUTES.

The models (each child carries SOAK_RUN, SOAK_MODEL and SOAK_GEN in its
environment, so the run tells its processes apart from anyone else's):
  a  stop_first, drain_timeout 1s (long streams can be cut), alias aa
  b  stop_first, alias bee
  c  blue_green
Every valid edit gives each model it changes a fresh SOAK_GEN, so a launch
of a model is one (SOAK_MODEL, SOAK_GEN) pair and never comes back.

Invariants:
  single-instance  a stop_first model never has two live processes; no
                   launch of any model ever has two (a blue_green swap
                   runs the old and the new launch side by side; that is
                   allowed). Live = not a zombie. Sampled every 100 ms.
  uncaused-restart a launch is started again only after the run killed or
                   stopped one of its model's processes.
  lost             no request is lost. Every request ends as one of:
                     ok           200 with the whole body (a stream that ends
                                  with `data: [DONE]`);
                     disconnected the client hung up mid-stream on purpose
                                  after the first event;
                     unavailable  503 with a Retry-After header (the model
                                  is restarting, its queue is full, ...);
                     faulted      any other ending (an error status, a
                                  broken stream, a reset) of a request whose
                                  model had a child SIGKILLed, or SIGSTOPped
                                  and then replaced by the daemon, between 2 s
                                  before the request began and its end;
                     cut          such an ending with no fault to explain it,
                                  up to the model's `cut` count in /status
                                  (requests cut when drain_timeout ran out);
                     lost         the rest, and every request with no answer
                                  in --request-timeout (default 60 s).
  resources        after the warm-up, the daemon's RSS and open fds, each
                   sampled at a quiet moment (no load, every model ready), do
                   not grow by the end: fds by at most --fd-slack (8), RSS by
                   at most max(16 MiB, 25 %).
  converges        after the chaos, a last valid save is applied and every
                   model is ready with the launch the spec asks for (within
                   --settle-timeout, a guard against hangs, default 120 s).
  clean-exit       SIGTERM stops the daemon with exit 0 and no process with
                   the run's SOAK_RUN is left (no orphans).
"""

import argparse
import collections
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback

MODELS = ["a", "b", "c"]
STOP_FIRST = {"a", "b"}
NAMES = {"a": "a", "aa": "a", "b": "b", "bee": "b", "c": "c"}  # request id -> model
FAULT_WINDOW_BEFORE = 2.0  # s: a fault this long before a request may still explain it


def now():
    return time.monotonic()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Violations:
    def __init__(self, t0):
        self.t0 = t0
        self.items = []
        self.lock = threading.Lock()

    def add(self, kind, message):
        with self.lock:
            self.items.append((now() - self.t0, kind, message))
        print(f"soak: VIOLATION {kind}: {message}", file=sys.stderr, flush=True)

    def count(self):
        with self.lock:
            return collections.Counter(k for _, k, _ in self.items)


# ---- the spec ------------------------------------------------------------------


class Spec:
    """The spec the run writes: a valid one from the current model settings,
    or one of several invalid ones."""

    def __init__(self, rng, run_id, listen, control, llama_server, models_dir):
        self.rng = rng
        self.run_id = run_id
        self.listen = listen
        self.control = control
        self.llama_server = llama_server
        self.models_dir = models_dir
        self.gen = 0
        self.settings = {m: self.fresh(m) for m in MODELS}
        self.edits = 0  # valid renders, for noise

    def fresh(self, model):
        self.gen += 1
        return {
            "gen": self.gen,
            "ctx": self.rng.choice([512, 768, 1024]),
            "parallel": self.rng.choice([1, 2, 3]),
        }

    def change(self, models):
        """New launches for `models`."""
        for m in models:
            self.settings[m] = self.fresh(m)

    def gens(self):
        return {m: s["gen"] for m, s in self.settings.items()}

    def valid(self):
        """The current settings, with random noise that changes no launch
        (comments, key order, quoting, daemon-only options)."""
        self.edits += 1
        r = self.rng
        lines = ["# soak spec, save %d" % self.edits]
        if r.random() < 0.5:
            lines.append("# " + "x" * r.randint(0, 80))
        top = [
            f"listen: {self.listen}",
            f'control: "{self.control}"',
            f"llama_server: {self.llama_server}",
        ]
        r.shuffle(top)
        lines += top
        lines += [
            "defaults:",
            "  threads: 1",
            f"  stop_grace: {r.choice(['3s', '3000ms'])}",
            f"  wait_timeout: {r.choice(['30s', '31s'])}",
            "  env:",
            f"    SOAK_RUN: {self.run_id}",
            "models:",
        ]
        for m in MODELS:
            s = self.settings[m]
            body = [
                f"model: {self.models_dir}/{m}.gguf",
                f"ctx_size: {s['ctx']}",
                f"parallel: {s['parallel']}",
                f"env: {{SOAK_MODEL: {m}, SOAK_GEN: \"{s['gen']}\"}}",
            ]
            if m == "a":
                # A flow sequence: a save cut inside it never parses.
                body += [f"aliases: [aa, {r.choice(['a1', 'a2'])}]", "drain_timeout: 1s"]
            elif m == "b":
                body += ["aliases:\n  - bee", f"queue_length: {r.choice([64, 65])}"]
            else:
                body += ["swap: blue_green", "drain_timeout: 5s"]
            r.shuffle(body)
            lines.append(f"  {m}:")
            for b in body:
                lines += ["    " + x for x in b.split("\n")]
        return ("\n".join(lines) + "\n").encode()

    def cut_point(self, text):
        """An offset inside model a's flow sequence of aliases: any prefix
        that ends there is a syntax error."""
        i = text.index(b"aliases: [aa")
        return i + len(b"aliases: [a")

    def invalid(self):
        """(kind, bytes) of a save the daemon must reject."""
        r = self.rng
        good = self.valid()
        kind = r.choice(["syntax", "unknown-key", "bad-value", "missing-model", "non-utf8", "empty", "cut", "dup-alias"])
        if kind == "syntax":
            text = good.replace(b"aliases: [aa,", b"aliases: [aa,, {", 1)
        elif kind == "unknown-key":
            text = good.replace(b"ctx_size:", b"ctx_sise:", 1)
        elif kind == "bad-value":
            text = good.replace(b"parallel: ", b"parallel: -", 1)
        elif kind == "missing-model":
            text = good.replace(b"/b.gguf", b"/missing.gguf", 1)
        elif kind == "non-utf8":
            text = b"# \xff\xfe not UTF-8\n" + good
        elif kind == "empty":
            text = b""
        elif kind == "cut":
            text = good[: self.cut_point(good)]
        else:
            text = good.replace(b"- bee", b"- aa", 1)
        assert text != good
        return kind, text


def write_spec(path, text, style, rng, cut_at):
    """Saves `text` to `path` the way an editor would; `cut_at` is where a
    partial write pauses."""
    d = os.path.dirname(path)
    if style == "rename":  # write a temp file, rename it over (vim, VS Code, atomic saves)
        tmp = os.path.join(d, ".spec.yaml.swp")
        with open(tmp, "wb") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    elif style == "truncate":  # truncate and rewrite in place (nano, vim backupcopy=yes)
        with open(path, "wb") as f:
            f.write(text)
    elif style == "recreate":  # delete, then create anew (some tools); or rename away first (emacs)
        if rng.random() < 0.5:
            os.unlink(path)
        else:
            os.replace(path, path + "~")
        time.sleep(rng.uniform(0, 0.3))
        with open(path, "wb") as f:
            f.write(text)
    elif style == "partial":  # in place, in two writes with a pause between
        # The cut is inside a flow sequence, so the first part never parses:
        # a pause longer than the debounce makes the daemon read it, reject
        # it, then apply the whole. (A cut anywhere could leave a valid spec
        # with fewer models, which the daemon would rightly apply.)
        with open(path, "wb") as f:
            cut = cut_at if cut_at is not None else len(text)
            f.write(text[:cut])
            f.flush()
            time.sleep(rng.choice([rng.uniform(0, 0.05), rng.uniform(0.2, 0.6)]))
            f.write(text[cut:])
    else:
        raise ValueError(style)


# ---- processes ---------------------------------------------------------------------


def read(path, mode="r"):
    try:
        with open(path, mode) as f:
            return f.read()
    except OSError:
        return None


def proc_stat(pid):
    """(state, ppid, starttime) of a process, or None."""
    s = read(f"/proc/{pid}/stat")
    if not s:
        return None
    rest = s[s.rindex(")") + 2 :].split()
    return rest[0], int(rest[1]), int(rest[19])


def run_processes(run_id, any_comm=False):
    """The run's processes: {(pid, start): (model, gen, state)}."""
    token = f"SOAK_RUN={run_id}".encode()
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        if not any_comm and read(f"/proc/{pid}/comm") != "llama-server\n":
            continue
        env = read(f"/proc/{pid}/environ", "rb")
        if not env or token not in env.split(b"\0"):
            continue
        # The daemon's `llama-server --list-devices` probes run with a
        # model's env (it changes which GPUs are seen); they are not
        # instances.
        argv = (read(f"/proc/{pid}/cmdline", "rb") or b"").split(b"\0")
        if b"--list-devices" in argv:
            continue
        vars_ = dict(v.split(b"=", 1) for v in env.split(b"\0") if b"=" in v)
        st = proc_stat(pid)
        if not st:
            continue
        model = vars_.get(b"SOAK_MODEL", b"?").decode()
        gen = vars_.get(b"SOAK_GEN", b"?").decode()
        out[(int(pid), st[2])] = (model, gen, st[0])
    return out


def alive(key):
    st = proc_stat(key[0])
    return st is not None and st[2] == key[1] and st[0] not in "ZX"


def rss_and_fds(pid):
    status = read(f"/proc/{pid}/status") or ""
    rss = 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1]) * 1024
    try:
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        fds = -1
    return rss, fds


# ---- the run ------------------------------------------------------------------------


class Soak:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.t0 = now()
        self.v = Violations(self.t0)
        self.run_id = "soak%d_%d" % (os.getpid(), int(time.time()))
        self.lock = threading.Lock()
        self.stop_all = threading.Event()  # end of the run
        self.quiet = threading.Event()  # pause load and chaos
        self.load_idle = threading.Semaphore(0)
        self.faults = collections.defaultdict(list)  # model -> [(t, kind, explains)]
        self.caused = collections.defaultdict(float)  # model -> time of the last kill/stop
        self.launch_last = {}  # (model, gen) -> (key, first seen)
        self.seen = {}  # key -> (model, gen)
        self.outcomes = collections.Counter()
        self.per_model = collections.defaultdict(collections.Counter)
        self.unexplained = collections.defaultdict(list)  # model -> [description]
        self.timeouts = []
        self.counts = collections.Counter()
        self.max_live = collections.Counter()
        self.samples = []  # (t, rss, fds)
        self.stopped = {}  # key -> model, while SIGSTOPped
        self.daemon = None
        self.injected = None  # --inject duplicate's process
        self.reported = {}  # (kind, key) -> times seen

    # -- setup

    def setup(self):
        a = self.args
        self.dir = a.workdir or tempfile.mkdtemp(prefix="rocm-llm-soak.")
        os.makedirs(self.dir, exist_ok=True)
        models = os.path.join(self.dir, "models")
        os.makedirs(models, exist_ok=True)
        for i, m in enumerate(MODELS):
            subprocess.run(
                [a.rocm_llm, "demo-model", os.path.join(models, f"{m}.gguf"), "--seed", str(i + 1)],
                check=True,
                stdout=subprocess.DEVNULL,
            )
        self.listen = f"127.0.0.1:{free_port()}"
        self.control = f"127.0.0.1:{free_port()}"
        self.spec_path = os.path.join(self.dir, "spec", "spec.yaml")
        os.makedirs(os.path.dirname(self.spec_path), exist_ok=True)
        self.spec = Spec(self.rng, self.run_id, self.listen, self.control, a.llama_server, models)
        with open(self.spec_path, "wb") as f:
            f.write(self.spec.valid())
        self.log_path = os.path.join(self.dir, "daemon.log")
        self.log = open(self.log_path, "wb")
        self.daemon = subprocess.Popen(
            [a.rocm_llm, "serve", "--spec", self.spec_path, "--state-dir", os.path.join(self.dir, "state"), "--log", "info"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        print(f"soak: daemon pid {self.daemon.pid}, listen {self.listen}, control {self.control}, dir {self.dir}", flush=True)
        if not self.wait_converged(a.settle_timeout):
            self.tail_log()
            raise SystemExit(3)

    def status(self):
        host, port = self.control.split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        try:
            c.request("GET", "/status")
            r = c.getresponse()
            return json.loads(r.read())
        finally:
            c.close()

    def converged(self):
        """Whether every model runs the launch the current spec asks for."""
        try:
            st = self.status()
        except (OSError, ValueError, http.client.HTTPException):
            return False
        lr = st.get("last_reload") or {}
        if not lr.get("ok"):
            return False
        want = self.spec.gens()
        procs = run_processes(self.run_id)
        for m in MODELS:
            ms = st["models"].get(m)
            if not ms or ms["state"] != "ready" or ms["launch_id"] != ms["target_launch_id"]:
                return False
            if ms.get("in_flight", 0) or ms.get("waiting", 0):
                return False
            injected = self.injected.pid if self.injected else None
            live = [g for k, (mm, g, s) in procs.items() if mm == m and s not in "ZX" and k[0] != injected]
            if live != [str(want[m])]:
                return False
        return True

    def wait_converged(self, timeout):
        deadline = now() + timeout
        while now() < deadline:
            if self.daemon.poll() is not None:
                self.v.add("daemon-exit", f"the daemon exited with {self.daemon.returncode}")
                return False
            if self.converged():
                return True
            time.sleep(0.2)
        self.v.add("converges", f"the daemon did not converge on the spec within {timeout} s: {self.brief_status()}")
        return False

    def brief_status(self):
        try:
            st = self.status()
            return json.dumps(
                {
                    "last_reload_ok": (st.get("last_reload") or {}).get("ok"),
                    "models": {m: {k: v.get(k) for k in ("state", "pid", "last_error", "in_flight", "waiting")} for m, v in st["models"].items()},
                }
            )
        except Exception as e:  # noqa: BLE001 - diagnostics only
            return f"(no status: {e})"

    def tail_log(self, n=30):
        self.log.flush()
        lines = (read(self.log_path) or "").splitlines()[-n:]
        for line in lines:
            print("    daemon: " + line, file=sys.stderr)

    # -- watchers

    def watch_processes(self):
        """The single-instance and uncaused-restart invariants, every 100 ms."""
        while not self.stop_all.is_set():
            procs = run_processes(self.run_id)
            t = now()
            per_model = collections.Counter()
            per_launch = collections.Counter()
            for key, (m, g, s) in procs.items():
                if s in "ZX":
                    continue
                per_model[m] += 1
                per_launch[(m, g)] += 1
                with self.lock:
                    if key not in self.seen:
                        self.seen[key] = (m, g)
                        prev = self.launch_last.get((m, g))
                        if prev is not None and self.caused[m] < prev[1]:
                            self.uncaused_restart(m, g, prev[0][0], key[0])
                        self.launch_last[(m, g)] = (key, t)
            for m, n in per_model.items():
                self.max_live[m] = max(self.max_live[m], n)
                if m in STOP_FIRST and n > 1:
                    pids = tuple(sorted(k[0] for k, v in procs.items() if v[0] == m and v[2] not in "ZX"))
                    self.once("single-instance", pids, f"stop_first model {m} has {n} live processes: {list(pids)}")
            for (m, g), n in per_launch.items():
                if n > 1:
                    pids = tuple(sorted(k[0] for k, v in procs.items() if v[:2] == (m, g) and v[2] not in "ZX"))
                    self.once("single-instance", pids, f"model {m} launch {g} has {n} live processes: {list(pids)}")
            time.sleep(0.1)

    def once(self, kind, key, message):
        """A violation that a sampler sees again and again is reported once
        per set of processes (and counted in `repeats`)."""
        with self.lock:
            seen = self.reported.setdefault((kind, key), 0)
            self.reported[(kind, key)] = seen + 1
        if not seen:
            self.v.add(kind, message)

    def uncaused_restart(self, m, g, old, new):
        """A launch started again with no fault of ours. A failed start the
        daemon retried (e.g. another program took the port it picked) is the
        daemon doing its job; anything else is a violation."""
        try:
            err = (self.status()["models"].get(m) or {}).get("last_error") or ""
        except Exception:  # noqa: BLE001
            err = ""
        what = f"model {m} launch {g} restarted (pid {old} -> {new}) with no kill or stop since it started: last_error {err[:300]!r}"
        if any(w in err.lower() for w in ("bind", "address already in use", "port")):
            self.counts["restarts.start-failure"] += 1
            print(f"soak: note: {what}", flush=True)
        else:
            self.v.add("uncaused-restart", what)

    def sample_resources(self):
        while not self.stop_all.is_set():
            rss, fds = rss_and_fds(self.daemon.pid)
            with self.lock:
                self.samples.append((now() - self.t0, rss, fds))
            self.stop_all.wait(5)

    # -- load

    def client(self, idx):
        rng = random.Random(self.args.seed * 1000 + idx)
        while not self.stop_all.is_set():
            if self.quiet.is_set():
                self.load_idle.release()
                while self.quiet.is_set() and not self.stop_all.is_set():
                    time.sleep(0.05)
                continue
            name = rng.choice(list(NAMES))
            if "lost" in self.args.inject and idx == 0 and rng.random() < 0.2:
                name = "no-such-model"  # 404: nothing explains it, so it is lost
            mode = rng.choices(["plain", "stream", "disconnect", "long"], [40, 30, 20, 10])[0]
            self.one_request(rng, name, mode)
            time.sleep(rng.uniform(0, 0.2))

    def one_request(self, rng, name, mode):
        model = NAMES.get(name, name)
        stream = mode != "plain"
        max_tokens = {"plain": rng.randint(1, 24), "stream": rng.randint(8, 48), "disconnect": 64, "long": 400}[mode]
        body = json.dumps(
            {
                "model": name,
                "messages": [{"role": "user", "content": "hello " * rng.randint(1, 8)}],
                "max_tokens": max_tokens,
                "stream": stream,
            }
        )
        host, port = self.listen.split(":")
        start = now()
        outcome, detail = "lost", ""
        conn = http.client.HTTPConnection(host, int(port), timeout=self.args.request_timeout)
        try:
            conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
            r = conn.getresponse()
            if r.status == 200 and not stream:
                data = json.loads(r.read())
                outcome = "ok" if data.get("choices") else "broken"
                detail = "200 without choices"
            elif r.status == 200:
                outcome, detail = "broken", "stream ended without [DONE]"
                events = 0
                while True:
                    line = r.readline()
                    if not line:
                        break
                    if line.startswith(b"data: "):
                        events += 1
                        if line.strip() == b"data: [DONE]":
                            outcome = "ok"
                            break
                        if mode == "disconnect" and events == 1:
                            outcome = "disconnected"
                            break
            elif r.status == 503 and r.getheader("Retry-After"):
                r.read()
                outcome = "unavailable"
            else:
                outcome, detail = "broken", f"HTTP {r.status}: {r.read()[:200]!r}"
        except socket.timeout:
            outcome, detail = "timeout", f"no answer in {self.args.request_timeout} s"
        except (OSError, http.client.HTTPException, ValueError) as e:
            outcome, detail = "broken", f"{type(e).__name__}: {e}"
        finally:
            conn.close()
        end = now()
        with self.lock:
            if outcome == "broken":
                explained = any(start - FAULT_WINDOW_BEFORE <= t <= end and explains for t, _, explains in self.faults[model])
                # A stop's verdict is known at its SIGCONT: note it and decide at the end.
                pending = any(start - FAULT_WINDOW_BEFORE <= t <= end and explains is None for t, _, explains in self.faults[model])
                if explained:
                    outcome = "faulted"
                else:
                    self.unexplained[model].append((start, end, mode, detail, pending))
                    outcome = "unexplained"
            if outcome == "timeout":
                self.timeouts.append(f"{name} {mode} at {start - self.t0:.1f}s")
            self.outcomes[outcome] += 1
            self.per_model[model][outcome] += 1

    # -- chaos

    def chaos(self, until):
        rng = self.rng
        actions = ["edit", "invalid", "hup", "kill", "stop", "none"]
        weights = [30, 12, 10, 16, 16, 16]
        force = set()  # models killed since their last launch change
        kills_in_row = collections.Counter()
        while now() < until and not self.stop_all.is_set():
            if self.daemon.poll() is not None:
                self.v.add("daemon-exit", f"the daemon exited with {self.daemon.returncode} mid-run")
                return
            action = rng.choices(actions, weights)[0]
            if action == "edit":
                changed = {m for m in MODELS if rng.random() < 0.4} | force
                force.clear()
                kills_in_row.clear()
                self.spec.change(changed)
                text = self.spec.valid()
                style = rng.choice(["rename", "truncate", "recreate", "partial"])
                write_spec(self.spec_path, text, style, rng, self.spec.cut_point(text))
                self.counts[f"edit:{style}"] += 1
                self.counts["edits.valid"] += 1
                if not changed:
                    self.counts["edits.no-launch-change"] += 1
            elif action == "invalid":
                kind, text = self.spec.invalid()
                style = rng.choice(["rename", "truncate", "recreate", "partial"])
                cut = self.spec.cut_point(text) if b"aliases: [aa" in text else None
                write_spec(self.spec_path, text, style, rng, cut)
                self.counts[f"edit:{style}"] += 1
                self.counts[f"invalid:{kind}"] += 1
                self.counts["edits.invalid"] += 1
                # Restore a valid spec soon, so the run keeps being applied.
                time.sleep(rng.uniform(0.2, 1.5))
                write_spec(self.spec_path, self.spec.valid(), "rename", rng, None)
                self.counts["edit:rename"] += 1
                self.counts["edits.valid"] += 1
                self.counts["edits.no-launch-change"] += 1
            elif action == "hup":
                n = rng.randint(3, 30)
                for _ in range(n):
                    self.daemon.send_signal(signal.SIGHUP)
                    time.sleep(rng.uniform(0, 0.02))
                self.counts["hup.storms"] += 1
                self.counts["hup.signals"] += n
            elif action in ("kill", "stop"):
                injected = self.injected.pid if self.injected else None
                procs = [(k, v) for k, v in run_processes(self.run_id).items() if v[2] not in "ZXT" and k not in self.stopped and k[0] != injected]
                if action == "kill":
                    # At most two kills of a model in a row without a new
                    # launch: more would walk it into backoff's `failed`.
                    procs = [(k, v) for k, v in procs if kills_in_row[v[0]] < 2]
                if not procs:
                    continue
                key, (m, g, _) = rng.choice(procs)
                with self.lock:
                    self.caused[m] = now()
                if action == "kill":
                    self.fault(m, "kill", True)
                    try:
                        os.kill(key[0], signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                    kills_in_row[m] += 1
                    force.add(m)
                    self.counts["kills"] += 1
                else:
                    self.sigstop(key, m, rng.uniform(0.2, self.args.max_stop))
            time.sleep(rng.uniform(0.3, 2.0))

    def inject_duplicate(self):
        """--inject duplicate: starts a second llama-server of model a beside
        the daemon's, as the daemon's own would run, and leaves it running, so
        that the run must report single-instance and clean-exit violations."""
        deadline = now() + 60
        while True:  # model a may be restarting: wait for a process to copy
            procs = [k for k, v in run_processes(self.run_id).items() if v[0] == "a" and v[2] not in "ZXT" and k not in self.stopped]
            argv, env = [], {}
            if procs:
                pid = procs[0][0]
                argv = (read(f"/proc/{pid}/cmdline", "rb") or b"").split(b"\0")[:-1]
                env = dict(v.split(b"=", 1) for v in (read(f"/proc/{pid}/environ", "rb") or b"").split(b"\0") if b"=" in v)
            if (b"--port" in argv and env) or now() > deadline:
                break
            time.sleep(0.2)
        if b"--port" not in argv or not env:
            self.v.add("inject", "no process of model a to copy")
            return
        i = argv.index(b"--port")
        argv[i + 1] = str(free_port()).encode()
        self.injected = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        print(f"soak: injected a second process of model a: pid {self.injected.pid}", flush=True)

    def fault(self, model, kind, explains):
        with self.lock:
            entry = [now(), kind, explains]
            self.faults[model].append(entry)
            return entry

    def sigstop(self, key, model, secs):
        entry = self.fault(model, "stop", None)
        try:
            os.kill(key[0], signal.SIGSTOP)
        except ProcessLookupError:
            return
        self.counts["stops"] += 1
        with self.lock:
            self.stopped[key] = model

        def cont():
            time.sleep(secs)
            survived = alive(key)
            try:
                os.kill(key[0], signal.SIGCONT)
            except ProcessLookupError:
                pass
            with self.lock:
                self.stopped.pop(key, None)
                # A stopped child the daemon replaced explains its requests' failures.
                entry[2] = not survived
                self.caused[model] = now()
            self.counts["stops.replaced" if not survived else "stops.resumed"] += 1

        threading.Thread(target=cont, daemon=True).start()

    # -- quiet samples

    def quiet_sample(self, label, resume=True):
        """RSS and fds with no load, every model ready, nothing stopped."""
        self.quiet.set()
        for _ in range(self.args.clients):
            self.load_idle.acquire(timeout=self.args.request_timeout + 5)
        while self.stopped:
            time.sleep(0.05)
        ok = self.wait_converged(self.args.settle_timeout)
        time.sleep(2)
        rss, fds = rss_and_fds(self.daemon.pid)
        print(f"soak: {label}: daemon RSS {rss / 2**20:.1f} MiB, {fds} fds (converged: {ok})", flush=True)
        if resume:
            self.quiet.clear()
        return rss, fds

    # -- main

    def run(self):
        a = self.args
        self.setup()
        threads = [threading.Thread(target=self.watch_processes, daemon=True), threading.Thread(target=self.sample_resources, daemon=True)]
        threads += [threading.Thread(target=self.client, args=(i,), daemon=True) for i in range(a.clients)]
        for t in threads:
            t.start()
        total = a.minutes * 60
        warmup = max(20.0, 0.1 * total)
        start = now()
        self.chaos(start + warmup)
        base = self.quiet_sample("after warm-up")
        if "duplicate" in a.inject:
            self.chaos(start + warmup + (total - warmup) / 2)
            self.inject_duplicate()
        self.chaos(start + total)
        # The end: a last valid save that changes every launch.
        self.spec.change(MODELS)
        write_spec(self.spec_path, self.spec.valid(), "rename", self.rng, None)
        self.counts["edit:rename"] += 1
        self.counts["edits.valid"] += 1
        end = self.quiet_sample("at the end", resume=False)
        try:
            final = self.status()
        except Exception as e:  # noqa: BLE001
            final = {"models": {}}
            self.v.add("converges", f"no final status: {e}")
        self.stop_all.set()
        for t in threads:
            t.join(timeout=a.request_timeout + 5)
        self.account(final)
        self.check_resources(base, end)
        self.shutdown()
        return self.report(base, end, final)

    def account(self, final):
        """Unexplained failures up to a model's `cut` are cut; the rest are lost."""
        self.cut = {}
        self.drained = {}
        for m in MODELS + sorted(set(self.unexplained) - set(MODELS)):
            ms = final["models"].get(m, {})
            self.cut[m] = ms.get("cut", 0)
            self.drained[m] = ms.get("drained", 0)
            # Stops whose verdict came in after the request ended.
            left = []
            for start, end, mode, detail, _ in self.unexplained[m]:
                if any(start - FAULT_WINDOW_BEFORE <= t <= end and explains for t, _, explains in self.faults[m]):
                    self.outcomes["faulted"] += 1
                    self.per_model[m]["faulted"] += 1
                else:
                    left.append((start, end, mode, detail))
                self.outcomes["unexplained"] -= 1
                self.per_model[m]["unexplained"] -= 1
            as_cut = min(len(left), self.cut[m])
            self.outcomes["cut"] += as_cut
            self.per_model[m]["cut"] += as_cut
            lost = left[as_cut:]
            self.outcomes["lost"] += len(lost)
            self.per_model[m]["lost"] += len(lost)
            for start, end, mode, detail in lost[:10]:
                self.v.add("lost", f"model {m}: {mode} request at {start - self.t0:.1f}s..{end - self.t0:.1f}s: {detail}")
        if self.outcomes["unexplained"] == 0:
            del self.outcomes["unexplained"]
        self.outcomes["lost"] += self.outcomes.pop("timeout", 0)
        for m in self.per_model:
            self.per_model[m]["lost"] += self.per_model[m].pop("timeout", 0)
            if self.per_model[m]["unexplained"] == 0:
                del self.per_model[m]["unexplained"]
        for t in self.timeouts[:10]:
            self.v.add("lost", f"request with no answer: {t}")

    def check_resources(self, base, end):
        a = self.args
        if base[1] < 0 or end[1] < 0:
            self.v.add("resources", "could not read the daemon's fds")
            return
        if end[1] > base[1] + a.fd_slack:
            self.v.add("resources", f"open fds grew from {base[1]} to {end[1]} (allowed +{a.fd_slack})")
        allowed = base[0] + max(16 * 2**20, base[0] // 4)
        if end[0] > allowed:
            self.v.add("resources", f"RSS grew from {base[0] / 2**20:.1f} MiB to {end[0] / 2**20:.1f} MiB (allowed {allowed / 2**20:.1f} MiB)")

    def shutdown(self):
        for key in list(self.stopped):
            try:
                os.kill(key[0], signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                rc = self.daemon.wait(timeout=self.args.settle_timeout)
            except subprocess.TimeoutExpired:
                self.v.add("clean-exit", f"the daemon did not exit within {self.args.settle_timeout} s of SIGTERM")
                self.daemon.kill()
                rc = self.daemon.wait()
            if rc != 0:
                self.v.add("clean-exit", f"the daemon exited with {rc} after SIGTERM")
        left = {}
        for _ in range(10):  # a child may take a moment to go once the daemon has reaped it
            left = {k: v for k, v in run_processes(self.run_id, any_comm=True).items() if v[2] not in "ZX"}
            if not left:
                break
            time.sleep(0.1)
        if left:
            self.v.add("clean-exit", f"orphans after the daemon stopped: {sorted(k[0] for k in left)}")
            for key in left:
                try:
                    os.kill(key[0], signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.orphans = len(left)

    def report(self, base, end, final):
        c = self.counts
        with self.lock:
            samples = list(self.samples)
        peak_rss = max((s[1] for s in samples), default=0)
        peak_fds = max((s[2] for s in samples), default=0)
        total = sum(v for k, v in self.outcomes.items())
        summary = {
            "minutes": self.args.minutes,
            "seed": self.args.seed,
            "edits": {
                "valid": c["edits.valid"],
                "invalid": c["edits.invalid"],
                "no_launch_change": c["edits.no-launch-change"],
                "styles": {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("edit:")},
                "invalid_kinds": {k.split(":", 1)[1]: v for k, v in sorted(c.items()) if k.startswith("invalid:")},
            },
            "hup": {"storms": c["hup.storms"], "signals": c["hup.signals"]},
            "kills": c["kills"],
            "stops": {"total": c["stops"], "resumed": c["stops.resumed"], "replaced": c["stops.replaced"]},
            "requests": dict(total=total, **{k: self.outcomes[k] for k in ("ok", "disconnected", "unavailable", "faulted", "cut", "lost")}),
            "requests_per_model": {m: dict(v) for m, v in sorted(self.per_model.items())},
            "status": {m: {"cut": self.cut[m], "drained": self.drained[m], "restarts": final["models"].get(m, {}).get("restarts")} for m in MODELS},
            "max_live_processes": dict(self.max_live),
            "launches_seen": len(self.seen),
            "retried_start_failures": c["restarts.start-failure"],
            "daemon": {
                "rss_mib": {"warm": round(base[0] / 2**20, 1), "end": round(end[0] / 2**20, 1), "peak": round(peak_rss / 2**20, 1)},
                "fds": {"warm": base[1], "end": end[1], "peak": peak_fds},
            },
            "orphans": self.orphans,
            "violations": dict(self.v.count()),
        }
        print("\nsoak summary:")
        print(json.dumps(summary, indent=2))
        if self.args.json_out:
            with open(self.args.json_out, "w") as f:
                json.dump(summary, f, indent=2)
        if self.v.items:
            print(f"\nsoak: FAILED, {len(self.v.items)} violations (first 20):")
            for t, kind, msg in self.v.items[:20]:
                print(f"  {t:8.1f}s  {kind}: {msg}")
            self.tail_log()
            print(f"soak: daemon log: {self.log_path}")
            return 1
        print(f"\nsoak: passed: {summary['requests']['total']} requests, {c['edits.valid'] + c['edits.invalid']} saves, {c['kills']} kills, {c['stops']} stops, no violation")
        return 0

    def abort(self):
        """On an unexpected error: leave nothing running."""
        self.stop_all.set()
        for key in list(self.stopped):
            try:
                os.kill(key[0], signal.SIGCONT)
            except ProcessLookupError:
                pass
        if self.daemon and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        for key in run_processes(self.run_id, any_comm=True):
            try:
                os.kill(key[0], signal.SIGKILL)
            except ProcessLookupError:
                pass


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("minutes", type=float)
    p.add_argument("--rocm-llm", required=True, help="the rocm-llm binary")
    p.add_argument("--llama-server", required=True, help="the llama-server binary")
    p.add_argument("--seed", type=int, default=int(os.environ.get("SOAK_SEED", "1")))
    p.add_argument("--clients", type=int, default=4, help="concurrent clients")
    p.add_argument("--workdir", help="instead of a fresh temporary directory")
    p.add_argument("--json-out", help="write the summary here too")
    p.add_argument("--max-stop", type=float, default=3.0, help="longest SIGSTOP, s")
    p.add_argument("--request-timeout", type=float, default=60.0)
    p.add_argument("--settle-timeout", type=float, default=120.0)
    p.add_argument("--fd-slack", type=int, default=8)
    p.add_argument(
        "--inject",
        default="",
        help="self-test: comma-separated faults the run must report: duplicate (a second llama-server of model a, "
        "left running: single-instance and clean-exit), lost (requests for an unknown model: lost)",
    )
    args = p.parse_args()
    if args.minutes <= 0:
        p.error("MINUTES must be > 0")
    for b in (args.rocm_llm, args.llama_server):
        if not os.access(b, os.X_OK):
            print(f"soak: {b} is not an executable file", file=sys.stderr)
            return 3
    soak = Soak(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(130))
    try:
        return soak.run()
    except SystemExit:
        soak.abort()
        raise
    except BaseException:
        traceback.print_exc()
        soak.abort()
        return 1


if __name__ == "__main__":
    sys.exit(main())
