#!/usr/bin/env bash
# Deployment check (`make deploy-check`): build the images, run the compose stack, drive real traffic
# through the API and the streams, check it from outside the containers, and leave nothing running.
#
#   1. dockerd: use the running one, or start one (and stop it at the end)
#   2. base images: pull python:3.11-slim, redis:7.2-alpine, prom/prometheus; what cannot be pulled
#      is made locally: a Debian bookworm base (docker/make-base.sh, debootstrap), Redis and
#      Prometheus from Debian's packages (docker/Dockerfile.{redis,prometheus}-debian)
#   3. build cmnrec-serve (torch-free: the build fails otherwise) and cmnrec-train (torch 2.13.0 CPU;
#      from $TORCH_WHEEL_DIR over a loopback HTTP server when it holds the wheel)
#   4. compose up redis, model (a short training run, docker/compose.check.yml), api (4 uvicorn
#      workers), worker, prometheus; Grafana is left out (its image cannot be had without Docker Hub)
#   5. checks from the host: /readyz; HTTP events then a parity answer (the API's top-10 for a user
#      equals `cmnrec predict` on the same items); MovieLens events into the streams, drained by the
#      worker; Prometheus's targets all up and every rule evaluated without error
#   6. teardown: compose down -v, remove the images and dangling layers this run made, stop what it
#      started; then check that none of it is left
#
# Needs root (or docker access), docker with a compose client (`docker compose` or docker-compose),
# curl, python3; debootstrap when the official images cannot be pulled.
# Environment: KEEP_IMAGES=1 keeps the images (faster reruns); TORCH_WHEEL_DIR (default /opt/wheels);
# DEBIAN_MIRROR (default http://deb.debian.org/debian); PULL_TIMEOUT seconds (default 60).
set -Eeuo pipefail
cd "$(dirname "$0")/.."

T0=$(date +%s)
PROJECT=cmnrec-check
KEEP_IMAGES=${KEEP_IMAGES:-0}
TORCH_WHEEL_DIR=${TORCH_WHEEL_DIR:-/opt/wheels}
DEBIAN_MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
PULL_TIMEOUT=${PULL_TIMEOUT:-60}
LOG_DIR=$(mktemp -d /tmp/cmnrec-check.XXXXXX)
export DOCKER_BUILDKIT=0  # the classic builder: no BuildKit cache left behind, works with docker.io 20.10

STARTED_DOCKERD=""
WHEEL_SERVER=""
BUILT_IMAGES=()
COMPOSE_UP=""
STEP_T=$T0

