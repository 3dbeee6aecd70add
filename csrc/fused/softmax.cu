// Scaled masked softmax and its causal (upper-triangular) variant, forward and backward.
//
// One warp per row of sk scores: lane i handles keys i, i + 32, ...; three passes over
// the row (max, sum of exponentials, write) read it from global memory, which the cache
// serves after the first, so any sk works without a shared-memory staging buffer.
// Masked keys take no part in the max and the sum and are written as 0; a row with no
// visible key is written as zeros (Megatron's fused kernels give a fully masked row zero
// probabilities rather than a uniform one).
#include "common.cuh"

namespace mcore_fused {
namespace {

constexpr int kRowsPerBlock = 4;  // warps per block
constexpr int kThreads = kRowsPerBlock * kWarpSize;

template <typename T>
__global__ void softmax_forward_kernel(const T* __restrict__ scores, const uint8_t* __restrict__ mask,
                                       MaskStrides ms, bool causal, T* __restrict__ probs, int64_t rows,
                                       int64_t heads, int64_t sq, int64_t sk, float scale) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  // `row` is the same for the whole warp, so a warp leaves together and the shuffles below
  // always see all 32 lanes.
  if (row >= rows) return;
  const int64_t q = row % sq;
  const int64_t head = (row / sq) % heads;
  const int64_t batch = row / (sq * heads);
  const T* x = scores + row * sk;
  T* y = probs + row * sk;
  const uint8_t* m = mask == nullptr ? nullptr : mask + batch * ms.batch + head * ms.head + q * ms.query;
  // Causal: query q (end-aligned) sees keys 0 .. q + sk - sq.
  const int64_t last_key = causal ? q + sk - sq : sk - 1;
  auto visible = [&](int64_t k) { return k <= last_key && (m == nullptr || m[k * ms.key] == 0); };

  float row_max = -INFINITY;
  for (int64_t k = lane; k < sk; k += kWarpSize) {
    if (visible(k)) row_max = fmaxf(row_max, to_f32(x[k]) * scale);
  }
  row_max = warp_max(row_max);
  if (row_max == -INFINITY) {  // nothing visible
    for (int64_t k = lane; k < sk; k += kWarpSize) y[k] = from_f32<T>(0.0f);
    return;
  }
  float sum = 0.0f;
  for (int64_t k = lane; k < sk; k += kWarpSize) {
    if (visible(k)) sum += expf(to_f32(x[k]) * scale - row_max);
  }
  const float inv_sum = 1.0f / warp_sum(sum);
  for (int64_t k = lane; k < sk; k += kWarpSize) {
    const float p = visible(k) ? expf(to_f32(x[k]) * scale - row_max) * inv_sum : 0.0f;
    y[k] = from_f32<T>(p);
  }
}

template <typename T>
__global__ void softmax_backward_kernel(const T* __restrict__ grad_probs, const T* __restrict__ probs,
                                        T* __restrict__ grad_scores, int64_t rows, int64_t sk, float scale) {
  const int lane = threadIdx.x % kWarpSize;
  const int64_t row = static_cast<int64_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarpSize;
  if (row >= rows) return;  // uniform per warp, as in the forward kernel
  const T* dy = grad_probs + row * sk;
  const T* y = probs + row * sk;
  T* dx = grad_scores + row * sk;
  float dot = 0.0f;
  for (int64_t k = lane; k < sk; k += kWarpSize) dot += to_f32(dy[k]) * to_f32(y[k]);
  dot = warp_sum(dot);
  for (int64_t k = lane; k < sk; k += kWarpSize) {
    dx[k] = from_f32<T>(scale * to_f32(y[k]) * (to_f32(dy[k]) - dot));
  }
}

}  // namespace

Status softmax_forward(DType dtype, const void* scores, const uint8_t* mask, MaskStrides mask_strides, bool causal,
                       void* probs, int64_t batches, int64_t heads, int64_t sq, int64_t sk, float scale,
                       Stream stream) {
  const int64_t rows = batches * heads * sq;
  if (rows == 0 || sk == 0) return nullptr;
  const unsigned int blocks = blocks_for(rows, kRowsPerBlock, INT32_MAX);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    softmax_forward_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(scores), mask, mask_strides, causal, static_cast<T*>(probs), rows, heads, sq, sk,
        scale);
  });
}

Status softmax_backward(DType dtype, const void* grad_probs, const void* probs, void* grad_scores, int64_t rows,
                        int64_t sk, float scale, Stream stream) {
  if (rows == 0 || sk == 0) return nullptr;
  const unsigned int blocks = blocks_for(rows, kRowsPerBlock, INT32_MAX);
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    softmax_backward_kernel<T><<<blocks, kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad_probs), static_cast<const T*>(probs), static_cast<T*>(grad_scores), rows, sk,
        scale);
  });
}

}  // namespace mcore_fused
