"""The core layer: callbacks <-> states, and nothing about bytes or files.

Keys (``_keys``, Lightning's format), declarations (``_spec``, ``_stateful``), versions and
migrations (``_versions``), the registry (``_registry``), the restore transaction
(``_transaction``: the only code that calls ``load_state_dict``), private copies (``_snapshot``)
and callbacks in messages (``_portrait``). The front ends' seam is ``CallbackRegistry``'s
``states_to_write``/``states_to_split``/``members``/``begin_restore``, with the records ``Saved``,
``Member``, ``RestoreTransaction`` and ``RestoreReport``. Imports ``_encoding`` (a state kept
encoded), ``_support`` and ``callstate.errors``.
"""

from ._identify import aliases_of as aliases_of
from ._identify import identify as identify
from ._keys import MANIFEST_KEY as MANIFEST_KEY
from ._keys import RANK_SUFFIX as RANK_SUFFIX
from ._keys import identity_text as identity_text
from ._keys import key_text as key_text
from ._keys import parse_key as parse_key
from ._keys import state_key as state_key
from ._registry import CallbackRegistry as CallbackRegistry
from ._registry import as_registry as as_registry
from ._registry import as_states as as_states
from ._relocate import Relocation as Relocation
from ._relocate import relocation_of as relocation_of
from ._snapshot import own as own
from ._snapshot import share_objects as share_objects
from ._spec import Stateful as Stateful
from ._spec import declare_class as declare_class
from ._spec import field as field
from ._spec import is_stateful as is_stateful
from ._spec import spec_of as spec_of
from ._stateful import stateful as stateful
from ._transaction import Member as Member
from ._transaction import RestoreReport as RestoreReport
from ._transaction import RestoreTransaction as RestoreTransaction
from ._transaction import Saved as Saved
from ._transaction import match as match
from ._versions import VERSIONS_KEY as VERSIONS_KEY
from ._versions import Plan as Plan
from ._versions import checked_versions as checked_versions
from ._versions import classes_named as classes_named
from ._versions import entry_version as entry_version
from ._versions import info_version as info_version
from ._versions import migration as migration
from ._versions import plan_all as plan_all
from ._versions import rank_base as rank_base
from ._versions import refuse_entry as refuse_entry
from ._versions import run as run
from ._versions import saved_version as saved_version
from ._versions import split as split
from ._versions import stamp as stamp
from ._versions import version_for as version_for
from ._versions import version_of as version_of
from ._versions import versions_problem as versions_problem

__all__ = [
    "CallbackRegistry",
    "MANIFEST_KEY",
    "Member",
    "Plan",
    "RANK_SUFFIX",
    "Relocation",
    "RestoreReport",
    "RestoreTransaction",
    "Saved",
    "Stateful",
    "aliases_of",
    "VERSIONS_KEY",
    "as_registry",
    "as_states",
    "checked_versions",
    "classes_named",
    "declare_class",
    "entry_version",
    "field",
    "identify",
    "identity_text",
    "info_version",
    "is_stateful",
    "key_text",
    "match",
    "migration",
    "own",
    "parse_key",
    "plan_all",
    "rank_base",
    "refuse_entry",
    "relocation_of",
    "run",
    "saved_version",
    "share_objects",
    "spec_of",
    "split",
    "stamp",
    "state_key",
    "stateful",
    "version_for",
    "version_of",
    "versions_problem",
]