say() { printf '[%5.0fs] %s\n' "$(( $(date +%s) - T0 ))" "$*"; }
step() {  # step NAME: prints the time the previous step took
    local now; now=$(date +%s)
    say "== $* (previous step $(( now - STEP_T ))s)"
    STEP_T=$now
}
fail() { say "FAIL: $*"; exit 1; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null; then
    COMPOSE=(docker-compose)
else
    fail "no compose client (docker compose or docker-compose)"
fi
FILES=(-f docker-compose.yml -f docker/compose.check.yml)
compose() { "${COMPOSE[@]}" -p "$PROJECT" "${FILES[@]}" "$@"; }

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [ "$rc" -ne 0 ] && [ -n "$COMPOSE_UP" ]; then
        say "logs of the failed run (last 40 lines per service):"
        compose logs --no-color --tail 40 2>&1 | sed 's/^/    /'
    fi
    step "teardown"
    if [ -n "$WHEEL_SERVER" ]; then kill "$WHEEL_SERVER" 2>/dev/null; wait "$WHEEL_SERVER" 2>/dev/null; fi
    if [ -n "$COMPOSE_UP" ]; then
        compose down -v --remove-orphans --timeout 30 >"$LOG_DIR/down.log" 2>&1 \
            || { say "compose down failed:"; cat "$LOG_DIR/down.log"; }
    fi
    if [ "$KEEP_IMAGES" != 1 ] && [ ${#BUILT_IMAGES[@]} -gt 0 ]; then
        docker rmi -f "${BUILT_IMAGES[@]}" >/dev/null 2>&1
        # the build stages' images (multi-stage builds) and anything else left dangling by this run
        local dangling
        dangling=$(comm -13 <(sort -u <<<"${DANGLING_BEFORE:-}") \
                            <(docker images -qa --filter dangling=true | sort -u))
        [ -n "$dangling" ] && docker rmi -f $dangling >/dev/null 2>&1
        say "removed images: ${BUILT_IMAGES[*]}"
    fi
    local left
    left=$(docker ps -aq --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$left" ] && { say "containers left: $left"; rc=1; }
    left=$(docker volume ls -q --filter "label=com.docker.compose.project=$PROJECT" 2>/dev/null)
    [ -n "$left" ] && { say "volumes left: $left"; rc=1; }
    if [ -n "$STARTED_DOCKERD" ]; then
        kill "$STARTED_DOCKERD" 2>/dev/null
        for _ in $(seq 60); do kill -0 "$STARTED_DOCKERD" 2>/dev/null || break; sleep 0.5; done
        kill -0 "$STARTED_DOCKERD" 2>/dev/null && { say "dockerd $STARTED_DOCKERD did not stop"; rc=1; }
        say "stopped the dockerd this check started (pid $STARTED_DOCKERD)"
    fi
    rm -rf "$LOG_DIR"
    if [ "$rc" -eq 0 ]; then say "PASS: deployment check in $(( $(date +%s) - T0 ))s"
    else say "deployment check FAILED (exit $rc) after $(( $(date +%s) - T0 ))s"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------------------------------- 1. dockerd
step "docker daemon"
if docker info >/dev/null 2>&1; then
    say "using the running Docker daemon ($(docker info --format '{{.ServerVersion}}'))"
else
    command -v dockerd >/dev/null || fail "no Docker daemon running and no dockerd (Debian: apt-get install docker.io)"
    [ "$(id -u)" -eq 0 ] || fail "no Docker daemon running, and starting one needs root"
    dockerd >"$LOG_DIR/dockerd.log" 2>&1 &
    STARTED_DOCKERD=$!
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { tail -20 "$LOG_DIR/dockerd.log"; fail "dockerd did not start"; }
    say "started dockerd (pid $STARTED_DOCKERD): $(docker info --format '{{.ServerVersion}}, {{.Driver}}, cgroup v{{.CgroupVersion}}')"
fi
DANGLING_BEFORE=$(docker images -qa --filter dangling=true | sort -u)
IMAGES_BEFORE=$(docker images --format '{{.Repository}}:{{.Tag}}')
remember() {  # remember IMAGE: an image this run made (removed at the end unless KEEP_IMAGES=1)
    grep -qxF "$1" <<<"$IMAGES_BEFORE" || BUILT_IMAGES+=("$1")
}

# ------------------------------------------------------------------------------------ 2. base images
step "base images"
pull() { timeout "$PULL_TIMEOUT" docker pull -q "$1" >"$LOG_DIR/pull.log" 2>&1; }
if pull python:3.11-slim; then
    BASE_IMAGE=python:3.11-slim; remember "$BASE_IMAGE"
    say "pulled $BASE_IMAGE"
else
    say "cannot pull python:3.11-slim ($(tail -1 "$LOG_DIR/pull.log" | cut -c1-120)); making a local Debian base"
    BASE_IMAGE=cmnrec-check-base:bookworm
    remember "$BASE_IMAGE"
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        say "reusing $BASE_IMAGE (kept by an earlier KEEP_IMAGES=1 run)"
    else
        command -v debootstrap >/dev/null || fail "debootstrap needed to make the base image (apt-get install debootstrap)"
        docker/make-base.sh "$BASE_IMAGE" "$DEBIAN_MIRROR" 2>"$LOG_DIR/base.log" \
        || { tail -30 "$LOG_DIR/base.log"; fail "the local base image"; }
    fi
fi
if pull redis:7.2-alpine; then
    REDIS_IMAGE=redis:7.2-alpine; remember "$REDIS_IMAGE"
else
    REDIS_IMAGE=cmnrec-check-redis:latest; remember "$REDIS_IMAGE"
    say "cannot pull redis:7.2-alpine; building $REDIS_IMAGE from Debian's redis-server"
    docker build -q --force-rm --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f docker/Dockerfile.redis-debian -t "$REDIS_IMAGE" docker >"$LOG_DIR/redis.log" 2>&1 \
        || { tail -30 "$LOG_DIR/redis.log"; fail "redis image did not build"; }
fi
if pull prom/prometheus:v2.53.0; then
    PROMETHEUS_IMAGE=prom/prometheus:v2.53.0; remember "$PROMETHEUS_IMAGE"
else
    PROMETHEUS_IMAGE=cmnrec-check-prometheus:latest; remember "$PROMETHEUS_IMAGE"
    say "cannot pull prom/prometheus:v2.53.0; building $PROMETHEUS_IMAGE from Debian's prometheus"
    docker build -q --force-rm --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
        -f docker/Dockerfile.prometheus-debian -t "$PROMETHEUS_IMAGE" docker >"$LOG_DIR/prometheus.log" 2>&1 \
        || { tail -30 "$LOG_DIR/prometheus.log"; fail "prometheus image did not build"; }
fi
if pull grafana/grafana:11.1.0; then
    remember grafana/grafana:11.1.0
    say "pulled grafana/grafana:11.1.0 (not started by this check)"
else
    say "cannot pull grafana/grafana:11.1.0: Grafana is not part of this check (no local substitute)"
fi

# ---------------------------------------------------------------------------------- 3. cmnrec images
step "build cmnrec-serve"
remember cmnrec-serve:latest
docker build -q --force-rm --network host --build-arg BASE_IMAGE="$BASE_IMAGE" \
    -f docker/Dockerfile.serve -t cmnrec-serve:latest . >"$LOG_DIR/serve.log" 2>&1 \
    || { tail -30 "$LOG_DIR/serve.log"; fail "cmnrec-serve did not build"; }
docker run --rm --entrypoint python cmnrec-serve:latest -c \
    "import importlib.util as u, os; assert u.find_spec('torch') is None; assert os.getuid() != 0; print('    serve image: torch-free, uid', os.getuid())"
docker run --rm cmnrec-serve:latest --help >/dev/null || fail "cmnrec --help in the serve image"

step "build cmnrec-train"
remember cmnrec-train:latest
TORCH_ARGS=()
if compgen -G "$TORCH_WHEEL_DIR/torch-2.13.0+cpu-*.whl" >/dev/null; then
    WHEEL_PORT=$(free_port)
    python3 -m http.server --bind 127.0.0.1 "$WHEEL_PORT" --directory "$TORCH_WHEEL_DIR" \
        >"$LOG_DIR/wheels.log" 2>&1 &
    WHEEL_SERVER=$!
    TORCH_ARGS=(--build-arg "TORCH_FIND_LINKS=http://127.0.0.1:$WHEEL_PORT/")
    say "torch 2.13.0+cpu from $TORCH_WHEEL_DIR (served on 127.0.0.1:$WHEEL_PORT for the build)"
fi
docker build -q --force-rm --network host --build-arg BASE_IMAGE="$BASE_IMAGE" "${TORCH_ARGS[@]}" \
    -f docker/Dockerfile.train -t cmnrec-train:latest . >"$LOG_DIR/train.log" 2>&1 \
    || { tail -30 "$LOG_DIR/train.log"; fail "cmnrec-train did not build"; }
if [ -n "$WHEEL_SERVER" ]; then kill "$WHEEL_SERVER"; wait "$WHEEL_SERVER" 2>/dev/null || true; WHEEL_SERVER=""; fi
docker run --rm cmnrec-train:latest --help >/dev/null || fail "cmnrec --help in the train image"
docker run --rm --entrypoint python cmnrec-train:latest -c \
    "import torch; print('    train image: torch', torch.__version__, 'cuda', torch.cuda.is_available())"
docker images --format '    {{.Repository}}:{{.Tag}}  {{.Size}}' | grep -E "cmnrec|redis|prometheus|python" || true

# ------------------------------------------------------------------------------------ 4. the stack
step "compose up (redis, model: short training + export, api, worker, prometheus)"
export BASE_IMAGE REDIS_IMAGE PROMETHEUS_IMAGE
REDIS_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
GRAFANA_ADMIN_PASSWORD=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
API_KEY=$(python3 -c 'import secrets; print(secrets.token_hex(16))')
CMNREC_API_KEYS="check events:write,recommendations:read,admin $API_KEY"
export CMNREC_API_KEYS
CMNREC_API_PORT=$(free_port)
PROMETHEUS_PORT=$(free_port)
export REDIS_PASSWORD GRAFANA_ADMIN_PASSWORD CMNREC_API_PORT PROMETHEUS_PORT
API=http://127.0.0.1:$CMNREC_API_PORT
PROM=http://127.0.0.1:$PROMETHEUS_PORT
COMPOSE_UP=1
compose up -d --no-build redis model api worker prometheus >"$LOG_DIR/up.log" 2>&1 \
    || { cat "$LOG_DIR/up.log"; fail "compose up"; }
compose ps

wait_http() {  # wait_http URL SECONDS
    for _ in $(seq $(( $2 * 2 ))); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.5
    done
    return 1
}
step "checks from the host"
wait_http "$API/readyz" 120 || fail "$API/readyz not ready"
say "GET /readyz: $(curl -fsS "$API/readyz")"
for service in api worker; do
    id=$(compose ps -q "$service")
    for _ in $(seq 90); do
        [ "$(docker inspect -f '{{.State.Health.Status}}' "$id")" = healthy ] && break; sleep 1
    done
    status=$(docker inspect -f '{{.State.Health.Status}}' "$id")
    say "$service container health: $status"
    [ "$status" = healthy ] || fail "$service is $status"
done

# parity: events over HTTP from the host, then the API's answer against `cmnrec predict` (torch)
ITEMS=(50 181 258 100 294 286 288 1 300 121 174 127 56 7 98 237 117 172 222 204)
for i in "${!ITEMS[@]}"; do
    code=$(curl -sS -o "$LOG_DIR/event.json" -w '%{http_code}' -X POST "$API/v1/events?n=0" \
        -H 'content-type: application/json' -H "X-API-Key: $API_KEY" \
        -d "{\"user_id\": \"check-parity\", \"item_id\": \"${ITEMS[$i]}\", \"event_id\": \"p$i\"}")
    [ "$code" = 200 ] || { cat "$LOG_DIR/event.json"; fail "POST /v1/events answered $code"; }
done
curl -fsS -H "X-API-Key: $API_KEY" "$API/v1/users/check-parity/recommendations?n=10" \
    >"$LOG_DIR/api.json"
ITEM_LIST=$(IFS=,; echo "${ITEMS[*]}")
compose run --rm --no-deps -T --entrypoint cmnrec model predict --run /runs/ml-100k \
    --items "$ITEM_LIST" --n 10 2>/dev/null | tail -1 >"$LOG_DIR/predict.json"
python3 - "$LOG_DIR/api.json" "$LOG_DIR/predict.json" "${#ITEMS[@]}" <<'EOF' || fail "parity"
import json, sys
api, offline = (json.load(open(path)) for path in sys.argv[1:3])
assert api["source"] == "model" and api["position"] == int(sys.argv[3]), api
got = [(r["item_id"], r["score"]) for r in api["recommendations"]]
want = [(r["item_id"], r["score"]) for r in offline["recommendations"]]
assert [i for i, _ in got] == [i for i, _ in want], (got, want)
worst = max(abs(a - b) for (_, a), (_, b) in zip(got, want))
assert worst <= 1e-4, worst
print(f"parity: the API's top-10 after {sys.argv[3]} events equals `cmnrec predict` "
      f"(same items in order, max |score diff| {worst:.2e}); top-3 {[i for i, _ in got[:3]]}")
EOF

# HTTP load: MovieLens events through the API (from a container on the compose network)
compose run --rm --no-deps -T -e "CMNREC_API_KEY=$API_KEY" --entrypoint cmnrec model replay \
    --dataset ml-100k --url http://api:8000 --limit 3000 --concurrency 8 >"$LOG_DIR/replay-http.log" 2>&1 \
    || { tail -20 "$LOG_DIR/replay-http.log"; fail "replay over HTTP"; }
say "replayed the first 3000 MovieLens events through the API (cmnrec replay --url, batches)"

# stream: MovieLens events into the partitioned streams, then the worker must drain them
compose run --rm --no-deps -T -e "REDIS_URL=redis://:$REDIS_PASSWORD@redis:6379/0" \
    --entrypoint cmnrec model replay --dataset ml-100k --stream --partitions 8 --limit 5000 \
    >"$LOG_DIR/replay-stream.log" 2>&1 || { tail -20 "$LOG_DIR/replay-stream.log"; fail "replay --stream"; }
say "published the first 5000 MovieLens events into 8 streams (cmnrec replay --stream)"

promql() {  # promql EXPR: the instant query's JSON
    curl -fsS -G "$PROM/api/v1/query" --data-urlencode "query=$1"
}
scalar() {  # scalar EXPR: the single value of a query (or "none")
    promql "$1" | python3 -c 'import json,sys; r=json.load(sys.stdin)["data"]["result"]; print(r[0]["value"][1] if r else "none")'
}
wait_http "$PROM/-/ready" 60 || fail "Prometheus not ready"
drained=""
for _ in $(seq 120); do
    handled=$(scalar 'sum(cmnrec_events_total{job="cmnrec-worker"}) + sum(cmnrec_worker_dead_letters_total{job="cmnrec-worker"})')
    backlog=$(scalar 'sum(cmnrec_worker_stream_lag_entries) + sum(cmnrec_worker_pending_entries)')
    if [ "$handled" != none ] && [ "$backlog" != none ] \
        && python3 -c "import sys; sys.exit(not (float('$handled') >= 5000 and float('$backlog') == 0))"; then
        drained=1; break
    fi
    sleep 1
done
say "worker (seen by Prometheus): handled $handled stream entries, backlog (lag + pending) $backlog"
[ -n "$drained" ] || fail "the worker did not drain the streams"
say "worker applied $(scalar 'sum(cmnrec_events_total{job="cmnrec-worker",outcome="applied"})'), duplicate $(scalar 'sum(cmnrec_events_total{job="cmnrec-worker",outcome="duplicate"})') (the 3000 events already sent over HTTP: same event ids), dead-lettered $(scalar 'sum(cmnrec_worker_dead_letters_total)'), owns $(scalar 'sum(cmnrec_worker_partitions_owned)') partitions"
say "API applied $(scalar 'sum(cmnrec_events_total{job="cmnrec-api",outcome="applied"})') events over HTTP; p99 latency of /v1 requests $(scalar 'histogram_quantile(0.99, sum by (le) (rate(cmnrec_request_latency_seconds_bucket{job="cmnrec-api",route=~"/v1/.*"}[5m])))') s (shared 2-core machine)"

curl -fsS "$PROM/api/v1/targets" | python3 -c '
import json, sys
targets = json.load(sys.stdin)["data"]["activeTargets"]
jobs = sorted({t["labels"]["job"] for t in targets})
assert jobs == ["cmnrec-api", "cmnrec-worker"], jobs
for t in targets:
    job, url, health = t["labels"]["job"], t["scrapeUrl"], t["health"]
    print(f"    target {job:14} {url:32} {health}")
assert all(t["health"] == "up" for t in targets), "a target is not up"
' || fail "Prometheus targets"
curl -fsS "$PROM/api/v1/rules" | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)["data"]["groups"] for r in g["rules"]]
bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] != "ok"]
assert rules and not bad, bad
firing = sorted({a["labels"]["alertname"] for r in rules for a in r.get("alerts", []) if a["state"] == "firing"})
print(f"    {len(rules)} rules loaded and evaluated without error; firing: {firing or None}")
' || fail "Prometheus rules"
say "all checks passed"
