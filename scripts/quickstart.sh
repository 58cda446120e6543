#!/usr/bin/env bash
# Quickstart: start an aggregator on its embedded defaults (SQLite + a private CA in a temp directory), enroll
# one agent, publish the example policy, show the agent activating it, deciding two real intents locally
# (signed Gait traces) and the decision records arriving on the aggregator.
# Everything runs on 127.0.0.1 and is removed at the end (KEEP=1 keeps the directory).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

echo "== building gait-aggregator and gait-agent (first build takes a few minutes)"
cargo build --quiet --locked -p gait-aggregator -p gait-agent
BIN="$ROOT/target/debug"

WORK=$(mktemp -d /tmp/gait-quickstart.XXXXXX)
AGG_PID=""; AGENT_PID=""
cleanup() {
  [ -n "$AGENT_PID" ] && kill "$AGENT_PID" 2>/dev/null || true
  [ -n "$AGG_PID" ] && kill "$AGG_PID" 2>/dev/null || true
  wait 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

echo "== 1. aggregator: serve on embedded defaults (data in $WORK/aggregator)"
"$BIN/gait-aggregator" serve --data-dir "$WORK/aggregator" --quic-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  >"$WORK/aggregator.out" 2>"$WORK/aggregator.log" &
AGG_PID=$!
for _ in $(seq 1 100); do grep -q "serving:" "$WORK/aggregator.out" 2>/dev/null && break; sleep 0.1; done
LINE=$(grep "serving:" "$WORK/aggregator.out") || { cat "$WORK/aggregator.log"; exit 1; }
echo "   $LINE"
QUIC=$(echo "$LINE" | sed -E 's/.*quic=([^ ]+).*/\1/')
HTTP=$(echo "$LINE" | sed -E 's/.*http=([^ ]+).*/\1/')
API=(--server "$HTTP" --token-file "$WORK/aggregator/admin.token")

echo "== 2. enroll agent-1 of acme/payments/prod (client certificate + agent.yaml)"
"$BIN/gait-aggregator" pki issue-agent --data-dir "$WORK/aggregator" --org acme --project payments --env prod \
  --agent-id agent-1 --out "$WORK/agent-1" --aggregator-address "$QUIC" | sed 's/^/   /'
LOCAL="127.0.0.1:$(free_port)"
sed -i "s/127.0.0.1:7071/$LOCAL/" "$WORK/agent-1/agent.yaml"

echo "== 3. agent: run (dials out over mutual-TLS QUIC)"
"$BIN/gait-agent" run --config "$WORK/agent-1/agent.yaml" >"$WORK/agent.out" 2>"$WORK/agent.log" &
AGENT_PID=$!
for _ in $(seq 1 100); do curl -fs "http://$LOCAL/healthz" >/dev/null 2>&1 && break; sleep 0.1; done

echo "== 4. publish examples/policies/fleet-baseline.yaml to acme/payments/prod"
"$BIN/gait-aggregator" publish "${API[@]}" --org acme --project payments --env prod \
  --policy examples/policies/fleet-baseline.yaml | sed 's/^/   /'

echo "== 5. the agent verifies and activates the signed bundle"
for _ in $(seq 1 50); do
  "$BIN/gait-agent" status --api "$LOCAL" --json >"$WORK/status.json" 2>/dev/null || true
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if (d.get("active_bundle") or {}).get("epoch")==1 else 1)' "$WORK/status.json" 2>/dev/null && break
  sleep 0.2
done
"$BIN/gait-agent" status --api "$LOCAL" | sed 's/^/   /'

echo "== 6. the agent decides locally from the verified bundle, signs a Gait trace, records the decision"
for INTENT in read-report write-system-file; do
  curl -fsS -X POST "http://$LOCAL/v1/gate/evaluate" -H 'content-type: application/json' \
    -H "authorization: Bearer $(cat "$WORK/agent-1/data/local-api.token")" \
    --data-binary "@examples/intents/$INTENT.json" >"$WORK/$INTENT.decision.json"
  python3 - "$WORK/$INTENT.decision.json" "$WORK/$INTENT.trace.json" "$INTENT" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
json.dump(d["trace"], open(sys.argv[2], "w"), indent=2)
print("   %-18s verdict=%s rule=%s reasons=%s bundle_epoch=%s record_seq=%s" % (
    sys.argv[3], d["verdict"], d["matched_rule"] or "-", ",".join(d["reason_codes"]),
    d["bundle"]["epoch"], d["record_seq"]))
PY
done
echo "   the trace verifies offline with Gait's rules and the agent's trace key:"
"$BIN/gait-agent" trace verify --path "$WORK/write-system-file.trace.json" \
  --public-key "$WORK/agent-1/data/keys/trace_public.key" | sed 's/^/   /'
TOKEN=$(cat "$WORK/aggregator/admin.token")
for _ in $(seq 1 50); do
  OUT=$(curl -fsS -H "authorization: Bearer $TOKEN" "$HTTP/v1/orgs/acme/projects/payments/envs/prod/agents/agent-1/records?limit=10")
  [ "$(echo "$OUT" | grep -o '"gate.decision"' | wc -l)" -ge 2 ] && break
  sleep 0.2
done
echo "   committed on the aggregator:"
echo "$OUT" | python3 -c 'import json,sys; d=json.load(sys.stdin); [print("   seq=%s class=%s kind=%s bundle_epoch=%s %s" % (r["seq"], r["class"], r["kind"], r["bundle_epoch"], ("tool=%s verdict=%s trace_id=%s" % (r["payload"]["tool_name"], r["payload"]["verdict"], r["payload"]["trace_id"][:16])) if r["kind"]=="gate.decision" else json.dumps(r["payload"]))) for r in d["records"]]'

echo "== 7. fleet inventory"
"$BIN/gait-aggregator" agents "${API[@]}" --org acme | sed 's/^/   /'
echo "== 8. fleet analytics: the decisions grouped into incident families, ranked (folded within ~5 s)"
for _ in $(seq 1 100); do
  "$BIN/gait-aggregator" families "${API[@]}" --org acme --json >"$WORK/families.json" 2>/dev/null || true
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); sys.exit(0 if sum(f["occurrences"] for f in d["families"])>=2 else 1)' "$WORK/families.json" 2>/dev/null && break
  sleep 0.2
done
"$BIN/gait-aggregator" families "${API[@]}" --org acme | sed 's/^/   /'
"$BIN/gait-aggregator" posture "${API[@]}" --org acme --days 1 | sed 's/^/   /'
echo "   the change gate of acme/payments/prod (exit 1 when an open critical family or failing regress says no):"
"$BIN/gait-aggregator" change-gate "${API[@]}" --org acme --project payments --env prod | sed 's/^/   /' || true
echo "== done: aggregator log $WORK/aggregator.log, agent log $WORK/agent.log"
