# shellcheck shell=bash
# Running a program built on the netns test bed (netns-tests/testbed), with
# a clean-up that holds whatever happens. Sourced, not run.
#
# The test bed names its namespaces tl<PID>-* after the PID of the program
# that made them, and removes them (and stops its daemons) when its guards
# drop. A guard does not drop when the program is killed by a signal (Ctrl-C
# on the script, `timeout`, SIGKILL) or aborts: then this clean-up stops every
# process still inside those namespaces, by PID, and deletes the namespaces.

# run_netns_program CMD...: runs CMD, waits for it, and returns its exit
# status; on any exit of the calling script (its end, an error, SIGINT,
# SIGTERM) the program and everything it left are stopped and removed.
run_netns_program() {
    NETNS_TMP=$(mktemp -d)
    trap netns_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    # Its temporary files (configs, keys, logs) go to a directory of ours.
    TMPDIR=$NETNS_TMP "$@" &
    NETNS_PID=$!
    local rc=0
    wait "$NETNS_PID" || rc=$?
    NETNS_DONE=1
    return "$rc"
}

netns_cleanup() {
    local rc=$?
    # `timeout` signals the script, then its whole process group: a second
    # SIGTERM must not cut this clean-up short (SIGKILL still can).
    trap - EXIT
    trap '' INT TERM
    if [ -n "${NETNS_PID:-}" ]; then
        if [ -z "${NETNS_DONE:-}" ] && kill -0 "$NETNS_PID" 2>/dev/null; then
            kill -TERM "$NETNS_PID" 2>/dev/null || true
            wait "$NETNS_PID" 2>/dev/null || true
        fi
        local ns pids left=()
        for ns in $(ip netns list | awk '{ print $1 }' | grep "^tl${NETNS_PID}-" || true); do
            mapfile -t pids < <(ip netns pids "$ns" 2>/dev/null || true)
            if [ "${#pids[@]}" -gt 0 ]; then
                kill -TERM "${pids[@]}" 2>/dev/null || true
                left+=("${pids[@]}")
            fi
        done
        if [ "${#left[@]}" -gt 0 ]; then
            echo "==> stopping ${#left[@]} process(es) left by the benchmark: ${left[*]}" >&2
            for _ in $(seq 1 50); do
                kill -0 "${left[@]}" 2>/dev/null || break
                sleep 0.1
            done
            kill -KILL "${left[@]}" 2>/dev/null || true
        fi
        for ns in $(ip netns list | awk '{ print $1 }' | grep "^tl${NETNS_PID}-" || true); do
            echo "==> deleting namespace $ns left by the benchmark" >&2
            ip netns del "$ns" 2>/dev/null || true
        done
    fi
    [ -n "${NETNS_TMP:-}" ] && rm -rf "$NETNS_TMP"
    exit "$rc"
}
