#!/usr/bin/env bash
# Fuzz callstate's readers for a bounded time: fuzz/run.sh [SECONDS [EXTRA LIBFUZZER FLAGS...]]
#
# Runs each fuzz target (atheris) in turn, SECONDS seconds in all (default 60) shared equally among
# them: fuzz_read.py (callstate.read), fuzz_torch.py (the torch pre-scan), fuzz_inspect.py (inspect's
# output). Each runs on its own copy of its seed corpus (fuzz/corpus_<name>/ if there is one, else
# fuzz/corpus/, which is fuzz_read's) in a temp dir (the repo is never written), with a 1 s
# per-input timeout, a memory cap and its dictionary (fuzz/<target>.dict, else fuzz/callstate.dict).
# Exits 0 if nothing was found; otherwise non-zero, after printing, for each failing target, each
# crashing input's path and a hex dump of its first bytes (the temp dir, with the full logs and the
# new corpora, is kept). Works without a terminal or stdin (CI=true); uses .venv/bin/python if
# present, else $PYTHON or python3. Environment: FUZZ_TARGETS (the targets to run, space-separated,
# default all three), RSS_LIMIT_MB (libFuzzer's -rss_limit_mb, default 2048), FUZZ_VERBOSE=1 (stream
# libFuzzer's output instead of printing its tail), KEEP_FUZZ_DIR=1 (keep the temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-60}
[ $# -gt 0 ] && shift
case $seconds in
    '' | *[!0-9]*) echo "usage: fuzz/run.sh [SECONDS [LIBFUZZER FLAGS...]]" >&2; exit 2 ;;
esac
if [ -x .venv/bin/python ]; then py=.venv/bin/python; else py=${PYTHON:-python3}; fi
rss_limit_mb=${RSS_LIMIT_MB:-2048}
if ! "$py" -c "import atheris" 2> /dev/null; then
    echo "fuzz/run.sh: atheris is not installed for $py; install it with: $py -m pip install atheris" >&2
    exit 2
fi

targets=(fuzz_read fuzz_torch fuzz_inspect)
if [ -n "${FUZZ_TARGETS:-}" ]; then read -r -a targets <<< "$FUZZ_TARGETS"; fi
for target in "${targets[@]}"; do
    if [ ! -f "fuzz/$target.py" ]; then
        echo "fuzz/run.sh: no fuzz target fuzz/$target.py" >&2
        exit 2
    fi
done
share=$((seconds / ${#targets[@]}))
[ "$share" -ge 1 ] || share=1

work=$(mktemp -d "${TMPDIR:-/tmp}/callstate-fuzz.XXXXXX")
# A hard stop well past each target's share, in case the fuzzer itself wedges (Python start-up and
# seed loading take a few seconds; libFuzzer's -timeout handles slow inputs).
limit=()
if command -v timeout > /dev/null; then limit=(timeout --kill-after=30 $((share + 120))); fi

failed=0
for target in "${targets[@]}"; do
    dir=$work/$target
    mkdir -p "$dir/corpus" "$dir/artifacts"
    seeds=fuzz/corpus
    if [ "$target" != fuzz_read ] && [ -d "fuzz/corpus_${target#fuzz_}" ]; then seeds=fuzz/corpus_${target#fuzz_}; fi
    cp -R "$seeds/." "$dir/corpus/"
    dict=fuzz/callstate.dict
    if [ -f "fuzz/$target.dict" ]; then dict=fuzz/$target.dict; fi
    log=$dir/fuzz.log
    flags=(
        "$dir/corpus"
        -max_total_time="$share"
        -timeout=1
        -rss_limit_mb="$rss_limit_mb"
        -max_len=131072
        -dict="$dict"
        -artifact_prefix="$dir/artifacts/"
        -print_final_stats=1
        "$@"
    )

    echo "fuzz/run.sh: fuzzing with $target for ${share}s in $dir ($py)"
    status=0
    if [ "${FUZZ_VERBOSE:-0}" = 1 ]; then
        ${limit[@]+"${limit[@]}"} "$py" "fuzz/$target.py" "${flags[@]}" < /dev/null 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
    else
        ${limit[@]+"${limit[@]}"} "$py" "fuzz/$target.py" "${flags[@]}" < /dev/null > "$log" 2>&1 || status=$?
    fi

    found=()
    for f in "$dir/artifacts"/*; do
        [ -f "$f" ] && found+=("$f")
    done

    grep -E '^(stat::|Done )' "$log" || true
    if [ "$status" -eq 0 ] && [ ${#found[@]} -eq 0 ]; then
        echo "fuzz/run.sh: $target: no failure in ${share}s"
        continue
    fi

    failed=1
    echo "fuzz/run.sh: $target FAILED (fuzzer exit status $status); last lines of $log:"
    tail -n 60 "$log"
    for f in ${found[@]+"${found[@]}"}; do
        echo
        echo "fuzz/run.sh: $target: failing input: $f ($(wc -c < "$f") bytes); first 256 bytes:"
        "$py" - "$f" << 'EOF'
import sys
data = open(sys.argv[1], "rb").read()
for i in range(0, min(len(data), 256), 16):
    row = data[i : i + 16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
    print(f"{i:08x}  {row.hex(' '):<47}  |{text}|")
print("as a Python literal:", repr(data[:256]))
EOF
        echo "reproduce (from the repo root): $py fuzz/$target.py $f"
    done
done

if [ "$failed" -eq 0 ]; then
    echo "fuzz/run.sh: no failure in ${seconds}s (${targets[*]})"
    [ "${KEEP_FUZZ_DIR:-0}" = 1 ] || rm -rf "$work"
    exit 0
fi
echo "fuzz/run.sh: temp dir kept: $work"
exit 1
