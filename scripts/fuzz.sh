#!/usr/bin/env bash
# Runs every fuzz target of fuzz/ under AFL++ for SECONDS each (default 60)
# on the stable toolchain, starting from the committed seed corpora in
# fuzz/corpus/TARGET. Installs cargo-afl when it is missing (which also
# builds AFL++), builds the instrumented harness binary into its own target
# directory, prints executions, new paths, crashes and hangs per target, and
# exits non-zero on any crash or hang, naming the files that hold the
# crashing inputs. See docs/fuzzing.md.
#
# Usage: scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Environment: CERTFLEET_FUZZ_DIR (runs and build; default target/afl),
# AFL_OPT_LEVEL (optimization of the instrumented build, default 1 here:
# cargo-afl's 3 with one codegen unit per crate makes the build of the
# controller's dependency tree several times slower on 2 cores, for
# executions about twice as fast).
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '==> %s\n' "$*" >&2; }

seconds=${1:-60}
[[ $# -gt 0 ]] && shift
if ! [[ $seconds =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...] (SECONDS a positive integer, got '$seconds')" >&2
  exit 2
fi

targets=("$@")
if [[ ${#targets[@]} -eq 0 ]]; then
  for dir in fuzz/corpus/*/; do
    targets+=("$(basename "$dir")")
  done
fi
for t in "${targets[@]}"; do
  if [[ ! -d fuzz/corpus/$t ]]; then
    echo "unknown fuzz target '$t' (targets: $(ls fuzz/corpus | tr '\n' ' '))" >&2
    exit 2
  fi
done

if ! cargo afl --version >/dev/null 2>&1; then
  log "cargo install cargo-afl --locked"
  cargo install cargo-afl --locked
fi
# cargo-afl builds AFL++ on installation; build it when that did not happen
# (it refuses, saying so, when AFL++ is already built).
if ! out=$(cargo afl config --build 2>&1); then
  if ! grep -q "already built" <<<"$out"; then
    printf '%s\n' "$out" >&2
    exit 1
  fi
fi

work=${CERTFLEET_FUZZ_DIR:-target/afl}
export AFL_OPT_LEVEL=${AFL_OPT_LEVEL:-1}
log "cargo afl build --release -p certfleet-fuzz --features afl (into $work)"
CARGO_TARGET_DIR=$work cargo afl build --release --locked -p certfleet-fuzz --features afl \
  --bin certfleet-fuzz
bin=$work/release/certfleet-fuzz

# afl-fuzz refuses to start on a shared or unusual machine without these;
# none of them weakens what a run finds.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 \
  AFL_NO_AFFINITY=1 AFL_FAST_CAL=1

stat() { sed -n "s/^$2 *: *//p" "$1" | head -n1; }

failed=0
printf '%-14s %12s %10s %8s %8s %6s\n' target executions execs/s corpus crashes hangs
for t in "${targets[@]}"; do
  out=$work/runs/$t
  rm -rf "$out"
  mkdir -p "$out"
  # -t: a decoder taking over 2 s on one input is a hang.
  if ! cargo afl fuzz -V "$seconds" -t 2000 -i "fuzz/corpus/$t" -o "$out" -- "$bin" "$t" \
    >"$out/afl.log" 2>&1; then
    echo "afl-fuzz failed for $t (a seed that crashes fails the dry run); last lines of $out/afl.log:" >&2
    tail -n 20 "$out/afl.log" >&2
    failed=1
    continue
  fi
  stats=$out/default/fuzzer_stats
  execs=$(stat "$stats" execs_done)
  rate=$(stat "$stats" execs_per_sec)
  corpus=$(stat "$stats" corpus_count)
  crashes=$(stat "$stats" saved_crashes)
  hangs=$(stat "$stats" saved_hangs)
  printf '%-14s %12s %10s %8s %8s %6s\n' "$t" "$execs" "$rate" "$corpus" "$crashes" "$hangs"
  if [[ ${crashes:-0} != 0 || ${hangs:-0} != 0 ]]; then
    failed=1
    for f in "$out"/default/crashes/id:* "$out"/default/hangs/id:*; do
      [[ -e $f ]] && echo "  input: $f (replay: $bin $t < '$f')" >&2
    done
  fi
done

if [[ $failed != 0 ]]; then
  echo "fuzzing found crashes or hangs (see above)" >&2
  exit 1
fi
log "no crash and no hang in ${#targets[@]} targets, ${seconds}s each"
