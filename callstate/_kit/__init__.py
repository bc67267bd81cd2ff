"""The resume kit: objects that make a resumed run continue as it would have (``_rng``: ``RNGState``).

Above ``_io`` and beside ``_torch``: it builds on the core's declarations, and imports numpy and
torch only inside its functions, so ``import callstate`` imports neither.
"""

from ._rng import RNGState as RNGState

__all__ = ["RNGState"]
