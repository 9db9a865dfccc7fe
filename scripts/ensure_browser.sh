#!/usr/bin/env bash
# Browser tests use Debian's Chromium (Playwright's own browser download cannot work offline).
# As root with the browser missing (as in CI), install it with apt; otherwise do nothing: the browser
# tests then skip with a reason that says how to enable them.
set -u
if command -v chromium >/dev/null 2>&1 || [ -x /usr/bin/chromium ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "chromium not installed and not root: browser tests will skip (apt-get install chromium to enable)"
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
(apt-get update -qq && apt-get install -y -qq chromium >/dev/null) \
  || echo "could not install chromium: browser tests will skip"
exit 0
