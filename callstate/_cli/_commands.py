"""The ``callstate`` command: inspect, diff, verify, rename, relocate, convert and migrate checkpoints."""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NoReturn

from .. import __version__
from .._checkpoints import CHECKPOINT_FILE
from .._core import (
    MANIFEST_KEY,
    VERSIONS_KEY,
    Plan,
    checked_versions,
    classes_named,
    identity_text,
    info_version,
    key_text,
    parse_key,
    plan_all,
    rank_base,
    relocation_of,
    run,
    split,
    version_for,
)
from .._encoding import KEPT, EncodedState, describe_codec
from .._io import describe_entries, is_url, read, read_meta, save
from .._support import escape, show
from .._torch import CALLBACKS, TorchFile, callbacks_of, torch_load, torch_save
from ..errors import CallstateError, ComparisonStoppedError, CorruptCheckpointError, UnsafeCheckpointError
from ._differ import Steps, differences
from ._progress import Progress, human
from ._user_modules import import_modules
from ._where import UsageError, file_size, in_place, kind, present, same, storage_options

EXIT_OK, EXIT_DIFFER, EXIT_ERROR, EXIT_INTERRUPTED = 0, 1, 2, 130

EPILOG = """\
exit status:
  0  success; diff: the files hold the same states; verify: every checksum matches
  1  diff: the files differ; verify: a checksum does not match or the file is damaged
  2  usage error, or a file that cannot be read, is not a checkpoint (verify too), is
     damaged, or needs --trusted;
     diff: the comparison stopped at its bound (steps in proportion to the files' sizes)
  130  interrupted

Files are callstate files or torch checkpoints (Lightning's .ckpt, callstate.loop's .pt); in a
torch checkpoint, the states are those of its "callbacks" entry. Nothing is unpickled beyond the
safe allowlist (callstate's, or torch.load(weights_only=True)) unless --trusted is given. A
framework checkpoint directory (Hugging Face's checkpoint-N, accelerate's) stands for the
callbacks.callstate inside it.

Files may be fsspec URLs (s3://bucket/run.callstate, gs://..., any protocol://...; fsspec and the
backend installed: pip install 'callstate[remote]' s3fs). Credentials and endpoints come from the
environment as the backend reads them (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...), and from
--storage-option KEY=VALUE (repeatable, before or after the command), passed to the backend as
storage_options: a VALUE that parses as JSON is that value (9000, true, {"region_name": "eu-west-1"}),
any other is text (--storage-option endpoint_url=http://127.0.0.1:9000). A command that writes
uploads the whole file in one call, as callstate.save does.
"""

# -- reading files --------------------------------------------------------------------------------


def _file(path: str) -> str:
    """Return the checkpoint file ``path`` names: itself, or the ``callbacks.callstate`` inside a
    framework's local checkpoint directory (Hugging Face's ``checkpoint-N``, accelerate's)."""
    if is_url(path):
        return path
    inner = os.path.join(path, CHECKPOINT_FILE)
    return inner if os.path.isdir(path) and os.path.lexists(inner) else path



def _torch_checkpoint(
    path: str, trusted: bool, so: dict[str, Any]
) -> tuple[Mapping[Any, Any], Mapping[Any, Any]]:
    """Return a torch checkpoint (torch.load, safe unless trusted) and its decoded ``"callbacks"``."""
    with Progress(f"reading {path}", file_size(path, so)).ticking():
        checkpoint = torch_load(path, trusted=trusted, storage_options=so)
    return checkpoint, callbacks_of(checkpoint, path, required=True)


def _states(path: str, trusted: bool, so: dict[str, Any]) -> tuple[dict[Any, Any], dict[Any, int]]:
    """Return ``{key: state}`` (EncodedState values for callstate files, decoded ones for torch) and
    the versions of the states not at version 1."""
    path = _file(path)
    if kind(path, so) == "callstate":
        states = read(path, trusted=trusted, lazy=True, storage_options=so)
        found = {k: info_version(v.info, path, k) for k, v in states.items()}
        return states, {k: v for k, v in found.items() if v != 1}
    checkpoint, callbacks = _torch_checkpoint(path, trusted, so)
    versions = checked_versions(checkpoint.get(VERSIONS_KEY, {}), path)  # a Lightning checkpoint's
    inside, versions_inside = split(callbacks, None, path)  # a callstate.loop checkpoint's
    return dict(inside), {**versions, **versions_inside}


