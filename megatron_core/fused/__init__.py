"""Fused ops: our CUDA kernels (csrc/fused, built by setup.py), else Apex's, else torch.

    scaled_masked_softmax, scaled_upper_triang_masked_softmax   softmax.py
    layer_norm, rms_norm                                        norms.py
    bias_gelu                                                   bias_gelu.py
    bias_dropout_add                                            bias_dropout_add.py
    apply_rotary                                                rotary.py

Every op takes `enabled` (TransformerConfig.fused_kernels, off with --no-fused-kernels)
and runs its pure-torch fallback when disabled, on CPU tensors, or when neither our
extension nor Apex can run it; dispatch.py holds that choice. Each fallback has the
kernel's semantics (see each module), and the tests hold both to an fp64 reference.
"""
from .bias_dropout_add import bias_dropout_add
from .bias_gelu import bias_gelu
from .dispatch import kernels_available
from .norms import layer_norm, rms_norm
from .rotary import apply_rotary
from .softmax import causal_mask, scaled_masked_softmax, scaled_upper_triang_masked_softmax

__all__ = ["apply_rotary", "bias_dropout_add", "bias_gelu", "causal_mask", "kernels_available", "layer_norm",
           "rms_norm", "scaled_masked_softmax", "scaled_upper_triang_masked_softmax"]
