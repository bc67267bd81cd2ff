"""Fetch accelerate's own test files, at the installed accelerate's version, into a cache outside the repository.

``python tests/third_party/fetch.py`` prints the directory. pip downloads accelerate's source
distribution (``pip download --no-deps --no-binary :all:``, from the package index pip is configured
with: no host is named here) with ``--require-hashes`` against the SHA-256 pinned in ``SDIST_SHA256``
for that version, so a changed file on the index stops the run; the sdist kept in the cache is
checked against the same hash every time before anything is unpacked from it. Only ``FILES`` (the two
test files the runner runs, and accelerate's LICENSE, Apache-2.0, beside them) are unpacked; their
helpers (``accelerate.test_utils``) ship in the installed accelerate itself.

The cache is ``$CALLSTATE_THIRD_PARTY_CACHE``, else ``$XDG_CACHE_HOME/callstate-third-party``, else
``~/.cache/callstate-third-party``, with one ``accelerate-<version>/`` directory per version: outside
``tests/``, so the project's own ``pytest`` never collects accelerate's tests. Installing another
accelerate version needs its hash added below (``pip hash`` of the sdist, checked against the
index's page) and ``constraints.txt`` moved with it.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import tempfile
from importlib import metadata
from pathlib import Path

PACKAGE = "accelerate"
SDIST_SHA256 = {
    "1.16.0": "43c446b9affb145220946a63fe32e14e968fcfca645d25b5f1f3fdbc375657ae",
}
FILES = ("tests/test_state_checkpointing.py", "tests/test_accelerator.py", "LICENSE")
# The cache directory holds this file, so pytest takes it as the rootdir's configuration: none of
# this project's (warnings as errors, testpaths) applies to accelerate's tests.
PYTEST_INI = "[pytest]\n"


class FetchError(Exception):
    """The sdist could not be fetched or does not match its pinned hash."""


def cache_root() -> Path:
    """Return the directory that holds one ``<package>-<version>/`` directory per fetched version."""
    explicit = os.environ.get("CALLSTATE_THIRD_PARTY_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "callstate-third-party"


def installed_version() -> str:
    """Return the version of accelerate installed in this interpreter."""
    return metadata.version(PACKAGE)


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(version: str, expected: str, into: Path) -> Path:
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as scratch:
        requirement = Path(scratch) / "requirement.txt"
        requirement.write_text(f"{PACKAGE}=={version} --hash=sha256:{expected}\n", encoding="utf-8")
        command = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:",
            "--require-hashes", "-r", str(requirement), "-d", str(into),
        ]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise FetchError(f"pip download of {PACKAGE}=={version} failed:\n{result.stdout}{result.stderr}")
    found = sorted(into.glob(f"{PACKAGE}-{version}.tar.gz"))
    if not found:
        raise FetchError(f"pip download left no {PACKAGE}-{version}.tar.gz in {into}")
    return found[0]


def _unpack(sdist: Path, version: str, target: Path) -> None:
    prefix = f"{PACKAGE}-{version}/"
    with tarfile.open(sdist, "r:gz") as archive:
        for name in FILES:
            member = archive.getmember(prefix + name)
            source = archive.extractfile(member) if member.isfile() else None
            if source is None:
                raise FetchError(f"{sdist.name}: {name} is not a regular file")
            # Each file goes to a path made here from FILES, never from the archive's names.
            destination = target / name
            destination.parent.mkdir(parents=True, exist_ok=True)
            destination.write_bytes(source.read())
    (target / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")


def fetch(version: str | None = None) -> Path:
    """Return the cache directory holding accelerate's test files for ``version`` (the installed one by default).

    Downloads and checks the sdist when the cache does not hold a matching one; unpacks ``FILES``
    again every time (a few hundred kilobytes), so an edited copy in the cache never runs.

    Raises:
        FetchError: no hash is pinned for the version, pip failed, or the sdist's hash differs.
    """
    version = version or installed_version()
    expected = SDIST_SHA256.get(version)
    if expected is None:
        raise FetchError(
            f"No sdist hash is pinned for {PACKAGE} {version} (pinned: {', '.join(sorted(SDIST_SHA256))}): "
            f"add it to SDIST_SHA256 in {Path(__file__).name} (pip hash of the sdist), or install a pinned version."
        )
    target = cache_root() / f"{PACKAGE}-{version}"
    sdist = target / "sdist" / f"{PACKAGE}-{version}.tar.gz"
    if not sdist.is_file() or _sha256(sdist) != expected:
        sdist.unlink(missing_ok=True)
        sdist = _download(version, expected, target / "sdist")
    actual = _sha256(sdist)
    if actual != expected:
        raise FetchError(f"{sdist}: sha256 {actual}, pinned {expected}")
    _unpack(sdist, version, target)
    return target


if __name__ == "__main__":
    try:
        print(fetch())
    except FetchError as error:
        sys.exit(str(error))
