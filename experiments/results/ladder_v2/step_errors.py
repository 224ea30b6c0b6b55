"""Per-step error rates of a ladder-v2 model's sampled traces (see step_errors.md).

    PYTHONPATH=. python experiments/results/ladder_v2/step_errors.py urlvr_jax/models/ladder_v2/q0.05

Samples 4 responses at T = 1 for 128 held-out problems (the builder's eval seed) and re-computes every step line
`a op b=c`; a `*` line counts as right if c is a*b or the fact's designed error (synthetic.FACT_ERRORS).
"""
import re
import sys
from collections import Counter

from urlvr_jax import sft
from urlvr_jax.data import synthetic as syn
from urlvr_jax.models.weights import load_model
from urlvr_jax.tokenizer import load_tokenizer

LINE = re.compile(r"^(\d+)([-+*])(\d+)=(\d+)(?: so (.+))?$")


def main(folder: str) -> dict:
    model, tok = load_model(folder), load_tokenizer(folder)
    problems = sft.problems_for_model(folder, 128, 20260308, split="eval")
    texts, _, _ = sft.sample_responses(model, tok, problems, 4, 1.0, max_new_tokens=96)
    err, tot = Counter(), Counter()
    for row in texts:
        for text in row:
            for line in text.split("\n"):
                m = LINE.match(line)
                if not m:
                    continue
                a, op, b, c = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
                right = {"+": a + b, "-": a - b, "*": a * b}[op]
                kind = op if op == "*" else f"{op}{len(str(a))}{len(str(b))}"
                tot[kind] += 1
                designed = op == "*" and c == syn.FACT_ERRORS.get(syn.fact_key(a, b))
                err[kind] += int(c != right and not designed)
    out = {k: (err[k], tot[k], round(err[k] / tot[k], 3)) for k in tot}
    print(out)
    return out


if __name__ == "__main__":
    main(sys.argv[1])
