#!/bin/sh
# Slurm Epilog (slurmd runs it as root on each node when a job ends there, with SLURM_JOB_ID):
# kill everything left of the job's tracker slot, `slurm-<jobid>` (made and filled by
# spank_tracker.so), wherever it went - double-forked daemons, new sessions, other cgroups -
# record the job's usage as JSON, and release the slot.
#
# Exit status: slurmd drains a node whose Epilog fails, so this fails only when processes of
# the job are still alive after the kill (as Slurm does for unkillable processes). A job with
# no slot on this node (it never ran a task here, or ran before the plugin was installed) and
# any trouble of the tracker itself are logged and let the node be.
#
# Settings, from the first readable of: $TRACKER_SLURM_CONF, tracker.conf next to the
# slurm.conf slurmd uses (it passes SLURM_CONF), /etc/slurm/tracker.conf - a shell file:
#   TRACKER=/usr/local/bin/tracker        the tracker binary (default: that, else /usr/bin/tracker)
#   TRACKER_INSTANCE=                     the tracker instance (empty: the default one)
#   TRACKER_USAGE_DIR=/var/lib/tracker/slurm   where <jobid>.json records go
#   TRACKER_KILL_TIMEOUT=30               seconds the kill may take to empty the slot
#   TRACKER_EPILOG_LOG=                   a file to append this script's messages to
set -u

for conf in "${TRACKER_SLURM_CONF:-}" "$(dirname "${SLURM_CONF:-/etc/slurm/slurm.conf}")/tracker.conf" \
    /etc/slurm/tracker.conf; do
    if [ -n "$conf" ] && [ -r "$conf" ]; then
        # shellcheck source=/dev/null
        . "$conf"
        break
    fi
done
# Unset: build-and-load's /usr/local/bin/tracker, else the packages' /usr/bin/tracker.
tracker=${TRACKER:-}
if [ -z "$tracker" ]; then
    tracker=/usr/local/bin/tracker
    [ -x "$tracker" ] || tracker=/usr/bin/tracker
fi
usage_dir=${TRACKER_USAGE_DIR:-/var/lib/tracker/slurm}
kill_timeout=${TRACKER_KILL_TIMEOUT:-30}
log_file=${TRACKER_EPILOG_LOG:-}
job=${SLURM_JOB_ID:-}

log() {
    msg="tracker epilog: job ${job:-?}: $*"
    echo "$msg" >&2
    if [ -n "$log_file" ]; then
        echo "$(date '+%Y-%m-%dT%H:%M:%S') $msg" >>"$log_file" 2>/dev/null
    fi
    logger -t tracker-epilog -p daemon.notice "$msg" 2>/dev/null
    return 0
}

case $job in
'' | *[!0-9]*)
    log "SLURM_JOB_ID is \"$job\", not a job id: nothing to do"
    exit 0
    ;;
esac
slot=slurm-$job

trk() {
    if [ -n "${TRACKER_INSTANCE:-}" ]; then
        env -u TRACKER_LOG "$tracker" --instance "$TRACKER_INSTANCE" "$@"
    else
        env -u TRACKER_LOG -u TRACKER_INSTANCE "$tracker" "$@"
    fi
}

if [ ! -x "$tracker" ]; then
    log "$tracker is not an executable: cannot kill slot $slot"
    exit 0
fi

errors=$(mktemp "${TMPDIR:-/tmp}/tracker-epilog.XXXXXX") || exit 0
trap 'rm -f "$errors"' EXIT

kill_json=$(trk kill "$slot" --timeout "$kill_timeout" --json 2>"$errors")
kill_status=$?
if [ $kill_status -ne 0 ] && [ -z "$kill_json" ]; then
    # 3: no such slot (see the tracker's README).
    if [ $kill_status -eq 3 ]; then
        log "no slot $slot on this node: nothing to kill"
    else
        log "cannot kill slot $slot: $(head -n 3 "$errors")"
    fi
    exit 0
fi

if ! usage_json=$(trk stat "$slot" --json 2>"$errors") || [ -z "$usage_json" ]; then
    log "no usage from \`tracker stat\` ($(head -n 1 "$errors")); recording \`tracker slots\`"
    usage_json=$(trk slots --json 2>"$errors") || usage_json=null
    [ -n "$usage_json" ] || usage_json=null
fi

# One record per job and node, written whole or not at all.
(umask 022 && mkdir -p "$usage_dir") 2>/dev/null
record=$usage_dir/$job.json
tmp=$record.tmp.$$
if ! {
    printf '{\n"job_id": %s,\n"slot": "%s",\n"node": "%s",\n"ended_unix": %s,\n"kill": %s,\n"usage": %s\n}\n' \
        "$job" "$slot" "${SLURMD_NODENAME:-$(uname -n)}" "$(date +%s)" "$kill_json" "$usage_json" \
        >"$tmp" && mv -f "$tmp" "$record"
} 2>/dev/null; then
    rm -f "$tmp"
    log "cannot write the usage record $record"
fi

if [ $kill_status -ne 0 ]; then
    log "processes of slot $slot survived the kill; keeping the slot and failing (the node" \
        "drains): $(printf '%s' "$kill_json" | tr -s '\n ' '  ')"
    exit 1
fi

if ! trk release "$slot" >/dev/null 2>"$errors"; then
    log "cannot release slot $slot: $(head -n 1 "$errors")"
fi
exit 0
