"""Launcher environments read without starting a process group: OpenMPI's mpirun variables."""
import pytest

from megatron_core.errors import LaunchError
from megatron_core.training.initialize import adopt_openmpi_environment


def test_mpirun_on_one_host_becomes_rank_world_and_local_rank_with_a_local_rendezvous():
    env = {"OMPI_COMM_WORLD_RANK": "3", "OMPI_COMM_WORLD_SIZE": "4", "OMPI_COMM_WORLD_LOCAL_RANK": "3",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "4"}
    adopt_openmpi_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"]) == ("3", "4", "3")
    assert (env["MASTER_ADDR"], env["MASTER_PORT"]) == ("127.0.0.1", "29500")


def test_mpirun_keeps_a_given_rendezvous_across_hosts():
    env = {"OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_RANK": "0",
           "OMPI_COMM_WORLD_LOCAL_SIZE": "1", "MASTER_ADDR": "10.0.0.1", "MASTER_PORT": "6000"}
    adopt_openmpi_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"], env["LOCAL_RANK"], env["MASTER_ADDR"]) == ("1", "2", "0", "10.0.0.1")


def test_mpirun_across_hosts_without_master_addr_is_one_sentence():
    env = {"OMPI_COMM_WORLD_RANK": "0", "OMPI_COMM_WORLD_SIZE": "2", "OMPI_COMM_WORLD_LOCAL_SIZE": "1"}
    with pytest.raises(LaunchError, match=r"-x MASTER_ADDR=<the host of rank 0> -x MASTER_PORT=29500"):
        adopt_openmpi_environment(env)


def test_torchrun_variables_win_over_openmpi_ones():
    env = {"RANK": "0", "WORLD_SIZE": "2", "OMPI_COMM_WORLD_RANK": "1", "OMPI_COMM_WORLD_SIZE": "8"}
    adopt_openmpi_environment(env)
    assert (env["RANK"], env["WORLD_SIZE"]) == ("0", "2")


# --- launcher environments that cannot make a world: one sentence before any process group ------------

from megatron_core.training.initialize import check_backend, check_launcher_environment  # noqa: E402

pytestmark = pytest.mark.quick

TORCHRUN_ENV = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2",
                "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29500"}


def test_a_torchrun_environment_and_no_launcher_at_all_pass():
    check_launcher_environment(dict(TORCHRUN_ENV))
    check_launcher_environment({})


@pytest.mark.parametrize("change, sentence", [
    ({"MASTER_ADDR": None}, r"sets RANK, WORLD_SIZE, MASTER_PORT but not MASTER_ADDR; launch with torchrun"),
    ({"WORLD_SIZE": "two"}, r"WORLD_SIZE='two' .* not a positive integer"),
    ({"WORLD_SIZE": "0"}, r"WORLD_SIZE='0' .* not a positive integer"),
    ({"RANK": "2"}, r"RANK='2' is not in \[0, WORLD_SIZE=2\)"),
    ({"RANK": "-1"}, r"RANK='-1' is not in \[0, WORLD_SIZE=2\)"),
    ({"LOCAL_RANK": "2"}, r"LOCAL_RANK='2' is not in \[0, 2\)"),
    ({"MASTER_PORT": "70000"}, r"MASTER_PORT='70000' is not a TCP port"),
    ({"MASTER_ADDR": "no-such-host.invalid"}, r"MASTER_ADDR='no-such-host.invalid' does not resolve"),
])
def test_a_launcher_environment_that_does_not_add_up_is_one_sentence_naming_the_variable(change, sentence):
    env = dict(TORCHRUN_ENV)
    for name, value in change.items():
        if value is None:
            del env[name]
        else:
            env[name] = value
    with pytest.raises(LaunchError, match=sentence) as caught:
        check_launcher_environment(env)
    assert "\n" not in str(caught.value)


def test_nccl_without_cuda_or_beyond_the_visible_devices_is_one_sentence_and_gloo_always_passes():
    check_backend("gloo", local_rank=3, cuda_devices=0)
    check_backend("nccl", local_rank=1, cuda_devices=2)
    with pytest.raises(LaunchError, match=r"--distributed-backend nccl needs CUDA.*--distributed-backend gloo"):
        check_backend("nccl", local_rank=0, cuda_devices=0)
    with pytest.raises(LaunchError, match=r"LOCAL_RANK=2 but this host shows 2 CUDA device"):
        check_backend("nccl", local_rank=2, cuda_devices=2)
