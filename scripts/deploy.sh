#!/usr/bin/env bash
# Deploys a named environment of meshrtc to Google Cloud: images to Artifact Registry, Firestore
# indexes, one Cloud Run worker per peer, the proxy, gossip-push and its Cloud Scheduler job.
#
# Usage: scripts/deploy.sh <env> [--dry-run] [--tag TAG] [--out DIR]
#   <env>       reads deploy/env/<env>.env (see deploy/env/sample.env for every variable)
#   --dry-run   prints every command it would run (one per line, prefixed "+ ") and runs none;
#               the rendered manifests are still written, so they can be checked
#   --tag TAG   image tag (default: the git commit)
#   --out DIR   where rendered manifests go (default: a temporary directory)
#
# Re-running is safe: services are replaced, the scheduler job updated, existing indexes kept.
# Secrets are not created here (a seed never passes through CI): each peer needs
# mesh-key-<peer>, and the mesh needs mesh-ice-servers and mesh-api-tokens (docs/OPERATIONS.md).
set -euo pipefail
cd "$(dirname "$0")/.."

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2; }

[ $# -ge 1 ] || usage
env_name=$1; shift
dry_run=""
tag=""
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) dry_run=1 ;;
    --tag) tag=${2:?--tag needs a value}; shift ;;
    --out) out=${2:?--out needs a directory}; shift ;;
    -h|--help) usage ;;
    *) echo "deploy.sh: unknown option $1" >&2; usage ;;
  esac
  shift
done

env_file="deploy/env/$env_name.env"
[ -f "$env_file" ] || { echo "deploy.sh: no environment $env_file" >&2; exit 2; }
# shellcheck disable=SC1090
set -a; . "$env_file"; set +a

required=(PROJECT PROJECT_NUMBER REGION REPOSITORY PEERS TRUST_SEEDS VPC_NETWORK VPC_SUBNET
          WORKER_SA PROXY_SA GOSSIP_SA SCHEDULER_SA)
