#!/usr/bin/env bash
# Screenshots of TensorBoard's Images and Projector tabs for a tiny run, into docs/images/.
#
#   bash docs/tensorboard_screenshots.sh [python]   (default python: .venv/bin/python)
#
# Trains configs/test.py (6 steps of LeNet-5 on scikit-learn's digits, end-of-run plots on) in a
# temporary workdir, serves it with TensorBoard on 127.0.0.1, and photographs two tabs with
# Debian's headless chromium. The projector draws with WebGL: without a GPU, chromium needs
# SwiftShader (--enable-unsafe-swiftshader --use-angle=swiftshader).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
TB="$(dirname "$PY")/tensorboard"
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}
TMP=$(mktemp -d)
PORT=${PORT:-6199}
WORKDIR="$TMP/run"

"$PY" launch.py --config=configs/test.py --workdir="$WORKDIR" --config.train.plots=True
"$TB" --logdir="$WORKDIR" --host=127.0.0.1 --port="$PORT" >"$TMP/tensorboard.log" 2>&1 &
TB_PID=$!
trap 'kill "$TB_PID" 2>/dev/null || true; rm -rf "$TMP"' EXIT
for _ in $(seq 60); do
  curl -sf "http://127.0.0.1:$PORT/data/plugins_listing" >/dev/null && break
  sleep 1
done

shot() {  # shot <tab> <output png>
  "$CHROMIUM" --headless --no-sandbox --disable-gpu --enable-unsafe-swiftshader \
    --use-angle=swiftshader --disable-background-networking --disable-component-update \
    --no-first-run --user-data-dir="$TMP/chromium" --window-size=1400,1000 \
    --virtual-time-budget=30000 --screenshot="$2" "http://127.0.0.1:$PORT/?darkMode=false#$1"
}
shot images docs/images/tensorboard_images.png
shot projector docs/images/tensorboard_projector.png
echo "wrote docs/images/tensorboard_images.png docs/images/tensorboard_projector.png"
