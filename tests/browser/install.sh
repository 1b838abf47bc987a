#!/bin/sh
# Install what tests/test_browser.py needs, quietly and only when missing:
# Debian's Chromium at /usr/bin/chromium, and playwright-core (pinned in
# package-lock.json) in tests/browser/node_modules. Never downloads a browser
# of Playwright's own (`npx playwright install` does not work here).
set -eu
here=$(cd "$(dirname "$0")" && pwd)

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

if [ ! -x /usr/bin/chromium ]; then
    echo "install.sh: installing Debian chromium" >&2
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "install.sh: Node.js >= 20 and npm are needed (playwright-core requires node >= 20)" >&2
    exit 1
fi

# npm ci only when the installed playwright-core is not the locked one.
wanted=$(node -e 'console.log(require(process.argv[1]).packages["node_modules/playwright-core"].version)' \
    "$here/package-lock.json")
have=$(node -e 'try { console.log(require(process.argv[1]).version) } catch { console.log("none") }' \
    "$here/node_modules/playwright-core/package.json")
if [ "$wanted" != "$have" ]; then
    echo "install.sh: npm ci in $here (playwright-core $have -> $wanted)" >&2
    (cd "$here" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
fi
