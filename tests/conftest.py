"""Test-wide setup: eight fake CPU devices so sharding is exercised in every run.

XLA reads XLA_FLAGS once, when jax first initialises its backend, so this must run before any
test module imports jax.
"""
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")


# ------------------------------------------------------------------------------------------------------
# The experiment scripts' smoke runs (tests/test_experiments*.py) are subprocesses that mostly compile
# (XLA compilation is largely single-threaded): started together, once, the first time a test needs one,
# they share the 2 cores instead of queueing — about 40% less wall-clock than one after the other.
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMOKE_SCRIPTS = ("dataset_size.py", "testtime_training.py", "external_rewards.py")


class ExperimentSmokes:
    """`python experiments/<script> --smoke` for each script (each in its own process, one CPU device, a
    shared persistent XLA cache), plus rise_fall → mcs_vs_gt_gain → theorem1_rate in one process (theorem1
    reads the other two's runs). wait(name) returns the run's folder once it exited successfully."""

    def __init__(self, base: Path):
        self.base = base
        env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
        env.update(JAX_PLATFORMS="cpu", URLVR_XLA_CACHE=str(base / "xla_cache"),
                   PYTHONPATH=os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep))
        chain = f"""
import sys; sys.path.insert(0, {str(ROOT / 'experiments')!r})
import rise_fall, mcs_vs_gt_gain, theorem1_rate
d = {str(base / 'chain')!r}
rise_fall.main(["--smoke", "--out", d + "/rf", "--runs-dir", d + "/rf_runs"])
mcs_vs_gt_gain.main(["--smoke", "--out", d + "/mcs", "--runs-dir", d + "/mcs_runs"])
theorem1_rate.main(["--smoke", "--out", d + "/th", "--mcs-runs-dir", d + "/mcs_runs", "--rf-runs-dir", d + "/rf_runs"])
"""
        commands = {"chain": [sys.executable, "-c", chain]}
        for script in SMOKE_SCRIPTS:
            commands[script] = [sys.executable, str(ROOT / "experiments" / script), "--smoke",
                                "--out", str(base / script / "out"), "--runs-dir", str(base / script / "runs")]
        self.procs = {}
        for name, cmd in commands.items():
            (base / name).mkdir(parents=True, exist_ok=True)
            log = open(base / name / "log.txt", "w")
            self.procs[name] = (subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)

    def wait(self, name: str) -> Path:
        proc, log = self.procs[name]
        rc = proc.wait(timeout=1800)
        log.close()
        assert rc == 0, f"{name} --smoke failed (exit {rc}):\n" + (self.base / name / "log.txt").read_text()[-4000:]
        return self.base / name

    def close(self):
        for proc, log in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


@pytest.fixture(scope="session")
def experiment_smokes(tmp_path_factory):
    smokes = ExperimentSmokes(tmp_path_factory.mktemp("experiment_smokes"))
    yield smokes
    smokes.close()
