"""Where pickles of callstate 0.1 find the function that rebuilds a tensor: keep this path.

Format version 1 files pickle each tensor as a call to ``callstate._tensors.rebuild_tensor`` (see
tests/golden/v1/arrays.callstate), so that name must stay importable here, whatever the layout.
"""

from ._encoding import rebuild_tensor as rebuild_tensor

__all__ = ["rebuild_tensor"]
