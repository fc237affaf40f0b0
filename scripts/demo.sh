#!/usr/bin/env bash
# The README's first command: set everything up, run the sample job on examples/, show results.
#
# Sets up .venv, makes sure Postgres and Redis run, starts an S3 server (moto, on loopback) when
# MONKEYJOBS_S3_ENDPOINT_URL is unset, makes a tiny random model when MONKEYJOBS_MODEL is unset,
# migrates a demo database, creates an API key, starts the API and a worker in the background
# (logs under var/), submits examples/* and waits with a progress bar, prints the answers and
# where they are in S3. Everything it started is stopped when it exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

bash scripts/setup.sh
bash scripts/services.sh
. .venv/bin/activate

VAR="$ROOT/var"
mkdir -p "$VAR"
PIDS=()
stop_all() {
  local pid
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
  done
}
trap stop_all EXIT
trap 'exit 130' INT TERM

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_http() {  # URL SECONDS NAME LOG
  for _ in $(seq 1 $(($2 * 5))); do
    if curl -s -o /dev/null "$1"; then return 0; fi
    sleep 0.2
  done
  echo "$3 did not start; the end of $4:" >&2
  tail -n 30 "$4" >&2
  exit 1
}
say() { printf '\n== %s\n' "$*"; }
mj() { monkeyjobs --log-level WARNING "$@"; }  # the commands' own output, without library logs

# --- S3 -------------------------------------------------------------------------------------------
if [ -z "${MONKEYJOBS_S3_ENDPOINT_URL:-}" ]; then
  S3_PORT=$(free_port)
  say "starting a local S3 server (moto) on 127.0.0.1:$S3_PORT"
  python -m moto.server -H 127.0.0.1 -p "$S3_PORT" >"$VAR/s3.log" 2>&1 &
  PIDS+=($!)
  export MONKEYJOBS_S3_ENDPOINT_URL="http://127.0.0.1:$S3_PORT"
  export AWS_ACCESS_KEY_ID=demo AWS_SECRET_ACCESS_KEY=demo AWS_DEFAULT_REGION=us-east-1
  wait_http "$MONKEYJOBS_S3_ENDPOINT_URL" 30 "the S3 server" "$VAR/s3.log"
fi
export MONKEYJOBS_S3_BUCKET="${MONKEYJOBS_S3_BUCKET:-monkeyjobs-demo}"
python -c 'from jobs.storage import get_storage; get_storage().ensure_bucket()'

# --- model ----------------------------------------------------------------------------------------
SUBMIT_OPTIONS=()
if [ -z "${MONKEYJOBS_MODEL:-}" ]; then
  # A random model never says "stop": cap its noise so that the CPU demo takes seconds.
  SUBMIT_OPTIONS=(--option max_new_tokens=24)
  [ -f "$VAR/tiny-model/config.json" ] || mj model make-tiny "$VAR/tiny-model" >/dev/null
  export MONKEYJOBS_MODEL="$VAR/tiny-model"
  cat <<'EOF'

  ###########################################################################################
  ##  MONKEYJOBS_MODEL is not set: this demo uses a TINY RANDOM model made on the spot.     ##
  ##  Its answers are NOISE. The pipeline is real; the words are not.                       ##
  ##  For real answers: MONKEYJOBS_MODEL=mx262/MiniMonkey (or a local checkpoint directory).##
  ###########################################################################################
EOF
fi

# --- database and broker --------------------------------------------------------------------------
export MONKEYJOBS_DATABASE_URL="${MONKEYJOBS_DATABASE_URL:-postgresql+psycopg://postgres@127.0.0.1:5432/monkeyjobs_demo}"
export MONKEYJOBS_BROKER_URL="${MONKEYJOBS_BROKER_URL:-redis://127.0.0.1:6379/0}"
python - <<'EOF'
import os
import psycopg
from sqlalchemy.engine import make_url

url = make_url(os.environ["MONKEYJOBS_DATABASE_URL"])
admin = url.set(drivername="postgresql", database="postgres").render_as_string(hide_password=False)
with psycopg.connect(admin, autocommit=True) as conn:
    if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (url.database,)).fetchone():
        conn.execute(f'CREATE DATABASE "{url.database}"')
        print(f"created database {url.database}")
EOF
mj db upgrade
export MONKEYJOBS_API_KEY=$(mj admin create-key --tenant demo | tail -n 1)

# --- API and worker -------------------------------------------------------------------------------
API_PORT=${MONKEYJOBS_DEMO_API_PORT:-$(free_port)}
export MONKEYJOBS_API_URL="http://127.0.0.1:$API_PORT"
say "starting the API on $MONKEYJOBS_API_URL and a worker for the ingest and gpu queues (logs: var/)"
monkeyjobs api --host 127.0.0.1 --port "$API_PORT" >"$VAR/api.log" 2>&1 &
PIDS+=($!)
monkeyjobs worker --queues ingest,gpu >"$VAR/worker.log" 2>&1 &
PIDS+=($!)
wait_http "$MONKEYJOBS_API_URL/healthz" 60 "the API" "$VAR/api.log"

# --- the job --------------------------------------------------------------------------------------
say "submitting examples/ (OCR) and waiting"
SUBMIT_OUT="$VAR/submit.out"
mj submit examples/*.pdf examples/*.png examples/*.tiff --task ocr "${SUBMIT_OPTIONS[@]}" --wait \
  | tee "$SUBMIT_OUT"
JOB_ID=$(grep -oE '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}' "$SUBMIT_OUT" | head -n 1)

say "answers of job $JOB_ID"
mj results "$JOB_ID"
say "each document's JSONL, downloaded through the API's presigned URLs"
mj results "$JOB_ID" -o "$VAR/demo-results"

say "where the results are in S3 ($MONKEYJOBS_S3_ENDPOINT_URL)"
JOB_ID="$JOB_ID" python - <<'EOF'
import os
from jobs.storage import get_storage

storage = get_storage()
prefix = storage.manifest_key(os.environ["JOB_ID"]).rsplit("/", 1)[0] + "/"
listing = storage.client.list_objects_v2(Bucket=storage.bucket, Prefix=prefix)
for item in listing.get("Contents", []):
    print(f"  {storage.uri(item['Key'])}  ({item['Size']} bytes)")
EOF
say "done; stopping what this script started"
