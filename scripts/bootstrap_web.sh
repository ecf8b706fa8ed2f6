#!/usr/bin/env bash
# Builds the browser editor (web/ -> src/latentworks/server/static) and installs what its browser test needs:
# npm packages in web/ (vite, playwright-core) and Debian's chromium. Called by `scripts/bootstrap.sh --test`.
# Idempotent: `npm ci` runs only when package-lock.json changed, the build only when the editor source changed.
# Without node/npm it leaves the committed build in place and says so (the editor still works; its test skips).
set -euo pipefail
cd "$(dirname "$0")/.."
log() { echo "[bootstrap_web] $*"; }

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo -n "$@"; else return 1; fi; }
if [ ! -x /usr/bin/chromium ]; then
  if command -v apt-get >/dev/null; then
    log "installing Debian chromium (for tests/web)"
    as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
      || log "could not install chromium (need root or sudo); the browser test will skip"
  else
    log "no apt-get: install chromium at /usr/bin/chromium yourself; the browser test skips without it"
  fi
fi

if ! command -v npm >/dev/null; then
  log "npm not found: keeping the committed editor build in src/latentworks/server/static (the browser test will skip)"
  exit 0
fi

cd web
lock_hash=$(sha1sum package-lock.json | cut -c1-12)
if [ ! -f "node_modules/.latentworks-ci-$lock_hash" ]; then
  log "npm ci in web/"
  npm ci --no-audit --no-fund --loglevel=error
  touch "node_modules/.latentworks-ci-$lock_hash"
fi

src_hash=$(cat package-lock.json vite.config.js index.html $(find src -type f | LC_ALL=C sort) | sha1sum | cut -c1-12)
stamp="node_modules/.latentworks-build-$src_hash"
if [ -f "$stamp" ] && [ -f ../src/latentworks/server/static/index.html ]; then
  log "editor build is up to date"
else
  log "building the editor into src/latentworks/server/static"
  npx --no-install vite build --logLevel warn
  rm -f node_modules/.latentworks-build-*
  touch "$stamp"
fi
