"""Facts about compiled XLA programs, for tests that must not depend on wall-clock time."""

import math
import re

_CONSTANT = re.compile(r"= \w+\[([\d,]*)\]\S* constant\(")


def largest_constant(compiled) -> int:
    """Elements of the largest array constant in a compiled program's optimised HLO (0 if none)."""
    return max((math.prod(int(d) for d in dims.split(",") if d) for dims in _CONSTANT.findall(compiled.as_text())),
               default=0)
