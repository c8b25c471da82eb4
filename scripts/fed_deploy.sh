#!/usr/bin/env bash
# Federated training with real processes on this machine (loopback):
#   one Flower SuperLink with TLS (a CA and a server certificate generated here with openssl) and
#   SuperNode authentication (each branch's P-384 key registered with `flwr supernode register`),
#   one SuperNode per branch (node config: branch='<name>'), then `flwr run` of findial's Flower App
#   (ServerApp + ClientApp of findial.federated), and on exit every process it started is stopped.
#
#   bash scripts/fed_deploy.sh [HYDRA_OVERRIDE ...]          e.g. model=tiny rounds=2 federated=fedprox
#
# Environment:
#   BRANCHES        comma-separated branches, one SuperNode each (default shanghai,beijing,shenzhen)
#   FINDIAL_HOME    where the run writes (MLflow store, packages, bundle, federation.json); default ./findial-runs
#   DROP_BRANCH     drop-out drill: kill this branch's SuperNode once round DROP_ROUND (default 2) has started
#   FED_TIMEOUT     seconds the whole run may take (default 3600)
#   KEEP_WORKDIR=1  keep the certificates, keys and process logs (printed path)
# A branch's own data and privacy are set on its SuperNode, never by the server:
#   NODE_CONFIG_<branch>="train-file='/data/train.jsonl' val-file='/data/val.jsonl' privacy-mode='local'
#                         privacy-clipping-norm=1.0 privacy-local-epsilon=2.0 privacy-local-delta=1e-5"
#   (or privacy-file='/etc/findial/privacy.yaml'); without train-file, the bundled corpus of that branch.
# The overrides given here reach the server whole; branches receive only the federation keys they accept
# (rounds, local_epochs, seed, model, tasks, aggregation, sampling: federated/config.py); data.* and
# paths.* overrides reach the server only.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV_BIN=${VENV_BIN:-$ROOT/.venv/bin}
[ -x "$VENV_BIN/flower-superlink" ] || bash "$ROOT/scripts/bootstrap.sh"
export PATH="$VENV_BIN:$PATH"   # SuperLink/SuperNode start flower-superexec, flwr-serverapp, flwr-clientapp from PATH
PY="$VENV_BIN/python"
HELP="$PY -m findial.federated.deploy"
BRANCHES=${BRANCHES:-shanghai,beijing,shenzhen}
mkdir -p "${FINDIAL_HOME:-findial-runs}"
export FINDIAL_HOME=$(cd "${FINDIAL_HOME:-findial-runs}" && pwd)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/findial-fed-XXXXXX")
export FLWR_HOME="$WORK/flwr"   # the Flower CLI's and the nodes' state, not ~/.flwr
MARK="FINDIAL_FED_DEPLOY=$WORK" # every process started here carries this in its environment
mkdir -p "$WORK/certs" "$WORK/keys" "$WORK/logs" "$FLWR_HOME"
PGIDS=()
WATCHER=""

marked_pids() {  # processes (of any session) started by this script, found by their environment
  grep -lasF -- "$MARK" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3 | grep -vx "$$" || true
}

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  [ -n "$WATCHER" ] && kill "$WATCHER" 2>/dev/null || true
  for g in "${PGIDS[@]}"; do kill -TERM -- "-$g" 2>/dev/null || true; done
  for _ in $(seq 1 30); do
    [ -z "$(marked_pids)" ] && break
    sleep 0.5
  done
  for p in $(marked_pids); do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$status" -ne 0 ]; then
    echo "fed_deploy: failed (exit $status); last lines of each process log:" >&2
    for f in "$WORK"/logs/*.log; do [ -f "$f" ] && { echo "== $(basename "$f")" >&2; tail -n 15 "$f" >&2; }; done
  fi
  if [ "${KEEP_WORKDIR:-0}" = 1 ]; then echo "fed_deploy: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

start() {  # start NAME CMD...: own process group, marked, logged
  local name=$1; shift
  env "$MARK" setsid "$@" >"$WORK/logs/$name.log" 2>&1 &
  PGIDS+=("$!")
  echo "$!" >"$WORK/$name.pid"
}

echo "fed_deploy: certificates and keys in $WORK"
(
  cd "$WORK/certs"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=findial-fed-ca" -keyout ca.key -out ca.crt 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
  printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
    "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >server.ext
  openssl x509 -req -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial -days 2 -extfile server.ext \
    -out server.pem 2>/dev/null
  openssl verify -CAfile ca.crt server.pem >/dev/null
)
IFS=, read -r -a BRANCH_LIST <<<"$BRANCHES"
for b in "${BRANCH_LIST[@]}"; do $HELP node-key "$WORK/keys/$b.key" "$WORK/keys/$b.pub"; done

PORT=$($HELP free-port)
start superlink flower-superlink --ssl-ca-certfile "$WORK/certs/ca.crt" --ssl-certfile "$WORK/certs/server.pem" \
  --ssl-keyfile "$WORK/certs/server.key" --enable-supernode-auth --disable-runtime-dependency-installation \
  --host 127.0.0.1 --port "$PORT"
$HELP wait-port "$PORT" 120 || { echo "fed_deploy: the SuperLink did not start" >&2; exit 1; }
$HELP flwr-home "$FLWR_HOME" "127.0.0.1:$PORT" "$WORK/certs/ca.crt" >/dev/null
echo "fed_deploy: SuperLink on https://127.0.0.1:$PORT (TLS, SuperNode authentication on)"

for b in "${BRANCH_LIST[@]}"; do
  flwr supernode register "$WORK/keys/$b.pub" findial --name "$b" >"$WORK/logs/register-$b.log" 2>&1
  node_port=$($HELP free-port)
  extra_var="NODE_CONFIG_$b"
  start "supernode-$b" flower-supernode --root-certificates "$WORK/certs/ca.crt" --superlink "127.0.0.1:$PORT" \
    --auth-supernode-private-key "$WORK/keys/$b.key" --node-config "branch='$b' ${!extra_var:-}" \
    --host 127.0.0.1 --port "$node_port"
  echo "fed_deploy: SuperNode $b started (registered key $WORK/keys/$b.pub)"
done

$HELP app "$WORK/app" "paths.home=$FINDIAL_HOME" "branches=$BRANCHES" "$@" >/dev/null
SINCE=$(date +%s)
if [ -n "${DROP_BRANCH:-}" ]; then
  (
    want=${DROP_ROUND:-2}
    until [ "$(grep -c 'configure_train' "$WORK/logs/run.log" 2>/dev/null || true)" -ge "$want" ]; do sleep 1; done
    sleep 2
    echo "fed_deploy: drill: stopping SuperNode $DROP_BRANCH during round $want" >&2
    kill -TERM -- "-$(cat "$WORK/supernode-$DROP_BRANCH.pid")" 2>/dev/null || true
  ) &
  WATCHER=$!
fi
echo "fed_deploy: flwr run (logs stream below)"
PYTHONUNBUFFERED=1 timeout "${FED_TIMEOUT:-3600}" flwr run "$WORK/app" findial --run-config "$WORK/app/run_config.toml" --stream 2>&1 \
  | tee "$WORK/logs/run.log"
$HELP result "$FINDIAL_HOME" "$SINCE"
