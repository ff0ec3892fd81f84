#!/bin/sh
# Model-sync sidecar (rclone image, busybox sh). Copies each version of the model from
# object storage into the local model repository, atomically: into a '.'-prefixed staging
# dir on the same volume (ignored by the server), then one rename to the integer name.
# Versions are immutable: one already present is never rewritten; nothing is deleted.
set -u
ROOT=${MODELS_ROOT:-/models}
MODEL=${DEGRE_MODEL_NAME:-degre}
REMOTE=${MODEL_REMOTE:?set MODEL_REMOTE, e.g. models:bucket/path (the dir holding <model>/<version>/)}
KEEP=${SYNC_VERSIONS:-3}              # newest remote versions to copy (plus a pinned one)
PIN=${DEGRE_MODEL_VERSION:-}          # the rollback pin, shared with the server's config
INTERVAL=${SYNC_INTERVAL_SECONDS:-30}
FIRST_TIMEOUT=${FIRST_SYNC_TIMEOUT_SECONDS:-120}
STARTED=${STARTED_MARKER:-/tmp/first-sync-done}   # the startupProbe waits for it
export RCLONE_CONFIG="${RCLONE_CONFIG-}"   # empty: remote from RCLONE_CONFIG_<NAME>_* env only

log() { echo "model-sync: $*" >&2; }

# One pass; fails if the remote cannot be listed or a version cannot be copied.
sync_once() {
  dir="$ROOT/$MODEL"
  mkdir -p "$dir" || return 1
  listing=$(rclone lsf --dirs-only "$REMOTE/$MODEL") || return 1
  wanted=$(printf '%s\n' "$listing" | tr -d / | grep -E '^[0-9]+$' | sort -rn | head -n "$KEEP")
  [ -n "$PIN" ] && wanted="$wanted
$PIN"
  status=0
  for v in $wanted; do
    [ -d "$dir/$v" ] && continue
    # Publishers upload manifest.json last: without it the version is still being written.
    if ! rclone lsf --files-only "$REMOTE/$MODEL/$v" | grep -qx manifest.json; then
      log "version $v has no manifest.json yet, skipped"
      continue
    fi
    staging="$dir/.staging-$v"
    rm -rf "$staging"
    if rclone copy "$REMOTE/$MODEL/$v" "$staging" && mv "$staging" "$dir/$v"; then
      log "version $v synced"
    else
      log "version $v failed to sync, retried next pass"
      rm -rf "$staging"
      status=1
    fi
  done
  return $status
}

trap 'exit 0' TERM INT
rm -rf "$ROOT/$MODEL"/.staging-* 2>/dev/null
# The server starts after the first full pass, so it loads the model at once; if storage
# stays unreachable, it starts anyway (and stays NOT_SERVING, alerting) after FIRST_TIMEOUT.
deadline=$(( $(date +%s) + FIRST_TIMEOUT ))
until sync_once; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    log "first sync incomplete after ${FIRST_TIMEOUT}s; letting the server start"
    break
  fi
  sleep 5
done
touch "$STARTED"
while true; do
  # Backgrounded so that SIGTERM ends the wait at once.
  sleep "$INTERVAL" &
  wait $!
  sync_once || log "pass failed, retried in ${INTERVAL}s"
done
