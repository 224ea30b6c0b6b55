"""Answer grading for monitoring and evaluation: MATH-style normalisation, then math-verify, in bounded time.

Grading is never the training signal of an unsupervised run; it feeds metrics (GT reward, reward accuracy,
label accuracy, MCS) and evaluation. It therefore has to be *robust* more than fast: a policy in collapse
writes anything, and math-verify (sympy, an ANTLR LaTeX parser, regexes) can spin for minutes on inputs
such as ``9^{9^{9^{9}}}``, 50k nested braces or a 100k-character string, often inside C code that no
signal can interrupt.

Semantics
---------
``grade(pred, gold)`` = ``decisive(pred, gold)`` when that gives a verdict, else
``fast_equal(pred, gold) or math_verify_equal(pred, gold)``:

1. the answer is taken from each side with ``extract_answer`` (``grading_rules.py``), in math-verify's order:
   a signed-off "final answer is $…$. I hope", the last group of ``\\boxed{...}`` / ``\\fbox{...}``
   (neighbouring boxes form one answer), what follows the last "final answer … is", the last math expression
   (``$…$``, ``$$…$$``, ``\\(…\\)``, ``\\[…\\]``), else the text itself — so a whole response or a bare
   answer can be passed; a plain-text prediction's decimal comma is read as a point
   where unambiguous (``read_decimal_comma``);
1b. ``decisive``: exact verdicts where math-verify is wrong or too coarse — two plain numbers compare as
   exact rationals (math-verify rounds to 6 decimals; a k-decimal prediction matches the gold it rounds or
   truncates), base-b numerals ("52_8") compare digits and base (math-verify drops the subscript), units
   with different powers differ, ``a \\neq b`` equals ``b \\neq a``, and intervals / tuples / matrices of
   numbers compare entry by entry under the same number rule;
2. fast path (in-process, linear time): both strings go through ``normalize_answer`` (MATH ``strip_string``
   style: strip ``$``, ``\\text{}``, ``\\left/\\right``, units, ``\\%``, degrees, thin spaces, trailing ".",
   ``dfrac -> frac``, ``\\frac12 -> \\frac{1}{2}``, thousands separators, ``x = ``, choice letters, exact
   rational canonical form of plain numbers); equal non-empty normal forms -> True;
3. otherwise math-verify ``verify(parse("\\boxed{gold}"), parse("\\boxed{pred}"))`` runs in a worker
   *process*, with math-verify's own SIGALRM timeouts disabled (they cancel each other's alarms and fail
   outside the main thread). The parent bounds the wall-clock time per answer: a worker that has not
   answered ``timeout_s`` seconds after it took the answer is killed (SIGKILL) and replaced, and the answer
   grades False. Inside the worker a soft alarm at ``SOFT_FRACTION * timeout_s`` usually ends Python-level
   loops first, so the worker survives; C-level loops (huge integer powers) are what the kill is for.
   A worker that crashes (segfault, recursion, memory limit ``WORKER_MEMORY_BYTES``) grades False too.
   Predictions longer than ``max_chars`` after extraction skip math-verify (False unless the fast path
   matched) — no real answer is that long, and it keeps the parent's work linear. So do answers that
   ``too_costly`` flags (power towers, huge factorials / binomials / sums, deep nesting, hundreds of terms):
   those are what used to run into the soft alarm.

Timing contract: every answer that reaches a worker gets at most ``timeout_s`` seconds of that worker
(plus select/IPC latency, a few ms). A replacement worker must import sympy/math-verify (~1 s) before it
takes work; that start-up is not counted against any answer, so a batch with k pathological answers costs
about ``ceil(k / processes) * (timeout_s + start-up)`` of wall time at worst.

This file is also the worker's program: it is run as a *script* (``python grading.py --worker``), not
imported as part of the package, so a worker never imports jax or the rest of ``urlvr_jax`` (only the
standard library, ``grading_rules.py`` and the light package ``__init__``). Keep it that way.
"""
from __future__ import annotations

import atexit
import dataclasses
import json
import os
import queue
import select
import signal
import subprocess
import sys
import threading
import time
from typing import Optional, Sequence

if not __package__:  # run as the worker script (or imported from its folder): import the rules by package
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from urlvr_jax.rewards.grading_rules import (  # noqa: E402,F401  (re-exported: callers import them from here)
    BOX_MARKERS,
    decisive,
    extract_after_marker,
    extract_answer,
    extract_boxed,
    fast_equal,
    normalize_answer,
    read_decimal_comma,
    too_costly,
)

