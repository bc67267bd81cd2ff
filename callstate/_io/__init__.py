"""The I/O layer: where states are written and read, over the layers below.

Callstate files, atomically (``_files``) and in the background (``_async``); the per-rank layout
(``_ranks``) and process groups (``_group``); where files live, a local path or an fsspec URL
(``_storage``); torch checkpoints are
the room above (``_torch``).
"""

from ._async import capture as capture
from ._async import save_async as save_async
from ._async import write_in_background as write_in_background
from ._files import atomic_write as atomic_write
from ._files import describe_entries as describe_entries
from ._files import dumps as dumps
from ._files import inspect as inspect
from ._files import load as load
from ._files import loads as loads
from ._files import read as read
from ._files import read_meta as read_meta
from ._files import save as save
from ._group import Group as Group
from ._group import agree as agree
from ._group import group_of as group_of
from ._group import portable as portable
from ._group import rebuild as rebuild
from ._ranks import LAYOUT_VERSION as LAYOUT_VERSION
from ._ranks import Policy as Policy
from ._ranks import RankRead as RankRead
from ._ranks import add_gathered as add_gathered
from ._ranks import check_entries as check_entries
from ._ranks import check_policy as check_policy
from ._ranks import gather_in_place as gather_in_place
from ._ranks import manifest_entry as manifest_entry
from ._ranks import rank_key as rank_key
from ._ranks import rank_view as rank_view
from ._ranks import ranks_present as ranks_present
from ._ranks import read_manifest as read_manifest
from ._ranks import select as select
from ._ranks import split as split
from ._ranks import to_wire as to_wire
from ._storage import StorageOptions as StorageOptions
from ._storage import exists as exists
from ._storage import fetch_whole as fetch_whole
from ._storage import head as head
from ._storage import is_url as is_url
from ._storage import local_path as local_path

__all__ = [
    "Group",
    "LAYOUT_VERSION",
    "Policy",
    "StorageOptions",
    "RankRead",
    "add_gathered",
    "agree",
    "atomic_write",
    "capture",
    "check_entries",
    "check_policy",
    "describe_entries",
    "dumps",
    "exists",
    "fetch_whole",
    "gather_in_place",
    "group_of",
    "head",
    "inspect",
    "is_url",
    "load",
    "loads",
    "local_path",
    "manifest_entry",
    "portable",
    "rank_key",
    "rank_view",
    "ranks_present",
    "read",
    "read_manifest",
    "read_meta",
    "rebuild",
    "save",
    "save_async",
    "select",
    "split",
    "to_wire",
    "write_in_background",
]
