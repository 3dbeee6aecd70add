# Sourced by the launch scripts beside it; not run on its own.
#
#     launch ENTRY_POINT FLAGS...
#
# runs `deepspeed --hostfile $HOSTFILE ENTRY_POINT FLAGS "$@"` (the script's own arguments
# are appended, e.g. --train-iters 10). With DRY_RUN=1 it runs instead
#
#     python ENTRY_POINT FLAGS --dry-run --dry-run-world-size <slots in $HOSTFILE> --vocab-size $VOCAB_SIZE
#
# which validates the flags and the DeepSpeed config for the hostfile's world size, prints
# the parameter count and the memory estimate per rank, and exits: no data, tokenizer
# files, GPUs or DeepSpeed needed.

hostfile_slots() {
    # The world size a hostfile describes: the sum of its `slots=N` (DeepSpeed's format).
    if [[ ! -s "$1" ]]; then
        echo "error: hostfile $1 is missing or empty; set HOSTFILE to a file of 'host slots=N' lines (see hostfiles/)." >&2
        return 2
    fi
    awk '!/^[[:space:]]*(#|$)/ { for (i = 2; i <= NF; i++) if ($i ~ /^slots=/) { split($i, kv, "="); n += kv[2] } }
         END { print n + 0 }' "$1"
}

launch() {
    local entry=$1
    shift
    if [[ "${DRY_RUN:-0}" == "1" ]]; then
        local world
        world=$(hostfile_slots "$HOSTFILE") || return 2
        exec "${PYTHON:-python}" "$entry" "$@" --dry-run --dry-run-world-size "$world" --vocab-size "$VOCAB_SIZE"
    fi
    exec deepspeed --hostfile "$HOSTFILE" "$entry" "$@"
}
