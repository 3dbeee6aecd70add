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
