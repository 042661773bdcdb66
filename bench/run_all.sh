#!/usr/bin/env bash
# Run every benchmark on this machine, then write bench/results.md, bench/*.png and README.md's Benchmarks
# section (between its bench markers; not on --quick) from their results.
#
#   sudo bench/run_all.sh                  # the reported run (< 20 minutes on 2 cores)
#   sudo bench/run_all.sh --model DIR      # another model folder (default: the bundled one)
#   sudo bench/run_all.sh --quick          # development: fewer attempts and pairs; results.md says so
#
# Needs root (a temporary PAM service in /etc/pam.d and a temporary user, both removed), the venv
# (./install.sh --dev) and ../shared/faces. Installs the 'bench' extra (dlib for the Howdy baseline)
# when it is missing. Raw JSON results go to $FACEID_BENCH_OUT (default /tmp/pam_faceid-bench/run-DATE).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=.venv/bin/python
COMMAND="bench/run_all.sh${*:+ $*}"
MODEL=()
QUICK=0
while (($#)); do
    case $1 in
        --model) MODEL=(--model "$2"); shift 2 ;;
        --quick) QUICK=1; shift ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "run_all.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ $(id -u) == 0 ]] || { echo "run_all.sh: run as root (it adds a temporary PAM service and user)" >&2; exit 1; }
[[ -x $PY ]] || { echo "run_all.sh: no $PY; run ./install.sh --dev first" >&2; exit 1; }
if ! $PY -c 'import dlib, importlib.util, sys; sys.exit(importlib.util.find_spec("face_recognition_models") is None)' 2>/dev/null; then
    echo "== installing the bench extra (dlib-bin, face-recognition-models)"
    $PY -m pip install --disable-pip-version-check -e '.[bench]'
fi
OUT=${FACEID_BENCH_OUT:-/tmp/pam_faceid-bench/run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
export FACEID_BENCH_OUT=$OUT
if ((QUICK)); then
    ATTEMPTS=(--attempts 10 --match-attempts 10) HELPER=(--runs 10) MEMORY=(--repeats 1 --load-seconds 3) PAIRS=(--quick 30) RETRAIN=(--quick)
    LIVE_LAT=(--attempts 10) LIVE=(--count 6 --photos 60)
else
    ATTEMPTS=() HELPER=() MEMORY=() PAIRS=() RETRAIN=() LIVE_LAT=() LIVE=()
fi
started=$SECONDS
step() { echo "== $1 ($((SECONDS - started)) s)"; }
step "helper start to first frame";   $PY bench/helper_start.py "${HELPER[@]}" --out "$OUT/helper_start.json"
step "login latency, three paths";    $PY bench/auth_latency.py "${MODEL[@]}" "${ATTEMPTS[@]}" --out "$OUT/auth_latency.json"
step "faceidd memory";                $PY bench/daemon_memory.py "${MODEL[@]}" "${MEMORY[@]}" --out "$OUT/daemon_memory.json"
step "liveness cost to a login";      $PY bench/liveness_latency.py "${MODEL[@]}" "${LIVE_LAT[@]}" --out "$OUT/liveness_latency.json"
step "liveness APCER/BPCER, trade-off"; $PY bench/liveness.py "${LIVE[@]}" --out "$OUT/liveness.json"
step "embedder speed, memory, accuracy"; $PY bench/embedder.py "${MODEL[@]}" "${PAIRS[@]}" --out "$OUT/embedder.json"
step "per-user retraining vs the seed"; $PY bench/retrain.py "${MODEL[@]}" "${RETRAIN[@]}" --out "$OUT/retrain.json"
step "same-camera FAR";              $PY bench/same_camera.py --out "$OUT/same_camera.json"
step "report"
README=()
((QUICK)) || README=(--readme README.md)  # a quick run never reaches the README
$PY bench/report.py --results "$OUT" --out-dir bench --command "$COMMAND" --elapsed $((SECONDS - started)) "${README[@]}"
echo "== done in $((SECONDS - started)) s; raw results in $OUT"
