"""Start torch.distributed from the launcher's environment, then the model-parallel groups and seeds.

    world_size = launcher_world_size()            # before anything else: validate() needs it
    validate(args, world_size)                    # a bad flag is one sentence, no process group yet
    initialize_distributed(run.parallel, run.training.seed)

torchrun (and the DeepSpeed launcher) set RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and
MASTER_PORT. `mpirun -np N` (OpenMPI) sets OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK
instead: they are adopted as RANK / WORLD_SIZE / LOCAL_RANK (no mpi4py needed); the
rendezvous is MASTER_ADDR / MASTER_PORT when given (`mpirun -x MASTER_ADDR=host0 -x
MASTER_PORT=29500`), else 127.0.0.1:29500 when every rank is on this host, and a
multi-host mpirun without them is one sentence. A plain `python pretrain_gpt.py ...` sets
none of them: it becomes a world of one on a free local port. The collective backend is
ParallelConfig.backend(): nccl when CUDA is available, gloo otherwise
(--distributed-backend overrides). On CUDA each process takes the device LOCAL_RANK.
"""
from __future__ import annotations

import datetime
import os
import socket

import torch
import torch.distributed as dist

from .. import mpu
from ..errors import LaunchError
from .config import ParallelConfig

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
MPI_DEFAULT_PORT = "29500"


def adopt_openmpi_environment(environ=os.environ) -> None:
    """Under `mpirun` (OMPI_COMM_WORLD_* set, RANK not): fill RANK, WORLD_SIZE, LOCAL_RANK and the
    rendezvous from OpenMPI's variables, in `environ`."""
    if "RANK" in environ or "OMPI_COMM_WORLD_RANK" not in environ:
        return
    size = environ.get("OMPI_COMM_WORLD_SIZE", "1")
    environ.update(RANK=environ["OMPI_COMM_WORLD_RANK"], WORLD_SIZE=size,
                   LOCAL_RANK=environ.get("OMPI_COMM_WORLD_LOCAL_RANK", "0"))
    if "MASTER_ADDR" not in environ:
        if environ.get("OMPI_COMM_WORLD_LOCAL_SIZE", size) != size:
            raise LaunchError(f"mpirun started {size} ranks over several hosts but MASTER_ADDR is not set; pass "
                              f"-x MASTER_ADDR=<the host of rank 0> -x MASTER_PORT={MPI_DEFAULT_PORT} to mpirun.")
        environ["MASTER_ADDR"] = "127.0.0.1"
    environ.setdefault("MASTER_PORT", MPI_DEFAULT_PORT)


def launcher_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 without a launcher), checked to be a positive integer."""
    adopt_openmpi_environment()
    value = os.environ.get("WORLD_SIZE", "1")
    try:
        world_size = int(value)
    except ValueError:
        world_size = 0
    if world_size < 1:
        raise LaunchError(f"WORLD_SIZE={value!r} in the environment is not a positive integer; launch with "
                          f"torchrun --nproc-per-node N, or unset it to run a single process.")
    return world_size


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill_single_process_environment() -> None:
    """A run without a launcher: a world of one, rendezvous on a free local port."""
    present = [name for name in LAUNCHER_VARIABLES if name in os.environ]
    if present and len(present) != len(LAUNCHER_VARIABLES):
        missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
        raise LaunchError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}; launch with "
                          f"torchrun, or unset them all to run a single process.")
    if not present:
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))


def initialize_distributed(parallel: ParallelConfig, seed: int) -> None:
    """Process group, model-parallel groups and the seeded RNG streams of this rank."""
    timeout = datetime.timedelta(minutes=parallel.distributed_timeout_minutes)
    if not dist.is_initialized():
        _fill_single_process_environment()
        backend = parallel.backend()
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=timeout)
    if dist.get_world_size() != parallel.world_size:
        raise LaunchError(f"the process group has {dist.get_world_size()} ranks but the flags were checked for "
                          f"{parallel.world_size}; set WORLD_SIZE to the number of launched processes.")
    mpu.initialize_model_parallel(parallel.tensor_model_parallel_size, parallel.pipeline_model_parallel_size,
                                  parallel.virtual_pipeline_model_parallel_size,
                                  parallel.pipeline_model_parallel_split_rank, timeout=timeout)
    mpu.model_parallel_manual_seed(seed)


def shutdown_distributed() -> None:
    mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
