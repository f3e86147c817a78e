"""Subject-to-video evaluation in the manner of OpenS2V-Eval (docs/evaluation.md): one small class per metric, the
prompt-set readers, the runner that writes scores.jsonl and the summary, and the Total.

Every metric has a `name` (its key in scores.jsonl) and `score(sample) -> float`, and raises `NotScored(reason)`
when it does not apply to a sample or cannot be computed; the runner records null with that reason.
"""

from kaleido.metrics.base import NotScored, Sample

__all__ = ["NotScored", "Sample"]
