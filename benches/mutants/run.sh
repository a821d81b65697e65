#!/usr/bin/env bash
# Mutation testing with cargo-mutants: break the code one small change at a time (a `>` made
# `>=`, a function body replaced by a default, a `!` deleted) and see whether a test fails.
# A "missed" mutant is a change no test notices. Covered: the routing decision, config
# validation, the HTTP/1 smuggling guard, the config watcher and the reload path.
#
#   benches/mutants/run.sh [SECTION...]     sections: watch reload guard router config
#                                           (default: all, in that order)
#   IN_PLACE=1 benches/mutants/run.sh       mutate this tree instead of a copy (faster:
#                                           reuses target/; do not edit the tree meanwhile)
#
# Each section runs the tests that can see its code: `guard` (src/server/h1guard.rs), `router` and
# `config` (src/config/mod.rs) the unit tests (`--lib`, ~15 s per mutant here, mostly the
# rebuild); `watch` and `reload` (the watcher, and the reload/compose functions of
# control.rs) tests/reload.rs. Not CI: about 3 h for all 506 mutants on 2 cores.
# Results: target/mutants/SECTION/mutants.out/{caught,missed,timeout,unviable}.txt, and a
# summary line per section; record them in docs/testing.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo-mutants >/dev/null || cargo install --locked --quiet cargo-mutants
OUT=${OUT:-target/mutants}
# No debug info: each mutant relinks a test binary, and linking debug info was a third of
# the time per mutant here.
export CARGO_PROFILE_DEV_DEBUG=0
extra=()
[ "${IN_PLACE:-0}" = 1 ] && extra+=(--in-place)

section() {
  local name=$1; shift
  mkdir -p "$OUT/$name"
  # Exit code 2 = some mutants missed, 3 = some timed out: both are results, not failures.
  cargo mutants --no-shuffle "${extra[@]}" --timeout 120 -o "$OUT/$name" "$@" \
    > "$OUT/$name/log.txt" 2>&1 || true
  local d="$OUT/$name/mutants.out" n
  printf '%-8s' "$name"
  for k in caught missed timeout unviable; do
    n=$( [ -f "$d/$k.txt" ] && wc -l < "$d/$k.txt" || echo 0)
    printf ' %s %s' "$k" "$n"
  done
  echo
}

sections=("$@")
[ ${#sections[@]} -gt 0 ] || sections=(watch reload guard router config)
for s in "${sections[@]}"; do
  case "$s" in
    guard) section guard -f src/server/h1guard.rs -- --lib ;;
    router) section router -f src/router.rs -- --lib ;;
    config) section config -f src/config/validate.rs -- --lib ;;
    watch) section watch -f src/control/watch.rs -- --test reload ;;
    reload) section reload -f src/control/mod.rs \
      --re 'StartupOnly|content_hash|Control::reload|Control::fail|fn compose|compose' \
      -- --lib --test reload ;;
    *) echo "unknown section $s (watch, reload, guard, router, config)" >&2; exit 2 ;;
  esac
done
