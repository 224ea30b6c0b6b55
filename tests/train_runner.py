"""Subprocess entry for the trainer tests: `python train_runner.py CONFIG_JSON WORKDIR [KILL_AT_STEP]`.

With KILL_AT_STEP, the process SIGKILLs itself when it is about to log that step's metrics: a
preemption with no chance to clean up.
"""
import json
import os
import signal
import sys

from urlvr_jax import train as train_mod
from urlvr_jax.config import base_config


def main():
    overrides = json.loads(open(sys.argv[1]).read())
    workdir = sys.argv[2]
    kill_at, sig = None, signal.SIGKILL
    if len(sys.argv) > 3:  # "N" = SIGKILL at step N; "term:N" = SIGTERM (preemption notice) at step N
        spec = sys.argv[3]
        sig = signal.SIGTERM if spec.startswith("term:") else signal.SIGKILL
        kill_at = int(spec.split(":")[-1])
    config = base_config()
    for dotted, value in overrides.items():
        section, key = dotted.split(".")
        config[section][key] = value
    if kill_at is not None:
        # Make the kill land after the previous checkpoint is finalized, so the test knows which step the
        # restart must resume from (an unfinished async save is simply not there: orbax finalizes atomically).
        save = train_mod.Checkpointer.save

        def save_and_wait(self, *args):
            save(self, *args)
            self.wait()

        train_mod.Checkpointer.save = save_and_wait
        original = train_mod.MetricsWriter.write

        def write(self, record):
            if record["step"] == kill_at:
                os.kill(os.getpid(), sig)
            original(self, record)

        train_mod.MetricsWriter.write = write
    print(json.dumps(train_mod.train(config, workdir), default=str))


if __name__ == "__main__":
    main()
