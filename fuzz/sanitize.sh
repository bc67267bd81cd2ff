#!/usr/bin/env bash
# The compiled decoder under AddressSanitizer and UndefinedBehaviorSanitizer: fuzz/sanitize.sh [SECONDS]
#
# Builds callstate/_encoding/_cdecode.c with clang (-fsanitize=address,undefined, every UB report
# fatal, libFuzzer's coverage hooks) into a copy of the package in a temp dir (the repo is never
# written), then, with the ASan runtime preloaded (ASAN_OPTIONS=detect_leaks=0: CPython's own
# allocations are not leaks):
#   1. decodes every seed of fuzz/corpus/ with both decoders, failing on any disagreement
#      (tests/cdecode_diff.py compares them), and every hostile payload of tests/test_security.py;
#   2. runs the differential fuzz target fuzz/fuzz_codec_diff.py for SECONDS (default 60) on a copy
#      of fuzz/corpus/, -timeout=1 per input.
# Exits non-zero on any sanitizer report, disagreement or fuzzer finding (the temp dir is kept).
# Environment: CLANG (default clang-14, else clang), PYTHON (default .venv/bin/python, else python3).
# Where neither clang is found, running as root on Debian, it installs clang-14 and
# libclang-rt-14-dev with apt-get (CI's fresh machines); elsewhere it says what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
case $seconds in
    '' | *[!0-9]*) echo "usage: fuzz/sanitize.sh [SECONDS]" >&2; exit 2 ;;
esac
if [ -x .venv/bin/python ]; then py=${PYTHON:-.venv/bin/python}; else py=${PYTHON:-python3}; fi
cc=${CLANG:-}
if [ -z "$cc" ] && ! command -v clang-14 > /dev/null && ! command -v clang > /dev/null \
    && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    # A fresh Debian machine, as root (CI): take clang-14 and its sanitizer runtimes from Debian.
    echo "fuzz/sanitize.sh: no clang here; installing Debian's clang-14 and libclang-rt-14-dev"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq > /dev/null
    apt-get install -y -qq clang-14 libclang-rt-14-dev > /dev/null
fi
if [ -z "$cc" ]; then
    if command -v clang-14 > /dev/null; then cc=clang-14; else cc=clang; fi
fi
if ! command -v "$cc" > /dev/null; then
    echo "fuzz/sanitize.sh: no clang ($cc); install clang and its sanitizer runtimes" \
        "(on Debian, as root: apt-get install clang-14 libclang-rt-14-dev)" >&2
    exit 2
fi
runtime=$("$cc" -print-file-name=libclang_rt.asan-x86_64.so)
if [ ! -f "$runtime" ]; then
    echo "fuzz/sanitize.sh: $cc has no AddressSanitizer runtime ($runtime)" >&2
    exit 2
fi

work=$(mktemp -d "${TMPDIR:-/tmp}/callstate-sanitize.XXXXXX")
mkdir -p "$work/pkg" "$work/corpus" "$work/artifacts"
cp -R callstate "$work/pkg/"
rm -f "$work"/pkg/callstate/_encoding/*.so "$work"/pkg/callstate/_encoding/*.pyd
include=$("$py" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
suffix=$("$py" -c "import sysconfig; print(sysconfig.get_config_var('EXT_SUFFIX'))")
"$cc" -shared -fPIC -O1 -g -fno-omit-frame-pointer -Wall -Wextra -Werror \
    -fsanitize=address,undefined,fuzzer-no-link -fno-sanitize-recover=all -shared-libsan \
    -I"$include" callstate/_encoding/_cdecode.c -o "$work/pkg/callstate/_encoding/_cdecode$suffix"
echo "fuzz/sanitize.sh: built the decoder with ASan and UBSan in $work"

export PYTHONPATH="$work/pkg:$PWD/tests${PYTHONPATH:+:$PYTHONPATH}"
export LD_PRELOAD="$runtime"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export OMP_NUM_THREADS=1

repo=$PWD
case $py in /*) ;; */*) py=$repo/$py ;; esac
status=0
# From the temp dir: the script's sys.path[0] is the current directory, which must not be the repo's.
(cd "$work" && "$py" - "$repo") << 'EOF' || status=$?
# Every seed and every hostile payload of the test suite, through both decoders.
import pathlib, sys
import atheris  # noqa: F401 - resolves the coverage hooks the sanitized build calls
from callstate._encoding import _cdecode
assert "callstate-sanitize" in _cdecode.__file__, _cdecode.__file__
sys.path.insert(0, sys.argv[1] + "/fuzz")
from fuzz_codec_diff import payloads
from cdecode_diff import disagreement
import test_security

repo = pathlib.Path(sys.argv[1])
inputs = [(p.name, p.read_bytes()) for p in sorted((repo / "fuzz" / "corpus").iterdir())]
found = 0
for name, data in inputs:
    for stream, buffers, trusted in payloads(data):
        problem = disagreement(stream, buffers, bound_memory=not trusted)
        if problem:
            print(f"seed {name}: {problem}")
            found += 1
# Each hostile payload through the sanitized decoder alone (tests/test_cdecode_hostile.py compares
# them with the reference): the reference's share of the time is the larger, and not under test here.
cases = [c for c in test_security.CASES if c.codec == "data"]
for case in cases:
    try:
        _cdecode.decode(case.parts[0], [bytearray(b) for b in case.parts[1:]])
    except Exception:  # what it raises is compared with the reference's in tests/test_cdecode_hostile.py
        pass
print(f"fuzz/sanitize.sh: {len(inputs)} seeds and {len(cases)} hostile payloads decoded, {found} disagreements")
sys.exit(1 if found else 0)
EOF

if [ "$status" -eq 0 ]; then
    cp -R fuzz/corpus/. "$work/corpus/"
    "$py" fuzz/fuzz_codec_diff.py "$work/corpus" -max_total_time="$seconds" -timeout=1 -rss_limit_mb=4096 \
        -max_len=65536 -dict=fuzz/callstate.dict -artifact_prefix="$work/artifacts/" -print_final_stats=1 \
        < /dev/null > "$work/fuzz.log" 2>&1 || status=$?
    grep -E '^(stat::|Done )' "$work/fuzz.log" || true
    if ls "$work/artifacts"/* > /dev/null 2>&1; then status=1; fi
    if [ "$status" -ne 0 ]; then tail -n 60 "$work/fuzz.log"; fi
fi

if [ "$status" -eq 0 ]; then
    echo "fuzz/sanitize.sh: no sanitizer report and no disagreement in ${seconds}s"
    rm -rf "$work"
    exit 0
fi
echo "fuzz/sanitize.sh: FAILED (status $status); temp dir kept: $work"
exit 1
