"""The security corpus: crafted pickles that must raise UnsafeCheckpointError and run nothing."""

from __future__ import annotations

import io
import marshal
import os
import pathlib
import pickle
import struct
import types
import zlib
from collections.abc import Callable
from typing import Any

import pytest

import callstate
from callstate import _format


def container(payload: bytes, key: str = "Victim") -> bytes:
    """Wrap a raw pickle payload into a well-formed callstate file with valid checksums."""
    out = io.BytesIO()
    _format.write_container(out, [(key, "pickle", (payload,), zlib.crc32(payload))], {})
    return out.getvalue()


class Reduce:
    """Pickles as a call of ``func(*args)``: the shape of every pickle exploit."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return self.func, self.args


class Builder:
    """Not allowlisted; its __setstate__ would touch the canary (BUILD must never reach it)."""

    canary = ""

    def __setstate__(self, state: Any) -> None:
        pathlib.Path(state["canary"]).touch()


def g(module: str, name: str) -> bytes:
    """GLOBAL opcode."""
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def s(text: str) -> bytes:
    """BINUNICODE opcode."""
    raw = text.encode()
    return b"X" + struct.pack("<I", len(raw)) + raw


def b(data: bytes) -> bytes:
    """BINBYTES opcode."""
    return b"B" + struct.pack("<I", len(data)) + data


def call(func: bytes, *args: bytes) -> bytes:
    """MARK, the arguments, TUPLE, REDUCE: ``func(*args)``."""
    return func + b"(" + b"".join(args) + b"tR"


def exploits(canary: str) -> dict[str, bytes]:
    """Return the corpus: name -> pickle bytes, each of which would create ``canary`` if run."""
    cmd = f"touch {canary}"
    code = compile(f"open({canary!r}, 'w').close()", "<x>", "exec")
    corpus = {
        "os.system REDUCE+GLOBAL (protocol 0)": b"cos\nsystem\n(V" + cmd.encode() + b"\ntR.",
        "os.system GLOBAL (protocol 2)": pickle.dumps(Reduce(os.system, cmd), protocol=2),
        "os.system STACK_GLOBAL (protocol 4)": pickle.dumps(Reduce(os.system, cmd), protocol=4),
        "posix.system": b"cposix\nsystem\n(V" + cmd.encode() + b"\ntR.",
        "builtins.eval": pickle.dumps(Reduce(eval, f"__import__('os').system({cmd!r})"), protocol=4),
        "builtins.exec": pickle.dumps(Reduce(exec, f"__import__('os').system({cmd!r})"), protocol=4),
        "builtins.getattr chain": call(
            call(g("builtins", "getattr"), call(g("builtins", "__import__"), s("os")), s("system")), s(cmd)
        )
        + b".",
        "builtins.__import__": pickle.dumps(Reduce(__import__, "os"), protocol=4),
        "importlib.import_module": b"cimportlib\nimport_module\n(Vos\ntR.",
        "pkgutil.resolve_name": b"cpkgutil\nresolve_name\n(Vos:system\ntR(V" + cmd.encode() + b"\ntR.",
        "operator.attrgetter": call(
            call(g("operator", "attrgetter"), s("system")), call(g("builtins", "__import__"), s("os"))
        )
        + b".",
        "operator.methodcaller": call(
            call(g("operator", "methodcaller"), s("system"), s(cmd)), call(g("builtins", "__import__"), s("os"))
        )
        + b".",
        "marshal.loads + types.FunctionType": call(
            call(g("types", "FunctionType"), call(g("marshal", "loads"), b(marshal.dumps(code))), b"}")
        )
        + b".",
        "pickle nested inside bytes, loaded by pickle.loads": call(
            g("pickle", "loads"), b(pickle.dumps(Reduce(os.system, cmd)))
        )
        + b".",
        "_pickle.loads": call(g("_pickle", "loads"), b(pickle.dumps(Reduce(os.system, cmd)))) + b".",
        "subprocess.call": pickle.dumps(Reduce(__import__("subprocess").call, ["touch", canary])),
        "BUILD on a type that is not allowlisted": pickle.dumps(_built(canary), protocol=4),
        "persistent id (BINPERSID)": b"\x80\x04\x8c\x04evil\x94Q.",
        "persistent id (PERSID)": b"Pevil\n.",
    }
    return corpus


def _built(canary: str) -> Builder:
    obj = Builder.__new__(Builder)
    obj.__dict__["canary"] = canary
    return obj


# The __dict__ of _built's object is its pickled state, so BUILD would call Builder.__setstate__.
Builder.__getstate__ = lambda self: dict(self.__dict__)  # type: ignore[method-assign]

CORPUS_NAMES = sorted(exploits("x"))


@callstate.stateful(identity=("name",))
class Victim:
    def __init__(self) -> None:
        self.name = "v"
        self.value = "untouched"

    def state_dict(self) -> Any:
        return self.value

    def load_state_dict(self, state: Any) -> None:
        self.value = state


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_exploit_is_refused_and_runs_nothing(name: str, tmp_path: pathlib.Path) -> None:
    """Each crafted pickle raises UnsafeCheckpointError naming a global (or persistent id); no canary."""
    canary = tmp_path / "canary"
    data = container(exploits(str(canary))[name])
    with pytest.raises(callstate.UnsafeCheckpointError) as e:
        callstate.read(data)
    assert e.value.key == "Victim"
    assert e.value.global_name
    assert e.value.global_name in str(e.value)
    assert isinstance(e.value, pickle.UnpicklingError)
    assert not canary.exists()


@pytest.mark.parametrize("name", CORPUS_NAMES)
def test_exploit_in_a_file_restores_no_callback(name: str, tmp_path: pathlib.Path) -> None:
    """Loading a crafted file into a registry changes no callback and runs nothing."""
    canary = tmp_path / "canary"
    path = tmp_path / "evil.callstate"
    path.write_bytes(container(exploits(str(canary))[name], key="Victim{'name': 'v'}"))
    victim = Victim()
    with pytest.raises(callstate.UnsafeCheckpointError):
        callstate.load([victim], path)
    assert victim.value == "untouched"
    assert not canary.exists()


def test_plain_bytes_holding_a_pickle_stay_bytes(tmp_path: pathlib.Path) -> None:
    """A pickle stored as bytes inside a state is returned as bytes and never unpickled."""
    canary = tmp_path / "canary"
    inner = pickle.dumps(Reduce(os.system, f"touch {canary}"))
    out = callstate.read(callstate.dumps({"k": {"blob": inner}}))
    assert out == {"k": {"blob": inner}}
    assert not canary.exists()


def test_defaultdict_with_a_forbidden_factory_is_refused() -> None:
    """A defaultdict whose factory is not allowlisted (os.getcwd) is refused."""
    import collections

    payload = pickle.dumps(collections.defaultdict(os.getcwd), protocol=4)
    with pytest.raises(callstate.UnsafeCheckpointError, match=r"posix\.getcwd"):
        callstate.read(container(payload))


def test_unsafe_message_names_the_allow_call() -> None:
    """The message names the global and the callstate.allow(...) call that would admit it."""
    payload = pickle.dumps(Reduce(os.system, "true"))
    with pytest.raises(callstate.UnsafeCheckpointError, match=r"posix\.system.*callstate\.allow\(posix\.system\)"):
        callstate.read(container(payload))


def test_trusted_runs_plain_pickle(tmp_path: pathlib.Path) -> None:
    """With trusted=True the caller takes responsibility: plain pickle runs the payload."""
    canary = tmp_path / "canary"
    payload = pickle.dumps(Reduce(pathlib.Path.touch, canary))
    callstate.read(container(payload), trusted=True)
    assert canary.exists()


def _all_exploit_globals() -> list[Callable[..., Any]]:
    return [os.system, eval, exec, getattr, __import__, marshal.loads, types.FunctionType, pickle.loads]


@pytest.mark.parametrize("obj", _all_exploit_globals())
def test_allow_will_not_admit_exploit_globals(obj: Callable[..., Any]) -> None:
    """No exploit in the corpus can be re-enabled through callstate.allow()."""
    with pytest.raises(callstate.AllowlistError):
        callstate.allow(obj)
