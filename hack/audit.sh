#!/usr/bin/env bash
# Supply chain: Cargo.lock against the RustSec advisory database, offline (this network reaches no GitHub).
# The database is the workplace's copy, ../shared/advisory-db beside the repository, or $DDG_ADVISORY_DB.
# Installs cargo-audit (pinned) on first use; a finding fails the run unless it is judged in .cargo/audit.toml.
set -euo pipefail
cd "$(dirname "$0")/.."
db=${DDG_ADVISORY_DB:-../shared/advisory-db}
if [ ! -d "$db/crates" ]; then
  echo "audit: SKIPPED, no advisory database at $db (set DDG_ADVISORY_DB)"
  exit 0
fi
if ! cargo audit --version >/dev/null 2>&1; then
  echo "audit: installing cargo-audit 0.22.2 (about 10 min on 2 cores, once per machine)"
  cargo install --locked --quiet cargo-audit --version 0.22.2
fi
cargo audit --no-fetch --deny warnings --db "$db"
echo "audit: clean ($(grep -c '^name = ' Cargo.lock) packages in Cargo.lock)"
