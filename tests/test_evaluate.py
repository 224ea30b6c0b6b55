"""avg@k / pass@k / maj@k against hand-computed values on fixed records."""
import numpy as np
import pytest

from urlvr_jax.evaluate import majority_index, summarize


def test_summary_hand_computed():
    # 3 problems x 4 samples
    correct = np.array([[1, 0, 0, 0],   # c=1
                        [1, 1, 1, 1],   # c=4
                        [0, 0, 0, 0]],  # c=0
                       bool)
    maj = np.array([False, True, False])
    s = summarize(correct, maj)
    assert s["avg@4"] == pytest.approx(5 / 12)
    assert s["maj@4"] == pytest.approx(1 / 3)
    # pass@1 = mean(c/n) = (1/4 + 1 + 0)/3
    assert s["pass@1"] == pytest.approx((0.25 + 1 + 0) / 3)
    # pass@2: problem 1: 1 - C(3,2)/C(4,2) = 1 - 3/6 = 0.5; problem 2: 1; problem 3: 0
    assert s["pass@2"] == pytest.approx((0.5 + 1 + 0) / 3)
    # pass@4: any correct
    assert s["pass@4"] == pytest.approx(2 / 3)


def test_majority_index_first_seen_tie_break_and_no_votes():
    # labels are the index of the first member of each answer class, -1 = no answer
    assert majority_index([0, 1, 1, 0]) == 0          # tie 2-2: the class seen first wins
    assert majority_index([-1, 1, 1, 3]) == 1
    assert majority_index([-1, -1, -1]) == -1         # nobody answered
    assert majority_index([-1, 1, 2, 2]) == 2
