// Host-side entry points of the fused CUDA kernels.
//
// This header is shared by the .cu files (compiled by nvcc) and by binding.cpp (compiled
// by the host compiler against torch's headers), so it uses plain C++ types only: raw
// pointers, sizes, a dtype tag and the cudaStream_t as void*. No ATen, no c10/cuda, no
// CUDA header: the CPU torch wheel lacks c10/cuda's generated headers, and this split
// lets CI compile every kernel without a CUDA torch.
//
// Every launcher enqueues its kernels on `stream` for the current device and returns
// nullptr, or the CUDA error's text. Inputs are contiguous unless strides are given;
// floating point math is done in fp32 whatever the storage type.
#pragma once

#include <cstdint>

namespace mcore_fused {

enum class DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

using Status = const char*;
using Stream = void*;  // cudaStream_t

// Strides (in elements) of a boolean mask broadcast to [batches, heads, sq, sk]; a
// broadcast dimension has stride 0.
struct MaskStrides {
  int64_t batch, head, query, key;
};

// ---- softmax over the last dim of scores [batches, heads, sq, sk] --------------------
// probs = softmax(scale * scores) over the keys a query may see; masked keys get 0 and a
// query that may see no key gets a row of zeros (Megatron's fused-softmax behaviour).
// `mask` (nullable; nonzero = masked) and/or `causal` (keys after q + sk - sq masked).
Status softmax_forward(DType dtype, const void* scores, const uint8_t* mask, MaskStrides mask_strides,
                       bool causal, void* probs, int64_t batches, int64_t heads, int64_t sq, int64_t sk,
                       float scale, Stream stream);
// grad_scores = scale * probs * (grad_probs - sum(grad_probs * probs)), per row.
Status softmax_backward(DType dtype, const void* grad_probs, const void* probs, void* grad_scores,
                        int64_t rows, int64_t sk, float scale, Stream stream);

// ---- LayerNorm / RMSNorm over the last dim of x [rows, cols] ---------------------------
// weight, bias nullable (bias is ignored by RMSNorm). mean is written for LayerNorm only
// (nullable for RMSNorm); rstd = 1 / sqrt(var + eps) (RMSNorm: 1 / sqrt(mean(x^2) + eps)).
Status norm_forward(DType dtype, bool rms, const void* x, const void* weight, const void* bias, void* y,
                    float* mean, float* rstd, int64_t rows, int64_t cols, float eps, Stream stream);
// Floats of scratch memory norm_backward needs for the weight/bias gradient partial sums.
int64_t norm_backward_workspace_floats(int64_t rows, int64_t cols);
// grad_x always; grad_weight / grad_bias when non-null (then weight must be given).
Status norm_backward(DType dtype, bool rms, const void* grad_y, const void* x, const void* weight,
                     const float* mean, const float* rstd, void* grad_x, void* grad_weight, void* grad_bias,
                     float* workspace, int64_t rows, int64_t cols, Stream stream);

// ---- bias + GeLU on x [rows, cols], bias [cols] (nullable) ------------------------------
// y = gelu(x + bias), exact (erf) or tanh-approximated; x + bias is rounded to the storage
// type first, as torch's unfused ops do.
Status bias_gelu_forward(DType dtype, bool tanh_approx, const void* x, const void* bias, void* y,
                         int64_t rows, int64_t cols, Stream stream);
// grad_x = grad_y * gelu'(x + bias); the bias gradient is grad_x summed over rows.
Status bias_gelu_backward(DType dtype, bool tanh_approx, const void* grad_y, const void* x, const void* bias,
                          void* grad_x, int64_t rows, int64_t cols, Stream stream);

// ---- out = residual + (x + bias) * keep * scale on [rows, cols] --------------------------
// bias [cols], residual and keep (0/1 values in x's dtype, drawn by torch's generator)
// are nullable: no bias, no residual, no dropout.
Status bias_dropout_add(DType dtype, const void* x, const void* bias, const void* residual, const void* keep,
                        float scale, void* out, int64_t rows, int64_t cols, Stream stream);

// ---- rotary position embedding on t [s, b, heads, d] -----------------------------------
// The first rot_dim channels rotate by angles[s, b, rot_dim] (fp32; strides in elements,
// 0 where broadcast; last dim contiguous), the rest pass through. Pairs are (2i, 2i+1)
// when interleaved, else (i, i + rot_dim/2). backward=true applies the transposed
// rotation (the gradient).
Status rotary_apply(DType dtype, bool interleaved, bool backward, const void* t, const float* angles,
                    int64_t angle_stride_s, int64_t angle_stride_b, void* out, int64_t s, int64_t b,
                    int64_t heads, int64_t d, int64_t rot_dim, Stream stream);

}  // namespace mcore_fused
