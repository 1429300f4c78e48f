#!/usr/bin/env bash
# The whole test suite, on a fresh machine: installs what the tests need if it is missing,
# then runs every test in the workspace. `.ci/run` calls exactly this script.
#
# System packages the suite needs are listed in scripts/apt-packages.txt, Python packages in
# scripts/pip-packages.txt (one per line, `#` comments allowed). Add to those lists, not here.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi; }

want_list() { grep -v -E '^\s*(#|$)' "$1" | awk '{print $1}'; }

missing_apt=()
while read -r pkg; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing_apt+=("$pkg")
done < <(want_list scripts/apt-packages.txt)
if [ ${#missing_apt[@]} -gt 0 ]; then
    echo "test.sh: installing apt packages: ${missing_apt[*]}"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing_apt[@]}"
fi

mapfile -t pip_pkgs < <(want_list scripts/pip-packages.txt)
if [ ${#pip_pkgs[@]} -gt 0 ]; then
    python3 -m pip install -q --disable-pip-version-check "${pip_pkgs[@]}"
fi

# Loom model-checks the cross-shard mailboxes. It needs its own cfg, so it builds into its own
# target directory to keep the main build cache intact.
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
    cargo test -p shards --release --lib loom -- --test-threads=2

# Benches are measured with `cargo bench`; here they only have to compile.
cargo check -p kubeshard-benches --benches

# --no-fail-fast: one red test binary must not hide the state of the others.
cargo test --workspace --no-fail-fast "$@"