DEFAULT_TIMEOUT_S = 5.0
SOFT_FRACTION = 0.4  # worker-side soft alarm, as a fraction of timeout_s: >= 2x headroom under the bound
DEFAULT_MAX_CHARS = 2000
WORKER_MEMORY_BYTES = 4 << 30  # address-space limit of a worker, so a runaway sympy cannot eat the host
WORKER_START_TIMEOUT_S = 120.0  # import of sympy + math-verify on a busy 2-core machine



# ----------------------------------------------------------------------------------------------------
# Worker side (runs in a separate interpreter: ``python grading.py --worker``).
# ----------------------------------------------------------------------------------------------------
class _SoftTimeout(BaseException):
    """Raised by the worker's own alarm. BaseException so sympy/math-verify's `except Exception` miss it."""


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the thread that spawned it exits (the parent's spawner thread, which
    lives as long as the parent process), so a worker stuck in C code cannot outlive a killed parent."""
    parent = os.getppid()
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def _worker_main() -> None:  # pragma: no cover - exercised through subprocesses in the tests
    import logging
    import resource

    logging.disable(logging.CRITICAL)  # math-verify logs every failed parse; the parent counts them
    try:
        resource.setrlimit(resource.RLIMIT_AS, (WORKER_MEMORY_BYTES, WORKER_MEMORY_BYTES))
    except (ValueError, OSError):
        pass
    _die_with_parent()
    from math_verify import parse, verify  # imported here so the parent never pays for sympy

    def on_alarm(signum, frame):
        raise _SoftTimeout()

    signal.signal(signal.SIGALRM, on_alarm)
    out = sys.stdout.buffer

    def mv_parse(s):
        return parse("\\boxed{" + s + "}", parsing_timeout=None)

    def mv_equal(gold_p, pred_p):
        return bool(gold_p) and bool(pred_p) and bool(verify(gold_p, pred_p, timeout_seconds=None))

    def run(req):
        op = req["op"]
        if op == "grade":
            return mv_equal(mv_parse(req["gold"]), mv_parse(req["pred"]))
        if op == "cluster":
            # Greedy clustering: each item joins the first earlier representative that verifies against it.
            items = req["items"]
            op_budget = float(req["op_budget"])
            parsed, labels, reps = [], [], []
            for i, s in enumerate(items):
                try:
                    signal.setitimer(signal.ITIMER_REAL, op_budget)
                    parsed.append(mv_parse(s))
                except _SoftTimeout:
                    parsed.append(None)
                except Exception:
                    parsed.append(None)
                finally:
                    signal.setitimer(signal.ITIMER_REAL, 0)
                label = i
                if parsed[i]:
                    for r in reps:
                        verdict = decisive(s, items[r])
                        if verdict is not None:
                            if verdict:
                                label = r
                                break
                            continue
                        try:
                            signal.setitimer(signal.ITIMER_REAL, op_budget)
                            same = mv_equal(parsed[r], parsed[i])
                        except (_SoftTimeout, Exception):
                            same = False
                        finally:
                            signal.setitimer(signal.ITIMER_REAL, 0)
                        if same:
                            label = r
                            break
                if label == i and parsed[i]:
                    reps.append(i)
                labels.append(label)
            return labels
        raise ValueError(f"unknown op {op!r}")

    out.write(b'{"ready": true}\n')
    out.flush()
    for line in sys.stdin.buffer:
        req = json.loads(line)
        status, value = "ok", None
        try:
            if req["op"] == "grade":
                signal.setitimer(signal.ITIMER_REAL, float(req["soft_s"]))
            value = run(req)
        except _SoftTimeout:
            status = "timeout"
        except BaseException as e:  # RecursionError, MemoryError, sympy internals: never kill the worker
            status, value = "error", type(e).__name__
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
        out.write(json.dumps({"id": req["id"], "status": status, "value": value}).encode() + b"\n")
        out.flush()


# ----------------------------------------------------------------------------------------------------
# Parent side: a small pool of worker processes with per-task wall-clock deadlines.
# ----------------------------------------------------------------------------------------------------
@dataclasses.dataclass
class GraderStats:
    """Counters since start (or ``reset_stats``). ``max_task_s`` is the longest dispatch-to-answer time."""

    calls: int = 0
    fast_path: int = 0  # decided in the parent by `decisive` or the normaliser
    verified: int = 0  # sent to math-verify
    too_long: int = 0  # skipped math-verify because of max_chars
    too_costly: int = 0  # skipped math-verify because of `too_costly` (graded False unless the fast path matched)
    timeouts: int = 0  # hard kills at the deadline (the answer graded False)
    soft_timeouts: int = 0  # the worker's own alarm fired (the answer graded False, worker kept)
    errors: int = 0  # exceptions inside math-verify (graded False)
    crashes: int = 0  # worker died (graded False, worker replaced)
    workers_started: int = 0
    max_task_s: float = 0.0


STATS = GraderStats()


def reset_stats() -> None:
    global STATS
    STATS = GraderStats()


class _Spawner:
    """Starts worker processes from one long-lived daemon thread.

    Workers ask the kernel to SIGKILL them when the *thread* that forked them exits (PR_SET_PDEATHSIG is per
    thread). Spawning from a caller's thread would kill the workers when that thread ends; this thread ends
    only with the process.
    """

    def __init__(self):
        self.requests: queue.Queue = queue.Queue()
        self.thread: Optional[threading.Thread] = None
        self.lock = threading.Lock()

    def popen(self, *args, **kwargs) -> subprocess.Popen:
        with self.lock:
            if self.thread is None or not self.thread.is_alive():
                self.thread = threading.Thread(target=self._loop, name="grading-spawner", daemon=True)
                self.thread.start()
        box: queue.Queue = queue.Queue(1)
        self.requests.put((args, kwargs, box))
        ok, value = box.get()
        if not ok:
            raise value
        return value

    def _loop(self) -> None:
        while True:
            args, kwargs, box = self.requests.get()
            try:
                box.put((True, subprocess.Popen(*args, **kwargs)))
            except BaseException as e:  # report to the caller, keep serving
                box.put((False, e))


_SPAWNER = _Spawner()


class _Worker:
    def __init__(self):
        env = dict(os.environ)
        env.pop("PYTHONSTARTUP", None)
        self.proc = _SPAWNER.popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--worker"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, close_fds=True, env=env,
        )
        self.fd = self.proc.stdout.fileno()
        self.buf = b""
        self.ready = False
        self.task = None  # (task_id, deadline, t0)
        self.started = time.monotonic()
        STATS.workers_started += 1

    def send(self, obj) -> None:
        self.proc.stdin.write(json.dumps(obj).encode() + b"\n")
        self.proc.stdin.flush()

    def read_lines(self) -> Optional[list]:
        """Non-blocking read of complete lines; None on EOF (the worker died)."""
        try:
            chunk = os.read(self.fd, 1 << 16)
        except OSError:
            return None
        if not chunk:
            return None
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        return [json.loads(l) for l in lines if l.strip()]

    def kill(self) -> None:
        try:
            self.proc.kill()
        except ProcessLookupError:
            pass
        self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            try:
                f.close()
            except OSError:
                pass


class _Pool:
    def __init__(self):
        self.workers: list[_Worker] = []
        self.lock = threading.Lock()
        self.pid = os.getpid()

    def ensure(self, n: int) -> None:
        if os.getpid() != self.pid:  # we are a fork: those workers belong to the parent, leave them alone
            self.workers, self.pid = [], os.getpid()
        self.workers = [w for w in self.workers if w.proc.poll() is None]
        while len(self.workers) < n:
            self.workers.append(_Worker())

    def shutdown(self) -> None:
        if os.getpid() == self.pid:
            for w in self.workers:
                w.kill()
        self.workers = []

    def run(self, tasks: list[dict], timeout_s: float, processes: int) -> list[tuple[str, object]]:
        """Run tasks (dicts with "op" and payload) on up to `processes` workers, each bounded by timeout_s.

        Returns one (status, value) per task: status in {"ok", "timeout", "soft_timeout", "error", "crash"}.
        """
        results: list = [None] * len(tasks)
        if not tasks:
            return results
        processes = max(1, min(processes, len(tasks)))
        self.ensure(processes)
        active = self.workers[:processes]
        queue = list(range(len(tasks)))[::-1]
        done = 0
        while done < len(tasks):
            now = time.monotonic()
            for k, w in enumerate(active):
                if w.ready and w.task is None and queue:
                    i = queue.pop()
                    try:
                        w.send(dict(tasks[i], id=i))
                        w.task = (i, now + timeout_s, now)
                    except (BrokenPipeError, OSError):
                        queue.append(i)
                        w.kill()
                        active[k] = self._replace(w)
            fds = {w.fd: w for w in active}
            deadlines = [w.task[1] for w in active if w.task is not None]
            deadlines += [w.started + WORKER_START_TIMEOUT_S for w in active if not w.ready]
            wait = max(0.0, min(deadlines) - time.monotonic()) if deadlines else 0.05
            readable, _, _ = select.select(list(fds), [], [], wait)
            now = time.monotonic()
            for fd in readable:
                w = fds[fd]
                lines = w.read_lines()
                if lines is None:  # EOF: the worker died (segfault, OOM, ...)
                    if not w.ready:
                        self._fail_start(w)
                    if w.task is not None:
                        results[w.task[0]] = ("crash", None)
                        STATS.crashes += 1
                        done += 1
                        self._note_time(now - w.task[2])
                    k = active.index(w)
                    w.kill()
                    active[k] = self._replace(w)
                    continue
                for msg in lines:
                    if msg.get("ready"):
                        w.ready = True
                    elif w.task is not None and msg.get("id") == w.task[0]:
                        status = msg["status"]
                        results[w.task[0]] = ("soft_timeout" if status == "timeout" else status, msg["value"])
                        self._note_time(now - w.task[2])
                        w.task = None
                        done += 1
            for k, w in enumerate(active):
                if w.task is not None and now >= w.task[1]:
                    results[w.task[0]] = ("timeout", None)
                    STATS.timeouts += 1
                    self._note_time(now - w.task[2])
                    done += 1
                    w.kill()
                    active[k] = self._replace(w)
                elif not w.ready and now - w.started > WORKER_START_TIMEOUT_S:
                    self._fail_start(w)
        return results

    @staticmethod
    def _note_time(dt: float) -> None:
        STATS.max_task_s = max(STATS.max_task_s, dt)

    def _replace(self, w: _Worker) -> _Worker:
        nw = _Worker()
        self.workers = [nw if x is w else x for x in self.workers]
        return nw

    def _fail_start(self, w: _Worker) -> None:
        w.kill()
        self.shutdown()
        raise RuntimeError(
            "grading.py: a math-verify worker did not start (it exited or sent nothing within "
            f"{WORKER_START_TIMEOUT_S:.0f}s). Check `{sys.executable} -c 'import math_verify'` works "
            "(pip install math-verify)."
        )


_POOL = _Pool()
atexit.register(_POOL.shutdown)


def shutdown_workers() -> None:
    """Kill the worker processes now (they are restarted on demand)."""
    with _POOL.lock:
        _POOL.shutdown()


def _default_processes() -> int:
    return max(1, min(4, os.cpu_count() or 1))


def _check_timeout(timeout_s: float) -> float:
    timeout_s = float(timeout_s)
    if not timeout_s > 0:
        raise ValueError(f"grading: timeout_s must be > 0 seconds, got {timeout_s}")
    return timeout_s


def _prepare(pred, gold, max_chars: int, screen: bool = True):
    """(decided, result, pred_str, gold_str): extraction, fast path, length and cost gates, in the parent."""
    STATS.calls += 1
    if pred is None or gold is None:
        return True, False, None, None
    p, p_kind = extract_answer(str(pred))
    g, _ = extract_answer(str(gold))
    if p is None or g is None or not p.strip() or not g.strip():
        return True, False, None, None
    if p_kind == "plain":
        p = read_decimal_comma(p, g)
    if len(p) > max_chars or len(g) > max_chars:
        # Only exact equality for absurdly long answers: keeps the parent's work linear and skips sympy.
        STATS.too_long += 1
        return True, p.strip() == g.strip(), p, g
    verdict = decisive(p, g)
    if verdict is not None:
        STATS.fast_path += 1
        return True, verdict, p, g
    if fast_equal(p, g):
        STATS.fast_path += 1
        return True, True, p, g
    if screen and (too_costly(p) or too_costly(g)):
        STATS.too_costly += 1
        return True, False, p, g
    return False, None, p, g


def grade_batch(
    preds: Sequence[Optional[str]],
    golds: Sequence[Optional[str]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    processes: Optional[int] = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    soft_timeout: bool = True,
    screen: bool = True,
) -> list[bool]:
    """Grade predictions against gold answers; list of bools, same order. Never raises on bad answers.

    preds: responses or bare answers (`extract_answer`: the last \\boxed{} group, else the last math
        expression, else the text); None grades False.
    golds: gold answer strings, same length as preds.
    timeout_s: wall-clock bound per answer in a math-verify worker (see module docstring).
    processes: number of worker processes (default min(4, cpu_count)).
    max_chars: predictions/golds longer than this (after \\boxed extraction) are compared as exact strings
        only.
    soft_timeout: let the worker interrupt itself at SOFT_FRACTION * timeout_s (keeps the worker alive);
        False leaves only the parent's hard kill at timeout_s (used by the tests to exercise it).
    screen: grade answers that `too_costly` flags (power towers, huge factorials, deep nesting, …) False
        without math-verify; False sends them to a worker anyway (used by the tests of the time bound).
    """
    if len(preds) != len(golds):
        raise ValueError(f"grade_batch: {len(preds)} predictions but {len(golds)} gold answers; "
                         "pass one gold answer per prediction (repeat a prompt's gold for its N responses)")
    timeout_s = _check_timeout(timeout_s)
    processes = _default_processes() if processes is None else int(processes)
    out: list = [False] * len(preds)
    tasks, where = [], []
    for i, (p, g) in enumerate(zip(preds, golds)):
        decided, res, ps, gs = _prepare(p, g, max_chars, screen)
        if decided:
            out[i] = bool(res)
        else:
            soft_s = SOFT_FRACTION * timeout_s if soft_timeout else 0.0
            tasks.append({"op": "grade", "pred": ps, "gold": gs, "soft_s": soft_s})
            where.append(i)
    if tasks:
        STATS.verified += len(tasks)
        with _POOL.lock:
            res = _POOL.run(tasks, timeout_s, processes)
        for i, (status, value) in zip(where, res):
            out[i] = status == "ok" and bool(value)
            if status == "soft_timeout":
                STATS.soft_timeouts += 1
            elif status == "error":
                STATS.errors += 1
    return out


def grade(prediction: Optional[str], gold: Optional[str], timeout_s: float = DEFAULT_TIMEOUT_S,
          max_chars: int = DEFAULT_MAX_CHARS) -> bool:
    """True iff `prediction` (a response or a bare answer) is the same mathematical answer as `gold`.

        grade(r"so the answer is \\boxed{\\frac{3}{4}}.", "0.75")      # True
        grade(r"\\boxed{1}, \\boxed{2}", r"\\{1,2\\}")                 # True: the boxes form one answer
        grade("$(4, 10, -2)$", "(10, 4, -2)")                       # False: a tuple is ordered

    See the module docstring for the steps and the time bound.
    """
    return grade_batch([prediction], [gold], timeout_s=timeout_s, processes=1, max_chars=max_chars)[0]


def _cluster_key(s, max_chars: int) -> str:
    if s is None or not str(s).strip():
        return ""
    s = str(s)
    if len(s) > max_chars:
        return "\0raw:" + s.strip()  # too long to normalise safely: exact string identity only
    return normalize_answer(s)


def cluster_answers(
    groups: Sequence[Sequence[Optional[str]]],
    timeout_s: float = DEFAULT_TIMEOUT_S,
    processes: Optional[int] = None,
    max_chars: int = DEFAULT_MAX_CHARS,
    use_math_verify: bool = True,
) -> list[list[int]]:
    """Per group, the index of the first member of each answer's equivalence class (-1 for no answer).

    Equivalence (greedy, first-seen representatives, so the labels are stable in the group's order):
    1. None / blank -> -1;
    2. equal ``normalize_answer`` forms -> same class (exact, in the parent);
    3. (use_math_verify) the remaining distinct forms are clustered in a worker: each joins the first
       earlier representative r with ``verify(parse(r), parse(item))``. Each parse/verify has a soft budget
       of ``SOFT_FRACTION * timeout_s``; the whole group has a hard bound of ``3 * timeout_s``, past which
       the worker is killed and the group keeps the normal-form classes of step 2 (counted in
       STATS.timeouts). Items longer than max_chars only take part in step 2.
    math-verify equivalence is not transitive; greedy first-representative assignment makes the result
    depend on order, which is the group's response order (the same order the first-seen tie-break uses).
    """
    timeout_s = _check_timeout(timeout_s)
    processes = _default_processes() if processes is None else int(processes)
    out: list[list[int]] = []
    tasks, where = [], []
    for gi, group in enumerate(groups):
        labels, key_first, reps = [], {}, []
        for i, s in enumerate(group):
            key = _cluster_key(s, max_chars)
            if not key:
                labels.append(-1)
                continue
            if key not in key_first:
                key_first[key] = i
                reps.append(i)
            labels.append(key_first[key])
        out.append(labels)
        short = [i for i in reps if len(str(group[i])) <= max_chars and not too_costly(str(group[i]))]
        if use_math_verify and len(short) > 1:
            tasks.append({"op": "cluster", "items": [str(group[i]) for i in short],
                          "op_budget": SOFT_FRACTION * timeout_s})
            where.append((gi, short))
    if tasks:
        with _POOL.lock:
            res = _POOL.run(tasks, 3 * timeout_s, processes)
        for (gi, short), (status, value) in zip(where, res):
            if status != "ok":
                continue
            # value[j] = index (into `short`) of the representative of short[j]
            remap = {short[j]: short[v] for j, v in enumerate(value)}
            out[gi] = [remap.get(l, l) if l >= 0 else -1 for l in out[gi]]
    return out


if __name__ == "__main__" and "--worker" in sys.argv:
    _worker_main()
