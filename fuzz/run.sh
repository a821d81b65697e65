#!/usr/bin/env bash
# Run every fuzz target for a bounded time (default 60 s each) with cargo fuzz (nightly).
#   fuzz/run.sh            # 60 s per target
#   fuzz/run.sh 600        # 10 min per target
# Corpora grow in fuzz/corpus/<target> (not committed); a crash lands in fuzz/artifacts/.
# fuzz/seeds/h1_differential and fuzz/seeds/h1_response are committed (minimized with `cargo fuzz cmin`): the unit tests
# `the_framer_and_hyper_agree_on_every_boundary` and `every_request_served_here_is_read_the_same_by_hypers_path`
# (h1_own's check) replay them on stable in every `cargo test`.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || { echo "cargo fuzz needs a nightly toolchain" >&2; exit 1; }
for target in ${TARGETS:-config route h1_framing h1_differential h1_response h1_own}; do
    mkdir -p "corpus/$target"
    # Seed the config corpus with every config we ship.
    [ "$target" = config ] && cp ../config/*.yaml ../deploy/docker/canaryd.yaml corpus/config/ 2>/dev/null || true
    echo "== $target: ${secs}s"
    # The HTTP/1 targets start from the committed seeds and use the HTTP/1 dictionary.
    extra=()
    case "$target" in
      h1_response) extra=(-dict=h1.dict); cp seeds/h1_response/* "corpus/$target/" ;;
      h1_*) extra=(-dict=h1.dict); cp seeds/h1_differential/* "corpus/$target/" ;;
    esac
    cargo +nightly fuzz run "$target" "corpus/$target" -- \
        -max_total_time="$secs" -max_len=4096 -print_final_stats=1 "${extra[@]}" 2>&1 |
        grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss|==|INFO: (seed|Running))|panicked|ERROR" || true
    echo "corpus $target: $(ls "corpus/$target" | wc -l) inputs"
done
