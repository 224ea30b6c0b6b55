"""Model Collapse Step (paper §5): the first training step at which reward accuracy falls below 1%.

The paper does not say whether the curve is smoothed, so the tracker reports both:
  raw        the first recorded step with reward_accuracy < threshold;
  sustained  mode="consecutive": the FIRST step of the first run of `window` consecutive recorded
             steps that are all < threshold (confirmed `window − 1` steps later);
             mode="moving_average": the first step s at which the mean of the last `window` recorded
             values (steps ≤ s, window full) is < threshold.
The summary names which variant is the headline `mcs` (the sustained one by default) and `should_stop`
turns true once the chosen criterion (`stop_on`) fires, so a run can end at collapse.

Steps are whatever the trainer counts (optimizer steps in the paper); they must increase.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Any

__all__ = ["ModelCollapseTracker"]

_MODES = ("consecutive", "moving_average")
_STOP_ON = ("sustained", "raw", None)


class ModelCollapseTracker:
    """Feed `update(step, reward_accuracy)` once per step; read `summary()` / `should_stop`."""

    def __init__(
        self,
        threshold: float = 0.01,
        window: int = 5,
        mode: str = "consecutive",
        stop_on: str | None = "sustained",
    ):
        if mode not in _MODES:
            raise ValueError(f"ModelCollapseTracker: mode must be one of {_MODES}, got {mode!r}")
        if stop_on not in _STOP_ON:
            raise ValueError(f"ModelCollapseTracker: stop_on must be one of {_STOP_ON}, got {stop_on!r}")
        if int(window) < 1:
            raise ValueError(f"ModelCollapseTracker: window must be >= 1, got {window!r}")
        if not 0.0 < float(threshold) <= 1.0:
            raise ValueError(f"ModelCollapseTracker: threshold must be in (0, 1], got {threshold!r}")
        self.threshold = float(threshold)
        self.window = int(window)
        self.mode = mode
        self.stop_on = stop_on
        self._recent: deque[tuple[int, float]] = deque(maxlen=self.window)
        self.last_step: int | None = None
        self.num_updates = 0
        self.raw_step: int | None = None
        self.sustained_step: int | None = None  # see module docstring for which step is reported
        self.sustained_confirmed_at: int | None = None  # step at which the sustained criterion fired

    # ------------------------------------------------------------------------------------------ feed
    def update(self, step: int, reward_accuracy: float) -> bool:
        """Record one step; returns should_stop."""
        step = int(step)
        acc = float(reward_accuracy)
        if not math.isfinite(acc) or not 0.0 <= acc <= 1.0:
            raise ValueError(
                f"ModelCollapseTracker.update: reward_accuracy at step {step} must be a finite value in "
                f"[0, 1], got {reward_accuracy!r} (is GT grading wired to the metrics?)"
            )
        if self.last_step is not None and step <= self.last_step:
            raise ValueError(
                f"ModelCollapseTracker.update: steps must increase, got {step} after {self.last_step} "
                "(on resume, restore the tracker with load_state_dict instead of replaying steps)"
            )
        self.last_step = step
        self.num_updates += 1
        self._recent.append((step, acc))
        below = acc < self.threshold
        if below and self.raw_step is None:
            self.raw_step = step
        if self.sustained_step is None and len(self._recent) == self.window:
            vals = [a for _, a in self._recent]
            if self.mode == "consecutive" and all(a < self.threshold for a in vals):
                self.sustained_step = self._recent[0][0]
                self.sustained_confirmed_at = step
            elif self.mode == "moving_average" and sum(vals) / self.window < self.threshold:
                self.sustained_step = step
                self.sustained_confirmed_at = step
        return self.should_stop

    # ------------------------------------------------------------------------------------------ read
    @property
    def variant(self) -> str:
        if self.mode == "consecutive":
            return f"sustained: first step of {self.window} consecutive steps < {self.threshold:g}"
        return f"sustained: first step where the {self.window}-step moving average < {self.threshold:g}"

    @property
    def should_stop(self) -> bool:
        if self.stop_on == "raw":
            return self.raw_step is not None
        if self.stop_on == "sustained":
            return self.sustained_step is not None
        return False

    def summary(self) -> dict[str, Any]:
        """MCS values (None = not collapsed yet) and a description of which variant is the headline."""
        headline = "raw" if self.stop_on == "raw" else "sustained"
        return {
            "mcs": self.raw_step if headline == "raw" else self.sustained_step,
            "mcs_variant": "raw: first step < {:g}".format(self.threshold) if headline == "raw" else self.variant,
            "mcs_raw": self.raw_step,
            "mcs_sustained": self.sustained_step,
            "mcs_sustained_confirmed_at": self.sustained_confirmed_at,
            "mode": self.mode,
            "window": self.window,
            "threshold": self.threshold,
            "steps_seen": self.num_updates,
            "last_step": self.last_step,
            "should_stop": self.should_stop,
        }

    # ---------------------------------------------------------------------------------- checkpointing
    def state_dict(self) -> dict[str, Any]:
        """Plain-Python state for checkpoints (JSON-serialisable)."""
        return {
            "threshold": self.threshold,
            "window": self.window,
            "mode": self.mode,
            "stop_on": self.stop_on,
            "recent": [list(x) for x in self._recent],
            "last_step": self.last_step,
            "num_updates": self.num_updates,
            "raw_step": self.raw_step,
            "sustained_step": self.sustained_step,
            "sustained_confirmed_at": self.sustained_confirmed_at,
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> "ModelCollapseTracker":
        try:
            t = cls(state["threshold"], state["window"], state["mode"], state["stop_on"])
            t._recent.extend((int(s), float(a)) for s, a in state["recent"])
            for key in ("last_step", "num_updates", "raw_step", "sustained_step", "sustained_confirmed_at"):
                setattr(t, key, state[key])
        except KeyError as e:
            raise ValueError(f"ModelCollapseTracker.from_state_dict: missing key {e} in the saved state") from None
        return t
