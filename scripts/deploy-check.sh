#!/usr/bin/env bash
# Runs the steps of deploy/README.md as its service users, with every path under a temporary root instead of
# /, and checks the result: the aggregator serves, an issued agent connects, data directories are private.
# Needs root (it creates the system users `gait` and `gait-agent` if they are missing, as the README does).
# .ci/run calls it after the test suite; by hand: sudo scripts/deploy-check.sh [path/to/bin-dir]
set -euo pipefail
cd "$(dirname "$0")/.."
BIN_SRC="${1:-target/debug}"
[ "$(id -u)" = 0 ] || { echo "deploy-check: run as root (it creates the service users)" >&2; exit 77; }
for b in gait-aggregator gait-agent; do
  [ -x "$BIN_SRC/$b" ] || { echo "deploy-check: $BIN_SRC/$b missing; build first (cargo build)" >&2; exit 66; }
done

ROOT="$(mktemp -d /tmp/gait-deploy.XXXXXX)"
chmod 0755 "$ROOT"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$ROOT"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
free_udp_port() { python3 -c 'import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { echo "== $*"; }
# GET https://localhost:$1/healthz answered 200, the server verified against the deployment CA in $2 (python3,
# so the check needs no curl on a fresh machine).
healthz() {
  python3 -c 'import ssl,sys,urllib.request
ctx = ssl.create_default_context(cafile=sys.argv[2])
urllib.request.urlopen("https://localhost:%s/healthz" % sys.argv[1], timeout=5, context=ctx)' "$1" "$2" >/dev/null 2>&1
}
# The same URL as plain HTTP must get no answer: the production setup serves HTTPS only.
plain_http_answers() { python3 -c 'import sys,urllib.request; urllib.request.urlopen("http://localhost:%s/healthz" % sys.argv[1], timeout=5)' "$1" >/dev/null 2>&1; }
die() { echo "deploy-check: $*" >&2; exit 1; }

AGG_HOME="$ROOT/var/lib/gait-aggregator"
AGENT_HOME="$ROOT/var/lib/gait-agent"

say "1. install the binaries"
install -d "$ROOT/usr/local/bin"
install -m 0755 "$BIN_SRC/gait-aggregator" "$BIN_SRC/gait-agent" "$ROOT/usr/local/bin/"
export PATH="$ROOT/usr/local/bin:$PATH"

say "2. the service users and the aggregator's environment file"
id gait >/dev/null 2>&1 || useradd --system --home-dir /var/lib/gait-aggregator --no-create-home --shell /usr/sbin/nologin gait
id gait-agent >/dev/null 2>&1 || useradd --system --home-dir /var/lib/gait-agent --no-create-home --shell /usr/sbin/nologin gait-agent
install -d -m 0700 -o gait -g gait "$AGG_HOME"
install -d -m 0755 "$ROOT/etc/gait-aggregator"
QUIC_PORT="$(free_udp_port)"
HTTP_PORT="$(free_port)"
sed -e "s/^GAIT_QUIC_LISTEN=.*/GAIT_QUIC_LISTEN=127.0.0.1:$QUIC_PORT/" \
    -e "s/^GAIT_HTTP_LISTEN=.*/GAIT_HTTP_LISTEN=127.0.0.1:$HTTP_PORT/" \
    deploy/config/aggregator.env > "$ROOT/etc/gait-aggregator/aggregator.env"

say "3. the CA, as the service user"
runuser -u gait -- gait-aggregator pki init --data-dir "$AGG_HOME" --server-name localhost

say "5. serve as the unit does (ExecStart of deploy/systemd/gait-aggregator.service, environment file loaded)"
(
  set -a; . "$ROOT/etc/gait-aggregator/aggregator.env"; set +a
  exec runuser -u gait -- gait-aggregator serve --data-dir "$AGG_HOME"
) > "$ROOT/aggregator.log" 2>&1 &
PIDS+=($!)
CA="$AGG_HOME/pki/ca.pem"
for _ in $(seq 1 600); do
  healthz "$HTTP_PORT" "$CA" && break
  kill -0 "${PIDS[0]}" 2>/dev/null || { cat "$ROOT/aggregator.log" >&2; die "the aggregator exited"; }
  sleep 0.1
done
healthz "$HTTP_PORT" "$CA" || { cat "$ROOT/aggregator.log" >&2; die "no /healthz over HTTPS"; }
plain_http_answers "$HTTP_PORT" && die "the admin API answered plain HTTP"

say "5b. publish a policy over HTTPS as the service user (the CLI trusts <data-dir>/pki/ca.pem)"
cat > "$AGG_HOME/policy.yaml" <<'POLICY'
schema_id: gait.gate.policy
schema_version: 1.0.0
default_verdict: block
rules:
  - name: allow-reads
    priority: 10
    effect: allow
    match:
      tool_names: [tool.read]
POLICY
chown gait:gait "$AGG_HOME/policy.yaml"
runuser -u gait -- env GAIT_DATA_DIR="$AGG_HOME" gait-aggregator publish --server "https://localhost:$HTTP_PORT" \
  --org acme --project web --env prod --policy "$AGG_HOME/policy.yaml" \
  || { cat "$ROOT/aggregator.log" >&2; die "publish over HTTPS failed"; }

say "6. an agent: issued by the aggregator's user, installed as /etc/gait-agent, run as gait-agent"
runuser -u gait -- gait-aggregator pki issue-agent --data-dir "$AGG_HOME" --org acme --project web --env prod \
  --agent-id agent-x --out "$AGG_HOME/out/agent-x" --aggregator-address "localhost:$QUIC_PORT" >/dev/null
install -d -m 0755 "$ROOT/etc"
cp -r "$AGG_HOME/out/agent-x" "$ROOT/etc/gait-agent"
chown -R gait-agent:gait-agent "$ROOT/etc/gait-agent"
install -d -m 0700 -o gait-agent -g gait-agent "$AGENT_HOME"
API_PORT="$(free_port)"
(
  export GAIT_AGENT_DATA_DIR="$AGENT_HOME" GAIT_AGENT_LOCAL_API_LISTEN="127.0.0.1:$API_PORT"
  exec runuser -u gait-agent -- gait-agent --log-format json run --config "$ROOT/etc/gait-agent/agent.yaml"
) > "$ROOT/agent.log" 2>&1 &
PIDS+=($!)
connected=""
for _ in $(seq 1 600); do
  out="$(gait-agent status --json --api "127.0.0.1:$API_PORT" 2>/dev/null || true)"
  if echo "$out" | python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin).get("connected") else 1)' 2>/dev/null; then
    connected=1; break
  fi
  kill -0 "${PIDS[1]}" 2>/dev/null || { cat "$ROOT/agent.log" >&2; die "the agent exited"; }
  sleep 0.1
done
[ -n "$connected" ] || { cat "$ROOT/agent.log" "$ROOT/aggregator.log" >&2; die "the agent never connected"; }

say "checks: private data directories and databases, owned by the service users"
mode() { stat -c '%a %U' "$1"; }
[ "$(mode "$AGG_HOME")" = "700 gait" ] || die "aggregator data dir is $(mode "$AGG_HOME")"
[ "$(mode "$AGG_HOME/aggregator.db")" = "600 gait" ] || die "aggregator.db is $(mode "$AGG_HOME/aggregator.db")"
[ "$(mode "$AGENT_HOME")" = "700 gait-agent" ] || die "agent data dir is $(mode "$AGENT_HOME")"
[ "$(mode "$AGENT_HOME/agent.redb")" = "600 gait-agent" ] || die "agent.redb is $(mode "$AGENT_HOME/agent.redb")"
say "deploy steps ok: aggregator served as gait, agent-x connected as gait-agent, data private"
