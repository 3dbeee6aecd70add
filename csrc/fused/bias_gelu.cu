// Bias + GeLU, forward and input gradient, exact (erf) or tanh-approximated.
// Elementwise over rows x cols with a grid-stride loop; the bias repeats every row.
#include "common.cuh"

namespace mcore_fused {
namespace {

constexpr int kThreads = 256;
constexpr float kSqrtHalf = 0.70710678118654752f;     // 1 / sqrt(2)
constexpr float kInvSqrt2Pi = 0.39894228040143268f;   // 1 / sqrt(2 pi)
constexpr float kSqrt2OverPi = 0.79788456080286536f;  // sqrt(2 / pi)
constexpr float kTanhCubic = 0.044715f;

__device__ __forceinline__ float gelu(float v, bool tanh_approx) {
  if (tanh_approx) return 0.5f * v * (1.0f + tanhf(kSqrt2OverPi * (v + kTanhCubic * v * v * v)));
  return 0.5f * v * (1.0f + erff(v * kSqrtHalf));
}

__device__ __forceinline__ float gelu_derivative(float v, bool tanh_approx) {
  if (tanh_approx) {
    const float t = tanhf(kSqrt2OverPi * (v + kTanhCubic * v * v * v));
    return 0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * kSqrt2OverPi * (1.0f + 3.0f * kTanhCubic * v * v);
  }
  return 0.5f * (1.0f + erff(v * kSqrtHalf)) + v * kInvSqrt2Pi * expf(-0.5f * v * v);
}

// x + bias as torch's unfused add would store it.
template <typename T>
__device__ __forceinline__ float biased(const T* x, const T* bias, int64_t i, int64_t cols) {
  return bias == nullptr ? to_f32(x[i]) : round_to<T>(to_f32(x[i]) + to_f32(bias[i % cols]));
}

template <typename T>
__global__ void bias_gelu_forward_kernel(const T* __restrict__ x, const T* __restrict__ bias, T* __restrict__ y,
                                         int64_t n, int64_t cols, bool tanh_approx) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    y[i] = from_f32<T>(gelu(biased(x, bias, i, cols), tanh_approx));
  }
}

template <typename T>
__global__ void bias_gelu_backward_kernel(const T* __restrict__ grad_y, const T* __restrict__ x,
                                          const T* __restrict__ bias, T* __restrict__ grad_x, int64_t n, int64_t cols,
                                          bool tanh_approx) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    grad_x[i] = from_f32<T>(to_f32(grad_y[i]) * gelu_derivative(biased(x, bias, i, cols), tanh_approx));
  }
}

}  // namespace

Status bias_gelu_forward(DType dtype, bool tanh_approx, const void* x, const void* bias, void* y, int64_t rows,
                         int64_t cols, Stream stream) {
  const int64_t n = rows * cols;
  if (n == 0) return nullptr;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_gelu_forward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(bias), static_cast<T*>(y), n, cols, tanh_approx);
  });
}

Status bias_gelu_backward(DType dtype, bool tanh_approx, const void* grad_y, const void* x, const void* bias,
                          void* grad_x, int64_t rows, int64_t cols, Stream stream) {
  const int64_t n = rows * cols;
  if (n == 0) return nullptr;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    bias_gelu_backward_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(grad_y), static_cast<const T*>(x), static_cast<const T*>(bias),
        static_cast<T*>(grad_x), n, cols, tanh_approx);
  });
}

}  // namespace mcore_fused
