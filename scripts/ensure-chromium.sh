#!/usr/bin/env bash
# Usage: ./scripts/ensure-chromium.sh
# The browser tests (tests/integration/test_browser.py) drive Debian's Chromium at
# /usr/bin/chromium through Playwright; Playwright's own browser download is not used.
# Installs the Debian packages `chromium` and `fonts-noto-color-emoji` (apt-get, as root or
# through sudo) only when /usr/bin/chromium or the emoji font is missing (without the font, the
# page's reactions show as empty boxes in the screenshots the tests take for docs/screenshots).
# Exits non-zero, saying why, when it cannot.
set -euo pipefail

CHROMIUM=/usr/bin/chromium
EMOJI_FONT=/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf

say() { printf 'ensure-chromium: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

packages=()
[[ -x "$CHROMIUM" ]] || packages+=(chromium)
[[ -f "$EMOJI_FONT" ]] || packages+=(fonts-noto-color-emoji)
if [[ ${#packages[@]} -eq 0 ]]; then
    say "$CHROMIUM and the emoji font are installed, nothing to do"
    exit 0
fi

sudo=""
if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || die "installing ${packages[*]} needs root (or sudo): run as root 'apt-get install ${packages[*]}'"
    sudo="sudo"
fi
command -v apt-get >/dev/null || die "${packages[*]} missing and there is no apt-get: install Debian's ${packages[*]} by hand"

log=$(mktemp "${TMPDIR:-/tmp}/ensure-chromium.XXXXXX.log")
say "installing Debian's ${packages[*]} (log: $log)"
say "running: ${sudo:+$sudo }apt-get update -qq"
$sudo apt-get update -qq >"$log" 2>&1 || { tail -n 20 "$log" >&2; die "apt-get update failed (full log: $log)"; }
say "running: DEBIAN_FRONTEND=noninteractive ${sudo:+$sudo }apt-get install -y -qq --no-install-recommends ${packages[*]}"
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${packages[@]}" >>"$log" 2>&1 \
    || { tail -n 20 "$log" >&2; die "apt-get install ${packages[*]} failed (full log: $log)"; }

[[ -x "$CHROMIUM" ]] || die "apt-get installed chromium but $CHROMIUM is still missing (full log: $log)"
# /etc/chromium.d/ snippets may print shell noise on stderr; the version line is on stdout.
version=$("$CHROMIUM" --version 2>/dev/null) || die "$CHROMIUM is installed but does not run: try '$CHROMIUM --version'"
say "installed: $version"
rm -f "$log"
