#!/usr/bin/env bash
# Process benchmark of the Gait-compatible commands of `gait-agent`, with hyperfine (whole process: exec,
# argument parsing, file reads, evaluation, output). The gated goal is `policy test`: median <= GOAL_MS
# (default 5 ms). `gate eval` (prod key, signed trace written), `trace verify` and `verify` are measured for
# information only.
#
#   scripts/bench-cli.sh                  # builds target/release/gait-agent if missing
#   GOAL_MS=5 RUNS=500 scripts/bench-cli.sh
#
# Needs hyperfine (`apt-get install -y hyperfine`) and python3 with `cryptography` (to write a test key).
# Exit 0 when the policy-test median meets the goal, 1 when it does not.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${GAIT_SHARED:-$ROOT/../shared}
FIX=$SHARED/fixtures/gait
BIN=${GAIT_AGENT_BIN:-$ROOT/target/release/gait-agent}
GOAL_MS=${GOAL_MS:-5}
RUNS=${RUNS:-300}
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

command -v hyperfine >/dev/null || { echo "hyperfine not found: apt-get install -y hyperfine" >&2; exit 2; }
if [[ ! -x $BIN ]]; then
  (cd "$ROOT" && cargo build -p gait-agent --release)
fi

POLICY=$FIX/examples/policy/endpoint/block_denied_endpoints.yaml
INTENT=$FIX/examples/policy/endpoint/fixtures/intent_block.json

# A prod key in Gait's file format (base64 of seed||public, base64 of public).
python3 - "$OUT" <<'PY'
import base64, sys
from cryptography.hazmat.primitives import serialization as s
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
k = Ed25519PrivateKey.generate()
seed = k.private_bytes(s.Encoding.Raw, s.PrivateFormat.Raw, s.NoEncryption())
pub = k.public_key().public_bytes(s.Encoding.Raw, s.PublicFormat.Raw)
open(sys.argv[1] + "/key", "w").write(base64.b64encode(seed + pub).decode() + "\n")
open(sys.argv[1] + "/key.pub", "w").write(base64.b64encode(pub).decode() + "\n")
PY
"$BIN" gate eval --policy "$POLICY" --intent "$INTENT" --key-mode prod --private-key "$OUT/key" \
  --trace-out "$OUT/trace.json" --json >/dev/null || true
mkdir -p "$OUT/gait-out"
cp "$SHARED/conformance/artifacts/runpack_run_demo.zip" "$OUT/gait-out/"

cd "$OUT"
# -N: no intermediate shell; -i: block decisions exit 3, which is the expected outcome here.
hyperfine -N -i --warmup 30 --runs "$RUNS" --export-json "$OUT/policy_test.json" \
  -n "policy test (block, --json)" "$BIN policy test $POLICY $INTENT --json"
hyperfine -N -i --warmup 10 --runs "$RUNS" \
  -n "gate eval (prod key, signed trace)" \
  "$BIN gate eval --policy $POLICY --intent $INTENT --key-mode prod --private-key $OUT/key --trace-out $OUT/t.json --json" \
  -n "trace verify" "$BIN trace verify $OUT/trace.json --public-key $OUT/key.pub --json" \
  -n "verify run_demo" "$BIN verify run_demo --json"

python3 - "$OUT/policy_test.json" "$GOAL_MS" <<'PY'
import json, statistics, sys
times = json.load(open(sys.argv[1]))["results"][0]["times"]
median_ms = statistics.median(times) * 1000
p95_ms = sorted(times)[int(len(times) * 0.95) - 1] * 1000
goal = float(sys.argv[2])
verdict = "PASS" if median_ms <= goal else "FAIL"
print(f"policy test: median {median_ms:.2f} ms, p95 {p95_ms:.2f} ms over {len(times)} runs "
      f"(goal median <= {goal} ms): {verdict}")
sys.exit(0 if median_ms <= goal else 1)
PY
