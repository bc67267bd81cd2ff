"""Importing and using the core pulls in neither torch, lightning, numpy nor the adapters."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

HEAVY = ("torch", "lightning", "pytorch_lightning", "numpy", "transformers", "accelerate", "keras")
ADAPTERS = (
    "callstate.lightning",
    "callstate.loop",
    "callstate.distributed",
    "callstate.accelerate",
    "callstate.transformers",
    "callstate.orbax",
    "callstate.keras",
    "callstate.__main__",
)


def run(code: str) -> list[str]:
    """Run ``code`` in a fresh interpreter and return the printed lines."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=60, check=True
    )
    return out.stdout.split()


def test_import_is_light() -> None:
    """``import callstate`` imports neither torch, lightning nor numpy, nor any adapter module."""
    loaded = run(
        f"""
        import sys
        import callstate
        for name in {HEAVY + ADAPTERS!r}:
            if name in sys.modules:
                print(name)
        """
    )
    assert loaded == []


def test_core_round_trip_is_light() -> None:
    """Registering, saving and restoring callbacks in memory still imports none of them."""
    loaded = run(
        f"""
        import sys
        import callstate

        @callstate.stateful(identity=("what",), state=("n",))
        class C:
            def __init__(self, what):
                self.what, self.n = what, 1

        registry = callstate.CallbackRegistry([C("a"), C("b")])
        states = registry.state_dict()
        callstate.CallbackRegistry([C("b"), C("a")]).load_state_dict(states, strict=True)
        callstate.state_key(C("x"))
        for name in {HEAVY + ADAPTERS!r}:
            if name in sys.modules:
                print(name)
        """
    )
    assert loaded == []


def test_adapters_are_attributes_imported_on_first_access() -> None:
    """After ``import callstate``, callstate.loop and .distributed work, each imported when first used."""
    loaded = run(
        """
        import sys
        import callstate
        print("loop" in dir(callstate), "callstate.loop" in sys.modules)
        print(callstate.loop.Callbacks.__module__)
        print(callstate.distributed.rank_key("k", 1), "torch" in sys.modules)
        """
    )
    assert loaded == ["True", "False", "callstate.loop", "k@rank1", "False"]


def test_the_lightning_adapter_is_an_attribute_too() -> None:
    """callstate.lightning, written so in the README, works after ``import callstate`` (Lightning installed)."""
    pytest.importorskip("lightning.pytorch")
    loaded = run(
        """
        import callstate
        print(callstate.lightning.CallstateCallback.__name__)
        """
    )
    assert loaded == ["CallstateCallback"]


@pytest.mark.parametrize(
    ("adapter", "package", "extra"),
    [("accelerate", "accelerate", "accelerate"), ("transformers", "transformers", "transformers")],
)
def test_an_adapter_without_its_framework_says_what_to_install(adapter: str, package: str, extra: str) -> None:
    """callstate.accelerate/.transformers without their package: an ImportError naming the install command."""
    loaded = run(
        f"""
        import sys
        sys.modules[{package!r}] = None  # not installed
        try:
            import callstate.{adapter}
        except ImportError as exc:
            print(str(exc).replace(" ", "_"))
        """
    )
    assert loaded == [
        f"callstate.{adapter}_needs_{package},_which_is_not_installed:_pip_install_'callstate[{extra}]'."
    ]


def test_an_unknown_attribute_still_raises_attribute_error() -> None:
    """A name that is neither exported nor an adapter raises AttributeError, as for any module."""
    import callstate

    try:
        callstate.nope  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "has no attribute 'nope'" in str(exc)
    else:
        raise AssertionError("callstate.nope did not raise")
