"""How tests install INT8 entries of tiny random models.

Tiny random models rank by noise, so the fidelity floor means nothing for them, and the
"does INT8 pay" check times the machine: a test must not get a different entry because the
box was busy. So tests that need an entry, not a verdict, install with this policy. It
leaves the cascade out (engine/cascade.py) unless asked: most tests compare the served
scores with the INT8 file's own, and the cascade's tests install with it on purpose.
"""

from __future__ import annotations


def any_int8(cascade: bool = False):
    from edgerank.convert.backoff import Policy

    return Policy(min_speedup=0.0, allow_below_floor=True, cascade=cascade)