# -- inspect --------------------------------------------------------------------------------------


def _callstate_rows(path: str, progress: Progress, so: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    done = 0
    for e in describe_entries(path, storage_options=so):
        done += e.size
        progress.update(done)
        row = _row(e.key, e.codec, e.size, e.checksum, e.ok, e.version)
        if e.codec != "data" and KEPT in e.info:
            # Shown apart from the file's own pickles: --trusted does not decode it (trust_kept).
            row["codec"] = f"{e.codec} (kept)"
            row["kept"] = e.info[KEPT]
        rows.append(row)
    progress.update(progress.total, force=True)
    return rows


def _torch_rows(
    path: str, progress: Progress, so: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Return the rows of a torch checkpoint's callbacks, and its damaged records outside them."""
    tf = TorchFile(path, so)
    try:
        bad = tf.bad_records(progress.update)
    finally:
        tf.close()
    progress.update(progress.total, force=True)
    rows = []
    for key, refs in tf.entries.items():
        ok = not any(r.key in bad for r in refs)
        rows.append(_row(key, "torch", tf.sizes[key], None, ok, version_for(tf.versions, key) or 1))
    claimed = {r.key for refs in tf.entries.values() for r in refs}
    return rows, sorted(tf.records[k] for k in bad - claimed)


def _row(
    key: Any, codec: str, size: int, checksum: str | None, ok: bool, version: int
) -> dict[str, Any]:
    rank = None
    if key in (MANIFEST_KEY, VERSIONS_KEY):  # callstate's own records, not a callback's state
        cls, identity = "(callstate)", None
    else:
        base = rank_base(key) if isinstance(key, str) else key
        if base != key:  # a per-rank state, key@rank<n>: its class and identity are those of key
            rank = int(key[len(base) + len("@rank") :])
        cls, identity = parse_key(base)
    return {
        "key": key if isinstance(key, str) else key_text(key),
        "class": cls,
        "identity": identity,
        "rank": rank,
        "codec": codec,
        "size": size,
        "checksum": checksum,
        "ok": ok,
        "version": version,
    }


def inspect_rows(
    path: str, progress: Progress | None = None, storage_options: dict[str, Any] | None = None
) -> tuple[str, list[dict[str, Any]], list[str]]:
    """Return what ``callstate inspect`` shows of a file (or remote object, reached with
    ``storage_options``): its kind, its rows, its damaged records outside ``"callbacks"`` (a torch
    checkpoint's)."""
    so = dict(storage_options or {})
    found = kind(path, so)
    if progress is None:
        progress = Progress(f"checking {path}", 0)
    outside: list[str] = []
    try:
        if found == "callstate":
            rows = _callstate_rows(path, progress, so)
        else:
            rows, outside = _torch_rows(path, progress, so)
    finally:
        progress.close()
    return found, rows, outside


def render_inspect(
    path: str, kind: str, rows: Sequence[Mapping[str, Any]], outside: Sequence[str], *, as_json: bool
) -> str:
    """Return the text ``callstate inspect`` prints for ``inspect_rows``'s result, one line per entry.

    Every value from the file (key, class, identity, codec, record names) is shown bounded and with
    its control characters escaped (``_show``): a key is data, never a terminal command, so a crafted
    one cannot erase its line or draw a row of its own. JSON carries the keys whole, escaped as JSON.
    """
    if as_json:
        out = {
            "file": path,
            "format": kind,
            "entries": [{**r, "identity": _jsonable(r["identity"])} for r in rows],
        }
        if kind == "torch":
            out["damaged_records_outside_callbacks"] = list(outside)
        # json escapes every control character but DEL; escaped here, it is the same JSON.
        return json.dumps(out, indent=2, default=show).replace("\x7f", "\\u007f")
    bad = sum(not r["ok"] for r in rows)
    lines = [
        f"{escape(path)}: {'callstate file' if kind == 'callstate' else 'torch checkpoint'}, {len(rows)} "
        f"entr{'y' if len(rows) == 1 else 'ies'}"
        + (f", {bad} damaged" if bad else "")
        + (f"; damaged records outside 'callbacks': {_listed(outside)}" if outside else "")
    ]
    # The VERSION column shows only when a state was saved at a version other than 1.
    versioned = any(r["version"] != 1 for r in rows)
    # The RANK column shows only in a per-rank layout (callstate.distributed's key@rank<n> entries).
    ranked = any(r["rank"] is not None for r in rows)
    table: list[tuple[str, ...]] = [
        ("CLASS", "IDENTITY", *(("RANK",) if ranked else ()), "CODEC", "SIZE", "CHECKSUM",
         *(("VERSION",) if versioned else ()), "KEY")
    ]
    for r in rows:
        status = "ok" if r["ok"] else "BAD"
        check = f"{r['checksum']} {status}" if r["checksum"] else status
        version = (str(r["version"]),) if versioned else ()
        rank = (("" if r["rank"] is None else str(r["rank"])),) if ranked else ()
        shown = (escape(r["class"], 80), identity_text(r["identity"]), *rank, escape(r["codec"], 40))
        row = (*shown, human(r["size"]), check)
        table.append((*row, *version, escape(r["key"])))
    columns = len(table[0]) - 1
    widths = [max(len(row[i]) for row in table) for i in range(columns)]
    for line in table:
        size = 4 if ranked else 3  # the SIZE column, right-aligned
        cells = [line[i].ljust(widths[i]) if i != size else line[i].rjust(widths[i]) for i in range(columns)]
        lines.append("  ".join([*cells, line[-1]]))
    for r in rows:
        if "kept" in r:
            lines.append(
                f"{escape(r['key'])}: a pickle kept from {escape(r['kept'])}, which was not read with "
                "--trusted; refused even with --trusted (see callstate.read's trust_kept)"
            )
    return "\n".join(lines)


def _jsonable(value: Any) -> Any:
    """``value`` (an identity, parsed from a key) with what JSON cannot carry shown as text instead."""
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, str | bool | float):
        return value
    if type(value) is int and value.bit_length() <= 1024:
        return value
    return show(value)


def _listed(names: Sequence[str], most: int = 20) -> str:
    """Names from a file, for one line of a message: escaped, bounded, the rest counted."""
    shown = ", ".join(escape(n, 120) for n in names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def cmd_inspect(args: argparse.Namespace) -> int:
    path, so = _file(args.file), args.storage_options
    found, rows, outside = inspect_rows(path, Progress(f"checking {path}", file_size(path, so)), so)
    print(render_inspect(path, found, rows, outside, as_json=args.json))
    return EXIT_OK


# -- verify ---------------------------------------------------------------------------------------


def cmd_verify(args: argparse.Namespace) -> int:
    path, so = _file(args.file), args.storage_options
    found = kind(path, so)  # not a checkpoint at all (a text file, a directory): an error, exit 2
    try:
        progress = Progress(f"verifying {path}", file_size(path, so))
        try:
            if found == "callstate":
                rows = _callstate_rows(path, progress, so)
            else:
                rows, outside = _torch_rows(path, progress, so)
                if outside:
                    raise CorruptCheckpointError(
                        f"{escape(path)}: record(s) {_listed(outside)} outside 'callbacks' (model or "
                        "optimizer data) do not match their CRC-32; restore the file from a copy.",
                        path=path,
                    )
        finally:
            progress.close()
    except CorruptCheckpointError as exc:
        if exc.key == CALLBACKS:
            # A sound file without a 'callbacks' mapping is the wrong file, not a damaged one.
            raise
        _fail(str(exc))
        return EXIT_DIFFER
    bad = [r["key"] for r in rows if not r["ok"]]
    if bad:
        _fail(
            f"{escape(path)}: {len(bad)} of {len(rows)} entries do not match their checksums: "
            + ", ".join(show(k) for k in bad[:20])
            + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
            + ". Restore the file from a copy, or drop those entries."
        )
        return EXIT_DIFFER
    print(f"{escape(path)}: {len(rows)} entr{'y' if len(rows) == 1 else 'ies'}, every checksum matches")
    return EXIT_OK


# -- diff -----------------------------------------------------------------------------------------


def _decode(value: Any) -> Any:
    return value.decode() if isinstance(value, EncodedState) else value


def cmd_diff(args: argparse.Namespace) -> int:
    a_path, b_path, so = args.a, args.b, args.storage_options
    (a, a_versions), (b, b_versions) = _states(a_path, args.trusted, so), _states(b_path, args.trusted, so)
    only_a = [k for k in a if k not in b]
    only_b = [k for k in b if k not in a]
    common = [k for k in a if k in b]
    total = sum(v.size if isinstance(v, EncodedState) else 0 for v in a.values())
    progress = Progress(f"comparing {a_path} and {b_path}", total)
    differing: list[tuple[Any, list[str]]] = []
    done = 0
    # One allowance for the whole comparison, sized by the files: states read from a few hundred
    # bytes can share objects along 2**40 paths.
    steps = Steps.for_sizes(file_size(a_path, so), file_size(b_path, so))
    try:
        for key in common:
            x, y = a[key], b[key]
            # The same state at another version means something else: a difference too.
            versions = (a_versions.get(key, 1), b_versions.get(key, 1))
            fields = [f"version ({versions[0]} -> {versions[1]})"] if versions[0] != versions[1] else []
            if not (isinstance(x, EncodedState) and isinstance(y, EncodedState) and x == y):
                try:
                    fields += differences(_decode(x), _decode(y), steps=steps)
                except ComparisonStoppedError as exc:
                    raise ComparisonStoppedError(
                        f"{escape(a_path)} and {escape(b_path)}: comparing the states of "
                        f"{key_text(key)} stopped at {exc.where} after {exc.steps:,} steps, the most "
                        "allowed for files of these sizes: their states share objects along more paths "
                        "than their sizes justify, as a crafted file's do. Compare the two states in "
                        "Python (callstate.read both files) only if you trust both files.",
                        where=exc.where,
                        steps=exc.steps,
                    ) from None
            if fields:
                differing.append((key, fields))
            done += x.size if isinstance(x, EncodedState) else 0
            progress.update(done)
    finally:
        progress.close()
    # Keys and fields come from the files: each shown bounded and escaped, one line per key.
    for key in only_a:
        print(f"only in {escape(a_path)}: {key_text(key)}")
    for key in only_b:
        print(f"only in {escape(b_path)}: {key_text(key)}")
    for key, fields in differing:
        print(f"differ: {key_text(key)}: {', '.join(escape(f, 300) for f in fields)}")
    if only_a or only_b or differing:
        print(
            f"{len(only_a)} only in {escape(a_path)}, {len(only_b)} only in {escape(b_path)}, "
            f"{len(differing)} differ, {len(common) - len(differing)} same"
        )
        return EXIT_DIFFER
    print(f"same: {len(common)} entr{'y' if len(common) == 1 else 'ies'}, equal states")
    return EXIT_OK


# -- rename ---------------------------------------------------------------------------------------


def _check_rename(path: str, keys: Sequence[Any], old: str, new: str) -> None:
    if old == new:
        raise UsageError(f"{path}: OLD and NEW are the same key {old!r}; nothing to rename.")
    reserved = next((k for k in (old, new) if k in (VERSIONS_KEY, MANIFEST_KEY)), None)
    if reserved is not None:
        raise UsageError(
            f"{path}: {reserved!r} is the key of callstate's own entry (the states' versions, or the "
            "per-rank manifest), not of a callback's state: rename only callbacks' keys, to keys of theirs."
        )
    if old not in keys:
        close = difflib.get_close_matches(old, [k for k in keys if isinstance(k, str)], n=3, cutoff=0.5)
        hint = f" Closest: {', '.join(show(c) for c in close)}." if close else ""
        raise UsageError(f"{path}: no entry {show(old)}.{hint} List the keys with: callstate inspect {path}")
    if new in keys:
        raise UsageError(
            f"{path}: an entry {new!r} exists already; rename or drop it first, so no state is lost."
        )


def _renamed(mapping: Mapping[Any, Any], old: str, new: str) -> dict[Any, Any]:
    """Return ``mapping`` with the key ``old`` renamed, in its versions entry too (see _versions)."""
    return _versions_renamed({(new if k == old else k): v for k, v in mapping.items()}, old, new)


def _versions_renamed(mapping: Mapping[Any, Any], old: str, new: str) -> dict[Any, Any]:
    """Return ``mapping`` with ``old`` renamed in its versions entry only."""
    out = dict(mapping)
    versions = out.get(VERSIONS_KEY)
    if isinstance(versions, Mapping) and old in versions:
        out[VERSIONS_KEY] = {(new if k == old else k): v for k, v in versions.items()}
    return out


def cmd_rename(args: argparse.Namespace) -> int:
    path, old, new, so = args.file, args.old, args.new, args.storage_options
    if kind(path, so) == "callstate":
        entries = read(path, lazy=True, storage_options=so)
        _check_rename(path, list(entries), old, new)
        meta = read_meta(path, storage_options=so)
        with Progress(f"writing {path}", file_size(path, so)).ticking():
            save(_renamed(entries, old, new), path, meta=meta, storage_options=so)
    else:
        checkpoint, callbacks = _torch_checkpoint(path, args.trusted, so)
        _check_rename(path, list(callbacks), old, new)
        # A Lightning checkpoint keeps its states' versions at its top level.
        renamed = {**_versions_renamed(checkpoint, old, new), CALLBACKS: _renamed(callbacks, old, new)}
        with Progress(f"writing {path}", file_size(path, so)).ticking():
            torch_save(renamed, path, so)
    print(f"{escape(path)}: renamed {show(old)} to {show(new)}")
    return EXIT_OK


# -- relocate -------------------------------------------------------------------------------------


def _relocated(path: str, states: Mapping[Any, Any], relocation: Any) -> tuple[dict[Any, Any], int, int]:
    """Return ``states`` with their paths moved (the others kept as read), and the paths and states moved."""
    out: dict[Any, Any] = {}
    versions: dict[Any, int] = {}
    paths = moved = 0
    for key, value in states.items():
        if key in (MANIFEST_KEY, VERSIONS_KEY):
            out[key] = value
            continue
        decoded = value.decode() if isinstance(value, EncodedState) else value
        new, count = relocation.apply(decoded, key)
        if count == 0:
            out[key] = value  # kept byte for byte
            continue
        out[key], paths, moved = new, paths + count, moved + 1
        if isinstance(value, EncodedState):  # its version was in its entry's info: carry it over
            version = info_version(value.info, path, str(key))
            if version != 1:
                versions[key] = version
    if versions:
        out[VERSIONS_KEY] = {**out.get(VERSIONS_KEY, {}), **versions}
    return out, paths, moved


def cmd_relocate(args: argparse.Namespace) -> int:
    path, so = args.file, args.storage_options
    try:
        relocation = relocation_of({args.old: args.new})
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{path}: {exc}") from None
    if kind(path, so) == "callstate":
        entries = read(path, lazy=True, trusted=args.trusted, storage_options=so)
        out, paths, moved = _relocated(path, entries, relocation)
        if moved:
            meta = read_meta(path, storage_options=so)
            with Progress(f"writing {path}", file_size(path, so)).ticking():
                save(out, path, meta=meta, storage_options=so)
    else:
        checkpoint, callbacks = _torch_checkpoint(path, args.trusted, so)
        new, paths, moved = _relocated(path, callbacks, relocation)
        if moved:
            with Progress(f"writing {path}", file_size(path, so)).ticking():
                torch_save({**checkpoint, CALLBACKS: new}, path, so)
    where = f"from {show(args.old)} to {show(args.new)}"
    print(f"{escape(path)}: moved {paths} path(s) in {moved} state(s) {where}")
    return EXIT_OK


# -- convert --------------------------------------------------------------------------------------


def cmd_convert(args: argparse.Namespace) -> int:
    src, dst, so = args.input, args.output, args.storage_options
    if same(src, dst):
        raise UsageError(f"{src}: IN and OUT are the same file; convert writes a new one.")
    if not args.force and present(dst, so):
        raise UsageError(f"{dst}: exists already; pass --force to replace it.")
    if kind(src, so) == "callstate":
        states = read(src, trusted=args.trusted, storage_options=so)
        with Progress(f"writing {dst}", file_size(src, so)).ticking():
            torch_save({CALLBACKS: states}, dst, so)
        print(f"{escape(dst)}: torch checkpoint with {_count(states)} callback state(s) from {escape(src)}")
        return EXIT_OK
    checkpoint, callbacks = _torch_checkpoint(src, args.trusted, so)
    states = dict(callbacks)
    outside = checkpoint.get(VERSIONS_KEY)  # a Lightning checkpoint's, at its top level
    if isinstance(outside, Mapping):
        inside = states.get(VERSIONS_KEY)
        states[VERSIONS_KEY] = {**outside, **(inside if isinstance(inside, Mapping) else {})}
    bad = [k for k in states if not isinstance(k, str)]
    if bad:
        raise UsageError(
            f"{src}: keys {', '.join(key_text(k) for k in bad[:20])} are not strings (Lightning < 1.5 "
            "wrote class objects); load the checkpoint in Lightning and save it again first."
        )
    with Progress(f"writing {dst}", file_size(src, so)).ticking():
        save(states, dst, storage_options=so)
    print(f"{escape(dst)}: callstate file with {_count(states)} callback state(s) from {escape(src)}")
    return EXIT_OK


def _count(states: Mapping[Any, Any]) -> int:
    """Return how many callbacks' states ``states`` holds (its versions entry is none)."""
    return sum(1 for k in states if k != VERSIONS_KEY)


# -- migrate --------------------------------------------------------------------------------------


def _class_of(path: str, key: str) -> type | None:
    """Return the versioned class here whose name the key starts with, if exactly one."""
    name, _identity = parse_key(rank_base(key))
    found = classes_named(name)
    if len(found) > 1:
        where = ", ".join(f"{c.__module__}.{c.__qualname__}" for c in found)
        raise UsageError(f"{path}: entry {show(key)}: several classes named {show(name)} declare versions "
                         f"({where}).")
    return found[0] if found else None


def _migration_plans(path: str, entries: Mapping[str, EncodedState]) -> dict[str, tuple[int, int, Plan]]:
    """Return key -> (saved, current, steps) for each entry whose class here is at another version."""
    return plan_all(
        (key, cls, key, info_version(state.info, path, key))
        for key, state in entries.items()
        if (cls := _class_of(path, key)) is not None
    )


def _refuse_unknown_classes(path: str, entries: Mapping[str, Any]) -> None:
    """Without --import, refuse to call entries of classes unknown here "nothing to migrate"."""
    unknown = sorted({
        parse_key(rank_base(key))[0]
        for key in entries
        if key not in (VERSIONS_KEY, MANIFEST_KEY) and _class_of(path, key) is None
    })
    if not unknown:
        return
    named = ", ".join(show(name) for name in unknown[:3])
    if len(unknown) > 3:
        named += f" and {len(unknown) - 3} more"
    raise UsageError(
        f"{escape(path)}: cannot tell whether its states need migrating: no class of theirs is known here "
        f"({named}). Name the modules that define them: callstate migrate {escape(path)} --import MODULE."
    )


def _migrate_torch(args: argparse.Namespace, path: str, out: str, target: str) -> int:
    """``callstate migrate`` of a torch checkpoint: its callbacks' states, written back with the rest
    of the checkpoint in one atomic ``torch.save``."""
    so = args.storage_options
    checkpoint, callbacks = _torch_checkpoint(path, args.trusted, so)
    outside = checkpoint.get(VERSIONS_KEY)  # a Lightning checkpoint's, beside "callbacks"
    inside = callbacks.get(VERSIONS_KEY)  # a callstate.loop checkpoint's, inside them
    saved_versions = {**checked_versions(outside or {}, path), **checked_versions(inside or {}, path)}
    keys = [k for k in callbacks if isinstance(k, str) and k not in (VERSIONS_KEY, MANIFEST_KEY)]
    plans = plan_all(
        (key, cls, key, saved_versions.get(key, 1))
        for key in keys
        if (cls := _class_of(path, key)) is not None
    )
    if not plans and not args.imports:
        _refuse_unknown_classes(path, dict.fromkeys(keys))
    if not plans:
        counted = f"{len(keys)} entries: each at its class's version, or unknown"
        print(f"{escape(path)}: nothing to migrate ({counted})")
        return EXIT_OK
    verb = "would migrate" if args.dry_run else "migrated"
    if not args.dry_run:
        new = dict(callbacks)
        for key, (_saved, _current, steps) in plans.items():
            new[key] = run(key, steps, callbacks[key], path)
        versions: dict[Any, int] = {**saved_versions}
        versions.update({key: current for key, (_s, current, _p) in plans.items()})
        versions = {k: v for k, v in versions.items() if v != 1}
        updated = {**checkpoint, CALLBACKS: new}
        # Written where this checkpoint's kind keeps them: beside "callbacks" (Lightning, and where
        # they were already), else inside them (callstate.loop).
        if VERSIONS_KEY in checkpoint or "pytorch-lightning_version" in checkpoint:
            new.pop(VERSIONS_KEY, None)
            updated[VERSIONS_KEY] = versions
        else:
            new[VERSIONS_KEY] = versions
        with Progress(f"writing {out}", file_size(path, so)).ticking():
            torch_save(updated, target, storage_options=so)
    for key, (saved, current, _steps) in plans.items():
        print(f"{escape(out if not args.dry_run else path)}: {verb} {show(key)} from version {saved} to "
              f"{current}")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    path, so = _file(args.file), args.storage_options
    out = args.out if args.out is not None else path
    found = kind(path, so)
    if not same(out, path) and present(out, so):
        raise UsageError(f"{out}: exists already; give another --out, or remove it first.")
    # In place through a symlink: rewrite the file it names. Messages keep the name the user gave.
    target = in_place(path) if same(out, path) else out
    import_modules(args.imports)
    if found == "torch":
        return _migrate_torch(args, path, out, target)
    entries = read(path, trusted=args.trusted, lazy=True, storage_options=so)
    plans = _migration_plans(path, entries)
    if not plans and not args.imports:
        _refuse_unknown_classes(path, entries)
    if not plans:
        counted = f"{len(entries)} entries: each at its class's version, or unknown"
        print(f"{escape(path)}: nothing to migrate ({counted})")
        return EXIT_OK
    verb = "would migrate" if args.dry_run else "migrated"
    if not args.dry_run:
        states: dict[str, Any] = dict(entries)  # the others are written back byte for byte
        for key, (_saved, _current, steps) in plans.items():
            states[key] = run(key, steps, entries[key].decode(), path)
        states[VERSIONS_KEY] = {key: current for key, (_saved, current, _steps) in plans.items()}
        with Progress(f"writing {out}", file_size(path, so)).ticking():
            save(states, target, meta=read_meta(path, storage_options=so), storage_options=so)
    for key, (saved, current, _steps) in plans.items():
        print(f"{escape(out if not args.dry_run else path)}: {verb} {show(key)} from version {saved} to "
              f"{current}")
    return EXIT_OK


# -- the parser -----------------------------------------------------------------------------------


_FILE_HELP = (
    "a callstate file, a torch checkpoint (Lightning's .ckpt, callstate.loop's .pt), or a framework "
    "checkpoint directory holding callbacks.callstate (Hugging Face's checkpoint-N, accelerate's)"
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="callstate",
        description="Look into, compare, check and fix checkpoints of callback states.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # The codec in use ("c", or "python" where the extension is not built or CALLSTATE_PURE_PYTHON=1).
    version = f"callstate {__version__} (codec: {describe_codec()})"
    parser.add_argument("--version", action="version", version=version)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    trusted = _Parser(add_help=False)
    trusted.add_argument(
        "--trusted",
        action="store_true",
        help="decode anything the file holds, which can run code from it; only for files you trust",
    )
    storage_help = "an fsspec storage option for URLs, KEY=VALUE, the VALUE as JSON if it parses (repeatable)"
    # Given before the command or after it: two destinations, joined in main (a subcommand's own
    # default would otherwise replace what was given before it).
    parser.add_argument(
        "--storage-option", dest="options_before", metavar="KEY=VALUE", action="append", default=[],
        help=storage_help,
    )
    trusted.add_argument(
        "--storage-option", dest="options_after", metavar="KEY=VALUE", action="append", default=[],
        help=storage_help,
    )

    def add(name: str, help: str, func: Callable[[argparse.Namespace], int]) -> argparse.ArgumentParser:
        p = sub.add_parser(
            name,
            help=help,
            description=help,
            parents=[trusted],
            epilog="Exit statuses, and the files each command reads: callstate --help.",
        )
        p.set_defaults(func=func)
        return p

    p = add("inspect", "list the entries of a file: class, identity, codec, size, checksum", cmd_inspect)
    p.add_argument("file", metavar="FILE", help=_FILE_HELP)
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p = add("diff", "compare the states of two files (exit 0 same, 1 different)", cmd_diff)
    p.add_argument("a", metavar="A", help="the first file (" + _FILE_HELP + ")")
    p.add_argument("b", metavar="B", help="the second file, compared with A")
    p = add("verify", "check every checksum (exit 1 naming the damaged entries)", cmd_verify)
    p.add_argument("file", metavar="FILE", help=_FILE_HELP)
    p = add("rename", "rename a key in place, atomically, keeping its state's bytes", cmd_rename)
    p.add_argument("file", metavar="FILE", help=_FILE_HELP + ", rewritten in place")
    p.add_argument("old", metavar="OLD", help="the key to rename, as callstate inspect shows it")
    p.add_argument("new", metavar="NEW", help="its new key")
    p = add(
        "relocate",
        "move the paths inside the states from one place to another (a moved run), in place, atomically",
        cmd_relocate,
    )
    p.add_argument("file", metavar="FILE", help=_FILE_HELP + ", rewritten in place")
    p.add_argument("--from", dest="old", metavar="OLD", required=True, help="the place the run was in")
    p.add_argument("--to", dest="new", metavar="NEW", required=True, help="the place it is in now")
    p = add(
        "convert",
        "turn a torch checkpoint's 'callbacks' into a callstate file, or a callstate file into a "
        "torch checkpoint {'callbacks': ...}",
        cmd_convert,
    )
    p.add_argument("input", metavar="IN", help="the file to convert (" + _FILE_HELP + ")")
    p.add_argument(
        "output", metavar="OUT", help="the new file: torch for a callstate IN, else callstate"
    )
    p.add_argument("--force", action="store_true", help="replace OUT if it exists")
    p = add(
        "migrate",
        "bring every state to the version its class declares here, through its migrations; atomic, "
        "every other entry kept byte for byte",
        cmd_migrate,
    )
    p.add_argument("file", metavar="FILE", help=_FILE_HELP)
    p.add_argument("--out", metavar="OUT", help="write the migrated file there (default: FILE, in place)")
    p.add_argument("--dry-run", action="store_true", help="list what would be migrated; write nothing")
    p.add_argument(
        "--import",
        dest="imports",
        metavar="MODULE",
        action="append",
        default=[],
        help="import MODULE first: it defines the classes and registers their migrations (repeatable)",
    )
    return parser


def _fail(message: str) -> None:
    # One line, and no control character reaches the terminal, whatever a message was given.
    sys.stderr.write("callstate: " + escape(" ".join(message.split()), 20_000) + "\n")
    sys.stderr.flush()


def _unsafe_message(exc: UnsafeCheckpointError) -> str:
    message = str(exc)
    if exc.kept_from is not None:  # --trusted does not decode it: the message's own fix holds
        return message
    cut = message.find("nothing was run")
    if cut >= 0:
        message = message[: cut + len("nothing was run")] + "."
    return f"{message} Rerun with --trusted only if you trust the file."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``callstate`` command and return its exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
        if args.command is None:
            parser.print_help(sys.stderr)
            return EXIT_ERROR
        args.storage_options = storage_options([*args.options_before, *args.options_after])
        return int(args.func(args))
    except UsageError as exc:
        _fail(f"error: {exc}")
    except FileNotFoundError as exc:
        # A missing remote object's error names its URL and says what to check.
        named = str(exc) if isinstance(exc, CallstateError) else f"{escape(exc.filename)}: no such file"
        _fail(f"error: {named}")
    except BrokenPipeError:
        # The reader went away (callstate inspect ... | head): not an error worth a message.
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except UnsafeCheckpointError as exc:
        _fail(f"error: {_unsafe_message(exc)}")
    except (CallstateError, OSError) as exc:
        _fail(f"error: {exc}")
    except KeyboardInterrupt:
        _fail("interrupted")
        return EXIT_INTERRUPTED
    except Exception as exc:
        _fail(f"internal error: {type(exc).__name__}: {exc}. Please report it.")
    return EXIT_ERROR
