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

A launcher environment that does not add up is one sentence naming the variables and the
fix before any process group could wait on a peer that never comes (check_launcher_environment):
some of RANK / WORLD_SIZE / MASTER_ADDR / MASTER_PORT without the others, a non-integer or
non-positive WORLD_SIZE, RANK outside [0, WORLD_SIZE), LOCAL_RANK outside [0, LOCAL_WORLD_SIZE),
a MASTER_PORT that is not a port, a MASTER_ADDR that does not resolve; nccl without CUDA or
with LOCAL_RANK beyond the visible devices. WORLD_SIZE against TP x PP is validate()'s.
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


def _integer(environ, name: str):
    try:
        return int(environ[name])
    except (KeyError, ValueError):
        return None


def check_launcher_environment(environ=os.environ) -> None:
    """Raise LaunchError (one sentence) when the launcher variables in `environ` cannot make a world.
    No variable at all is a single process and passes."""
    present = [name for name in LAUNCHER_VARIABLES if name in environ]
    if not present:
        return
    if len(present) != len(LAUNCHER_VARIABLES):
        missing = [name for name in LAUNCHER_VARIABLES if name not in environ]
        raise LaunchError(f"the environment sets {', '.join(present)} but not {', '.join(missing)}; launch with "
                          f"torchrun, deepspeed or mpirun, which set them all, or unset them to run a single "
                          f"process.")
    world_size, rank = _integer(environ, "WORLD_SIZE"), _integer(environ, "RANK")
    if world_size is None or world_size < 1:
        raise LaunchError(f"WORLD_SIZE={environ['WORLD_SIZE']!r} in the environment is not a positive integer; "
                          f"launch with torchrun --nproc-per-node N, or unset it to run a single process.")
    if rank is None or not 0 <= rank < world_size:
        raise LaunchError(f"RANK={environ['RANK']!r} is not in [0, WORLD_SIZE={world_size}); every process needs "
                          f"its own RANK from 0 to WORLD_SIZE-1: let the launcher set both.")
    if "LOCAL_RANK" in environ:
        local_rank, local_size = _integer(environ, "LOCAL_RANK"), _integer(environ, "LOCAL_WORLD_SIZE")
        bound = min(world_size, local_size) if local_size is not None else world_size
        if local_rank is None or not 0 <= local_rank < bound:
            raise LaunchError(f"LOCAL_RANK={environ['LOCAL_RANK']!r} is not in [0, {bound}) (WORLD_SIZE="
                              f"{world_size}, LOCAL_WORLD_SIZE={environ.get('LOCAL_WORLD_SIZE', 'unset')}); it "
                              f"numbers the processes of one host from 0: let the launcher set it.")
    port = _integer(environ, "MASTER_PORT")
    if port is None or not 0 < port < 65536:
        raise LaunchError(f"MASTER_PORT={environ['MASTER_PORT']!r} is not a TCP port (1-65535); set it to a free "
                          f"port of the host of rank 0, the same on every process.")
    address = environ["MASTER_ADDR"]
    try:
        socket.getaddrinfo(address, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):
        raise LaunchError(f"MASTER_ADDR={address!r} does not resolve to an address on this host; set it to the "
                          f"IP address (or a resolvable name) of the host of rank 0.") from None


def launcher_world_size() -> int:
    """WORLD_SIZE as the launcher set it (1 without a launcher), after the whole launcher environment
    (OpenMPI's adopted) was checked to add up."""
    adopt_openmpi_environment()
    check_launcher_environment()
    return int(os.environ.get("WORLD_SIZE", "1"))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _fill_single_process_environment() -> None:
    """A run without a launcher: a world of one, rendezvous on a free local port."""
    check_launcher_environment()
    if not any(name in os.environ for name in LAUNCHER_VARIABLES):
        os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(_free_port()))


def check_backend(backend: str, local_rank: int, cuda_devices: int) -> None:
    """nccl needs a CUDA device for this process: one sentence before init_process_group otherwise."""
    if backend != "nccl":
        return
    if cuda_devices == 0:
        raise LaunchError("--distributed-backend nccl needs CUDA, and this machine shows no CUDA device; "
                          "use --distributed-backend gloo, or drop the flag to choose by the hardware.")
    if local_rank >= cuda_devices:
        raise LaunchError(f"LOCAL_RANK={local_rank} but this host shows {cuda_devices} CUDA device(s); start "
                          f"at most {cuda_devices} processes per host (--nproc-per-node / slots=).")


def restart_store(timeout: datetime.timedelta) -> dist.Store:
    """The rendezvous store of this attempt: env:// 's (torchrun's agent store under torchrun), under
    a prefix naming the restart. torchrun --max-restarts keeps one store across the attempts of a
    group, so without the prefix the restarted ranks would read the dead attempt's addresses from
    it and gloo's connect would fail ("Connection refused"); every group made later (new_group)
    keys its entries under the default group's store, so the prefix covers them all."""
    store, _, _ = next(dist.rendezvous("env://", int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                                       timeout=timeout))
    return dist.PrefixStore(f"mcore/attempt{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)


def initialize_distributed(parallel: ParallelConfig, seed: int) -> None:
    """Process group, model-parallel groups and the seeded RNG streams of this rank."""
    timeout = datetime.timedelta(minutes=parallel.distributed_timeout_minutes)
    if not dist.is_initialized():
        _fill_single_process_environment()
        backend = parallel.backend()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        check_backend(backend, local_rank, torch.cuda.device_count() if torch.cuda.is_available() else 0)
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, store=restart_store(timeout), rank=int(os.environ["RANK"]),
                                world_size=int(os.environ["WORLD_SIZE"]), timeout=timeout)
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
