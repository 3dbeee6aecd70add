"""What a Megatron-LM `common.pt` may pickle besides plain data, and the stand-ins that rebuild it.

Megatron-LM pickles its argparse Namespace as `args`, and a few of its flags hold
megatron-core enums (`--attention-backend` is an AttnBackend, `--cuda-graph-scope` a list of
CudaGraphScope, `model_type` a ModelType) or standard ones (`exit_signal` a signal.Signals). torch.load(weights_only=True) refuses any class it is not told about, and
importing megatron to rebuild them would run megatron's code; so each enum is rebuilt as a
stand-in with the same member names and values, registered under megatron's qualified name.
A stand-in's `.name` and `.value` read as the original's do.

ARGS_ALLOWLIST is what readers pass to `file_io.load_file(allow=...)`; a module that meets
another pickled class extends it with `ARGS_ALLOWLIST + ((StandIn, "module.Qualified"),)`.
"""
import argparse
import enum
import pathlib
import signal
import types


class AttnBackend(enum.Enum):
    flash = 1
    fused = 2
    unfused = 3
    local = 4
    auto = 5


class CudaGraphScope(enum.Enum):
    full_iteration = 1
    attn = 2
    mlp = 3
    moe = 4
    moe_router = 5
    moe_preprocess = 6
    mamba = 7


class RerunMode(str, enum.Enum):
    DISABLED = "disabled"
    VALIDATE_RESULTS = "validate_results"
    REPORT_DETERMINISM_STATS = "report_determinism_stats"


class RerunState(enum.Enum):
    NOT_RUNNING_YET = 0
    INITIAL_RUN = 1
    RERUNNING_IN_PLACE = 2
    WILL_RERUN_FROM_CHECKPOINT = 3
    RERUNNING_FROM_CHECKPOINT = 4
    RERUNNING_AGAIN_FROM_CHECKPOINT = 5


class RerunDiagnostic(str, enum.Enum):
    CORRECT_RESULT = "correct_result"
    TRANSIENT_ERROR = "transient_error"
    PERSISTENT_ERROR = "persistent_error"


class ModelType(enum.Enum):
    encoder_or_decoder = 1
    encoder_and_decoder = 2


class OptimizerConfig:
    """megatron-core's optimizer dataclass, rebuilt as a plain bag of its fields."""


# Megatron-LM's own list (megatron/core/safe_globals.py) less numpy: plain-data classes of
# the standard library, and megatron's classes by stand-in.
ARGS_ALLOWLIST = (
    argparse.Namespace, types.SimpleNamespace, pathlib.PosixPath, signal.Signals,
    (ModelType, "megatron.core.enums.ModelType"),
    (OptimizerConfig, "megatron.core.optimizer.optimizer_config.OptimizerConfig"),
    (RerunDiagnostic, "megatron.core.rerun_state_machine.RerunDiagnostic"),
    (AttnBackend, "megatron.core.transformer.enums.AttnBackend"),
    (CudaGraphScope, "megatron.core.transformer.enums.CudaGraphScope"),
    (RerunMode, "megatron.core.rerun_state_machine.RerunMode"),
    (RerunState, "megatron.core.rerun_state_machine.RerunState"),
)