missing=()
for v in "${required[@]}"; do [ -n "${!v:-}" ] || missing+=("$v"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "deploy.sh: $env_file lacks ${missing[*]}" >&2
  exit 2
fi
# PEERS: `id` or `id@region` (a peer in another region than REGION).
for spec in $PEERS; do
  p=${spec%%@*}
  [[ "$p" =~ ^[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?$ ]] || {
    echo "deploy.sh: peer id $p cannot name a Cloud Run service (lowercase letters, digits, '-')" >&2
    exit 2
  }
done

tag=${tag:-$(git rev-parse --short=12 HEAD 2>/dev/null || echo latest)}
registry="$REGION-docker.pkg.dev/$PROJECT/$REPOSITORY"
export IMAGE_WORKER="$registry/webrtc-worker:$tag"
export IMAGE_PROXY="$registry/signaling-proxy:$tag"
export IMAGE_GOSSIP="$registry/gossip-push:$tag"
export TRUST_SEEDS=${TRUST_SEEDS// /,}
# Images live in REGION's registry; a worker in another region pulls from there.
gossip_url="https://mesh-gossip-push-$PROJECT_NUMBER.$REGION.run.app"

if [ -z "$out" ]; then out=$(mktemp -d); fi
mkdir -p "$out"

# Runs a command, or in a dry run prints it, shell-quoted so it can be pasted.
run() {
  if [ -n "$dry_run" ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

# Like `run`, but a failure that only says the thing exists already is fine.
run_idempotent() {
  if [ -n "$dry_run" ]; then run "$@"; return; fi
  local err
  if ! err=$("$@" 2>&1); then
    if grep -qiE 'already exists|ALREADY_EXISTS' <<<"$err"; then return 0; fi
    echo "$err" >&2
    return 1
  fi
}

# Fills a manifest's ${VARS} from the environment; refuses to leave one unfilled.
render() {
  local template=$1 target=$2 names
  # Only our variables: anything else in the file stays as written (and is then refused).
  names=$(printf '${%s} ' "${required[@]}" IMAGE_WORKER IMAGE_PROXY IMAGE_GOSSIP PEER_ID PEER_REGION)
  envsubst "$names" <"$template" >"$target"
  if grep -nE '^[^#]*[$][{]' "$target" >&2; then
    echo "deploy.sh: $template has variables the environment does not set" >&2
    exit 1
  fi
}

echo "deploy.sh: environment $env_name, project $PROJECT, region $REGION, tag $tag" >&2
echo "deploy.sh: rendered manifests in $out" >&2

run gcloud config set project "$PROJECT"

# 1. Images.
run gcloud auth configure-docker "$REGION-docker.pkg.dev" --quiet
for target in webrtc-worker signaling-proxy gossip-push; do
  image="$registry/$target:$tag"
  run docker build -f deploy/Dockerfile --target "$target" -t "$image" .
  run docker push "$image"
done

# 2. Firestore indexes for the queries the services run (deploy/firestore.indexes.json).
python3 - deploy/firestore.indexes.json >"$out/indexes.args" <<'PY'
import json, sys
for index in json.load(open(sys.argv[1]))["indexes"]:
    fields = " ".join(
        f"--field-config=field-path={f['fieldPath']},order={f['order'].lower()}"
        for f in index["fields"])
    print(index["collectionGroup"], fields)
PY
while read -r collection fields; do
  # shellcheck disable=SC2086
  run_idempotent gcloud firestore indexes composite create --project "$PROJECT" \
    --collection-group="$collection" --query-scope=collection $fields --async
done <"$out/indexes.args"

# 3. Workers, one service per peer, each in its own region if it names one.
for spec in $PEERS; do
  peer=${spec%%@*}
  export PEER_ID=$peer
  export PEER_REGION=$REGION
  [ "$spec" = "$peer" ] || PEER_REGION=${spec#*@}
  render deploy/cloudrun/worker.yaml "$out/worker-$peer.yaml"
  run gcloud run services replace "$out/worker-$peer.yaml" --region "$PEER_REGION"
  # Internal ingress keeps the internet out; inside the VPC the proxy, gossip-push and the other
  # workers call it without ID tokens.
  run gcloud run services add-iam-policy-binding "mesh-worker-$peer" --region "$PEER_REGION" \
    --member=allUsers --role=roles/run.invoker
done

# 4. The proxy (public; its API checks its own tokens).
render deploy/cloudrun/proxy.yaml "$out/proxy.yaml"
run gcloud run services replace "$out/proxy.yaml" --region "$REGION"
run gcloud run services add-iam-policy-binding mesh-proxy --region "$REGION" \
  --member=allUsers --role=roles/run.invoker

# 5. gossip-push, invocable only by the scheduler's service account, every 2 minutes.
render deploy/cloudrun/gossip-push.yaml "$out/gossip-push.yaml"
run gcloud run services replace "$out/gossip-push.yaml" --region "$REGION"
run gcloud run services add-iam-policy-binding mesh-gossip-push --region "$REGION" \
  --member="serviceAccount:$SCHEDULER_SA" --role=roles/run.invoker
schedule=(--location "$REGION" --schedule "*/2 * * * *" --time-zone Etc/UTC
          --uri "$gossip_url/run" --http-method POST
          --oidc-service-account-email "$SCHEDULER_SA" --oidc-token-audience "$gossip_url"
          --attempt-deadline 60s)
if [ -n "$dry_run" ] || ! gcloud scheduler jobs describe mesh-gossip-push --location "$REGION" >/dev/null 2>&1; then
  run gcloud scheduler jobs create http mesh-gossip-push "${schedule[@]}"
else
  run gcloud scheduler jobs update http mesh-gossip-push "${schedule[@]}"
fi

echo "deploy.sh: done${dry_run:+ (dry run: nothing was changed)}" >&2
