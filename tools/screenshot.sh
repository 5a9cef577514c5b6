#!/usr/bin/env bash
# Screenshots of rendered book pages, to look at the book as a reader does.
#
#   tools/screenshot.sh                      # intro and chapter 01, building the book first if it is stale
#   tools/screenshot.sh book/04_dino_loss    # any pages, named as in _toc.yml
#   tools/screenshot.sh --rebuild            # force a fresh build
#   tools/screenshot.sh --html DIR           # use an HTML build elsewhere (DIR holds book/00_intro.html ...)
#
# Writes screenshots/<page>.png (1280 px wide, git-ignored) with headless Chromium
# (Debian: apt-get install -y chromium).
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
HTML="$ROOT/_build/html"
REBUILD=0
PAGES=()
while [ $# -gt 0 ]; do
  case "$1" in
    --rebuild) REBUILD=1 ;;
    --html) HTML="$(cd "$2" && pwd)"; shift ;;
    -h|--help) sed -n 2,11p "$0"; exit 0 ;;
    *) PAGES+=("${1%.ipynb}") ;;
  esac
  shift
done
[ ${#PAGES[@]} -gt 0 ] || PAGES=(book/00_intro book/01_multi_crop)

BROWSER="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$BROWSER" ]; then
  echo "no Chromium found: install it (Debian/Ubuntu: apt-get update && apt-get install -y chromium)" >&2
  exit 1
fi

# Build when asked, when a page is missing, or when a source is newer than the build.
if [ "$HTML" = "$ROOT/_build/html" ]; then
  stale=$REBUILD
  for page in "${PAGES[@]}"; do [ -f "$HTML/$page.html" ] || stale=1; done
  if [ $stale = 0 ] && [ -n "$(find "$ROOT/book" "$ROOT/_config.yml" "$ROOT/_toc.yml" -newer "$HTML/${PAGES[0]}.html" \
        \( -name '*.ipynb' -o -name '*.md' -o -name '_config.yml' -o -name '_toc.yml' \) -print -quit)" ]; then
    stale=1
  fi
  if [ $stale = 1 ]; then
    echo "building the book into $ROOT/_build ..."
    (cd "$ROOT" && jupyter-book build . >/tmp/screenshot-build.log 2>&1) || {
      tail -20 /tmp/screenshot-build.log; echo "book build failed (log: /tmp/screenshot-build.log)" >&2; exit 1; }
  fi
fi

mkdir -p "$ROOT/screenshots"
PROFILE="$(mktemp -d)"
trap 'rm -rf "$PROFILE"' EXIT
for page in "${PAGES[@]}"; do
  file="$HTML/$page.html"
  [ -f "$file" ] || { echo "no page $file" >&2; exit 1; }
  out="$ROOT/screenshots/$(basename "$page").png"
  timeout 120 "$BROWSER" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$PROFILE" --window-size=1280,2400 --virtual-time-budget=5000 \
    --screenshot="$out" "file://$file" >/dev/null 2>&1
  [ -s "$out" ] || { echo "no screenshot was written for $page" >&2; exit 1; }
  echo "$out"
done
