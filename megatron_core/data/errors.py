"""DataError now lives in `megatron_core.errors`; this name stays for existing imports."""
from megatron_core.errors import DataError

__all__ = ["DataError"]
