"""The encoding layer: states <-> bytes, and nothing about callbacks.

The data codec (``_codec``: a fixed set of types, no pickle on the way in), arrays and tensors
(``_arrays``, ``_tensors``), registered types (``_types``), the container format (``_format``),
writing entries (``_writing``) and reading them back within one ``Allowance`` per read
(``_reading``, ``_allowance``), a state kept undecoded (``_encoded``, ``_parts``), and which
implementation of the data codec runs, compiled or the Python reference (``_implementation``). Imports only
``_support`` and ``callstate.errors``; ``import callstate`` loads no part of the codec itself
(its standard-library types are imported on the first save or read).
"""

from ._allowance import ALLOC_FACTOR as ALLOC_FACTOR
from ._allowance import ALLOC_SLACK as ALLOC_SLACK
from ._allowance import HASH_FACTOR as HASH_FACTOR
from ._allowance import HASH_SLACK as HASH_SLACK
from ._allowance import Allowance as Allowance
from ._arrays import CAPTURE as CAPTURE
from ._encoded import EncodedState as EncodedState
from ._format import FOOTER as FOOTER
from ._format import KEPT as KEPT
from ._format import MAGIC as MAGIC
from ._format import Entry as Entry
from ._format import EntryInfo as EntryInfo
from ._format import Source as Source
from ._format import Window as Window
from ._format import open_kept as open_kept
from ._format import open_regular as open_regular
from ._format import open_source as open_source
from ._format import parse as parse
from ._format import write_container as write_container
from ._implementation import codec_implementation as codec_implementation
from ._implementation import describe as describe_codec
from ._parts import chained_crc as chained_crc
from ._parts import new_buffer as new_buffer
from ._reading import decode_parts as decode_parts
from ._reading import encoded_entries as encoded_entries
from ._reading import recognised as recognised
from ._reading import verify as verify
from ._tensors import rebuild_tensor as rebuild_tensor
from ._tensors import reduce_tensor as reduce_tensor
from ._types import register_type as register_type
from ._types import unregister_type as unregister_type
from ._writing import encode_entries as encode_entries

__all__ = [
    "ALLOC_FACTOR",
    "ALLOC_SLACK",
    "Allowance",
    "CAPTURE",
    "EncodedState",
    "Entry",
    "EntryInfo",
    "FOOTER",
    "HASH_FACTOR",
    "HASH_SLACK",
    "KEPT",
    "MAGIC",
    "Source",
    "Window",
    "chained_crc",
    "codec_implementation",
    "decode_parts",
    "describe_codec",
    "encode_entries",
    "encoded_entries",
    "new_buffer",
    "open_kept",
    "open_regular",
    "open_source",
    "parse",
    "rebuild_tensor",
    "recognised",
    "reduce_tensor",
    "register_type",
    "unregister_type",
    "verify",
    "write_container",
]
