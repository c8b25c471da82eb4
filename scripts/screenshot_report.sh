#!/usr/bin/env bash
# Render a findial HTML report with headless Chromium and save a full-page PNG screenshot.
#
#   bash scripts/screenshot_report.sh REPORT.html OUT.png [WIDTH]
#
# Needs chromium (Debian: apt-get install -y chromium; fonts-noto-cjk for Chinese text).
# SCREENSHOT_HEIGHT=N fixes the height instead of measuring the page.
set -euo pipefail

if [[ $# -lt 2 ]]; then
  echo "usage: $0 REPORT.html OUT.png [WIDTH]" >&2
  exit 2
fi
[[ -f "$1" ]] || { echo "$0: no such file: $1" >&2; exit 2; }
report=$(realpath "$1")
out=$(realpath -m "$2")
width=${3:-1280}

browser=""
for b in chromium chromium-browser google-chrome google-chrome-stable; do
  if command -v "$b" >/dev/null 2>&1; then browser=$b; break; fi
done
[[ -n "$browser" ]] || { echo "$0: no chromium found (Debian: apt-get install -y chromium)" >&2; exit 1; }

profile=$(mktemp -d)
probe=$(mktemp --suffix=.html)
trap 'rm -rf "$probe" "$profile"' EXIT
flags=(--headless --no-sandbox --disable-gpu --hide-scrollbars --no-first-run --mute-audio
       --disable-extensions --disable-dev-shm-usage --user-data-dir="$profile")

# Full-page height: a probe page loads the report in an iframe of the same width and writes the
# laid-out height into its title, which --dump-dom prints.
cat >"$probe" <<HTML
<html><body style="margin:0"><iframe id="f" src="file://$report" style="width:${width}px;height:600px;border:0"></iframe>
<script>document.getElementById("f").onload=function(){var d=this.contentDocument;
document.title="H"+Math.max(d.body.scrollHeight,d.documentElement.scrollHeight);};</script></body></html>
HTML
measured=$("$browser" "${flags[@]}" --allow-file-access-from-files --window-size="$width,600" \
             --virtual-time-budget=3000 --dump-dom "file://$probe" 2>/dev/null \
           | sed -n 's/.*<title>H\([0-9]*\)<\/title>.*/\1/p' | head -1 || true)
height=${SCREENSHOT_HEIGHT:-${measured:-4000}}
(( height > 16000 )) && height=16000

rm -f "$out"
"$browser" "${flags[@]}" --window-size="$width,$height" --virtual-time-budget=3000 \
  --run-all-compositor-stages-before-draw --screenshot="$out" "file://$report" 2>/dev/null || true
[[ -s "$out" ]] || { echo "$0: chromium wrote no screenshot" >&2; exit 1; }
echo "$out (${width}x${height})"
