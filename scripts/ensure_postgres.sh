#!/usr/bin/env bash
# The store tests run on SQLite and on a throwaway PostgreSQL cluster (tests/serve/pg.py: initdb + pg_ctl
# in a temporary folder). As root with PostgreSQL's server binaries missing (as in CI), install Debian's
# postgresql package with apt (the cluster it would start is not used: the tests start their own); otherwise
# do nothing: the PostgreSQL tests then skip with a reason that says how to enable them.
set -u
if command -v pg_ctl >/dev/null 2>&1 && command -v initdb >/dev/null 2>&1; then exit 0; fi
for bin in /usr/lib/postgresql/*/bin; do
  if [ -x "$bin/pg_ctl" ] && [ -x "$bin/initdb" ]; then exit 0; fi
done
if [ "$(id -u)" != "0" ]; then
  echo "PostgreSQL not installed and not root: PostgreSQL tests will skip (apt-get install postgresql to enable)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql >/dev/null) \
  || echo "could not install postgresql: PostgreSQL tests will skip"
exit 0
