"""Pipeline parallelism: p2p exchange between stages and the forward/backward schedules."""
from .finalize_grads import finalize_model_grads
from .p2p import P2PConfig
from .schedules import get_forward_backward_func

__all__ = ["P2PConfig", "finalize_model_grads", "get_forward_backward_func"]
