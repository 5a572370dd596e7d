#!/usr/bin/env bash
# Instructions per review (callgrind), for before/after comparisons of the decision path that a loaded machine
# does not disturb: each case of examples/profile_review.rs run N times and 0 times, the difference divided by N.
# Usage: hack/callgrind.sh [OUTDIR]   (default target/callgrind; needs valgrind). Annotate a case with
#   callgrind_annotate OUTDIR/cg.networkpolicy_create | head -40
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-target/callgrind}
TARGET=${CARGO_TARGET_DIR:-target}
cargo build --release --locked --example profile_review
mkdir -p "$OUT"
BIN="$OUT/profile_review"
cp "$TARGET/release/examples/profile_review" "$BIN"
instructions() { valgrind --tool=callgrind --callgrind-out-file="$1" "$BIN" "$2" "$3" 2>&1 | awk '/Collected/ {print $4}'; }
printf '%-40s %14s\n' case instructions
for spec in networkpolicy_create:2000 networkpolicy_update:2000 networkpolicy_delete:2000 \
    namespace_create_patch:2000 update_250_rules:40 update_1000_rules:10 update_4000_rules:3 \
    system_namespaces_3:2000 system_namespaces_10000:2000 record_json:2000 \
    json_only:networkpolicy_create:2000 json_only:networkpolicy_update:2000 json_only:networkpolicy_delete:2000 \
    json_only:namespace_create_patch:2000 json_only:update_1000_rules:10; do
    name=${spec%:*} n=${spec##*:}
    with=$(instructions "$OUT/cg.$name" "$name" "$n")
    without=$(instructions /dev/null "$name" 0)
    printf '%-40s %14d\n' "$name" $(( (with - without) / n ))
done | tee "$OUT/summary.txt"
