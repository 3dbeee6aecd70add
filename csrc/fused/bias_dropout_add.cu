// out = residual + (x + bias) * keep * scale, elementwise with a grid-stride loop.
// The keep mask comes from torch's generator (drawn by the caller), so the fused op drops
// exactly the units the unfused one would with the same RNG state; its backward is this
// same kernel on the output gradient with no bias and no residual.
#include "common.cuh"

namespace mcore_fused {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void bias_dropout_add_kernel(const T* __restrict__ x, const T* __restrict__ bias,
                                        const T* __restrict__ residual, const T* __restrict__ keep, float scale,
                                        T* __restrict__ out, int64_t n, int64_t cols) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float v = to_f32(x[i]);
    if (bias != nullptr) v += to_f32(bias[i % cols]);
    if (keep != nullptr) v *= to_f32(keep[i]) * scale;
    if (residual != nullptr) v += to_f32(residual[i]);
    out[i] = from_f32<T>(v);
  }
}

}  // namespace

Status bias_dropout_add(DType dtype, const void* x, const void* bias, const void* residual, const void* keep,
                        float scale, void* out, int64_t rows, int64_t cols, Stream stream) {
  const int64_t n = rows * cols;
  if (n == 0) return nullptr;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_dropout_add_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<const T*>(residual),
        static_cast<const T*>(keep), scale, static_cast<T*>(out), n, cols);
  });
}

}  // namespace mcore_fused
