# Sourced by the launch scripts beside it; not run on its own.
#
#     launch ENTRY_POINT FLAGS...
#
# runs `python -m megatron_core.launch --hostfile $HOSTFILE ENTRY_POINT FLAGS "$@"` (the
# script's own arguments are appended, e.g. --train-iters 10): the hostfile is checked (one
# sentence, exit 2, for a missing or malformed one), then `deepspeed` runs with the same
# arguments. With --dry-run among the script's arguments, or DRY_RUN=1, it adds
# `--dry-run --vocab-size $VOCAB_SIZE` and megatron_core.launch runs instead, on this host,
#
#     python ENTRY_POINT --dry-run --vocab-size $VOCAB_SIZE FLAGS --dry-run-world-size <slots in $HOSTFILE>
#
# which validates the flags and the DeepSpeed config for the hostfile's world size, prints
# the parameter count and the memory estimate per rank, and exits: no data, tokenizer
# files, GPUs or DeepSpeed needed.

launch() {
    local entry=$1
    shift
    if [[ ! -s "$HOSTFILE" ]]; then
        echo "error: hostfile $HOSTFILE is missing or empty; set HOSTFILE to a file of 'host slots=N' lines (see hostfiles/)." >&2
        return 2
    fi
    local dry_run=()
    if [[ "${DRY_RUN:-0}" == "1" ]]; then dry_run=(--dry-run --vocab-size "$VOCAB_SIZE"); fi
    for arg in "$@"; do
        if [[ "$arg" == "--dry-run" ]]; then dry_run=(--dry-run --vocab-size "$VOCAB_SIZE"); fi
    done
    exec "${PYTHON:-python}" -m megatron_core.launch --hostfile "$HOSTFILE" "$entry" ${dry_run[@]+"${dry_run[@]}"} "$@"
}
