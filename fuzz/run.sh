#!/usr/bin/env bash
# Fuzz callstate.read for a bounded time: fuzz/run.sh [SECONDS [EXTRA LIBFUZZER FLAGS...]]
#
# Runs fuzz/fuzz_read.py (atheris) for about SECONDS seconds (default 60) on a copy of the seed
# corpus in a temp dir (the repo is never written), with a 1 s per-input timeout and a memory cap.
# Exits 0 if nothing was found; otherwise non-zero, after printing each crashing input's path and
# a hex dump of its first bytes (the temp dir, with the full log and the new corpus, is kept).
# Works without a terminal or stdin (CI=true); uses .venv/bin/python if present, else $PYTHON or
# python3. Environment: RSS_LIMIT_MB (libFuzzer's -rss_limit_mb, default 2048), FUZZ_VERBOSE=1
# (stream libFuzzer's output instead of printing its tail), KEEP_FUZZ_DIR=1 (keep the temp dir).
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

work=$(mktemp -d "${TMPDIR:-/tmp}/callstate-fuzz.XXXXXX")
mkdir -p "$work/corpus" "$work/artifacts"
cp -R fuzz/corpus/. "$work/corpus/"
log=$work/fuzz.log

flags=(
    "$work/corpus"
    -max_total_time="$seconds"
    -timeout=1
    -rss_limit_mb="$rss_limit_mb"
    -max_len=131072
    -dict=fuzz/callstate.dict
    -artifact_prefix="$work/artifacts/"
    -print_final_stats=1
    "$@"
)
# A hard stop well past the budget, in case the fuzzer itself wedges (Python start-up and seed
# loading take a few seconds; libFuzzer's -timeout handles slow inputs).
limit=()
if command -v timeout > /dev/null; then limit=(timeout --kill-after=30 $((seconds + 120))); fi

echo "fuzz/run.sh: fuzzing callstate.read for ${seconds}s in $work ($py)"
status=0
if [ "${FUZZ_VERBOSE:-0}" = 1 ]; then
    ${limit[@]+"${limit[@]}"} "$py" fuzz/fuzz_read.py "${flags[@]}" < /dev/null 2>&1 | tee "$log" || status=${PIPESTATUS[0]}
else
    ${limit[@]+"${limit[@]}"} "$py" fuzz/fuzz_read.py "${flags[@]}" < /dev/null > "$log" 2>&1 || status=$?
fi

found=()
for f in "$work/artifacts"/*; do
    [ -f "$f" ] && found+=("$f")
done

grep -E '^(stat::|Done )' "$log" || true
if [ "$status" -eq 0 ] && [ ${#found[@]} -eq 0 ]; then
    echo "fuzz/run.sh: no failure in ${seconds}s"
    [ "${KEEP_FUZZ_DIR:-0}" = 1 ] || rm -rf "$work"
    exit 0
fi

echo "fuzz/run.sh: FAILED (fuzzer exit status $status); last lines of $log:"
tail -n 60 "$log"
for f in ${found[@]+"${found[@]}"}; do
    echo
    echo "fuzz/run.sh: failing input: $f ($(wc -c < "$f") bytes); first 256 bytes:"
    "$py" - "$f" << 'EOF'
import sys
data = open(sys.argv[1], "rb").read()
for i in range(0, min(len(data), 256), 16):
    row = data[i : i + 16]
    text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
    print(f"{i:08x}  {row.hex(' '):<47}  |{text}|")
print("as a Python literal:", repr(data[:256]))
EOF
    echo "reproduce (from the repo root): $py fuzz/fuzz_read.py $f"
done
echo "fuzz/run.sh: temp dir kept: $work"
[ "$status" -ne 0 ] && exit "$status"
exit 1
