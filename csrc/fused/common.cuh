// What every kernel file shares: storage-type conversions, warp and block reductions,
// the dtype dispatch and the launch-status check. CUDA's own headers only.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels.h"

namespace mcore_fused {

constexpr int kWarpSize = 32;

__device__ __forceinline__ float to_f32(float v) { return v; }
__device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_f32(float v);
template <>
__device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }

// Round an fp32 value to the storage type and back (what torch's unfused op would store).
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_f32(from_f32<T>(v)); }

// Reductions over all 32 lanes of a warp. Every lane must call them (full mask): callers
// give lanes without data the identity (0 for sums, -inf for max).
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int offset = kWarpSize / 2; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// Sum over a 1-D block whose size is a multiple of 32 (at most 1024); every thread of the
// block must call it, and gets the total. `shared` holds 32 floats; it may be reused by the
// next call because of the closing barrier.
__device__ __forceinline__ float block_sum(float v, float* shared) {
  const int lane = threadIdx.x % kWarpSize;
  const int warp = threadIdx.x / kWarpSize;
  const int warps = blockDim.x / kWarpSize;
  v = warp_sum(v);
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < warps ? shared[lane] : 0.0f;
    v = warp_sum(v);
    if (lane == 0) shared[0] = v;
  }
  __syncthreads();
  const float total = shared[0];
  __syncthreads();
  return total;
}

// Grid size for `work` items handled `per_block` at a time, capped so that kernels with a
// grid-stride loop never exceed the launch limit.
inline unsigned int blocks_for(int64_t work, int64_t per_block, int64_t cap = 65535LL * 32) {
  int64_t blocks = (work + per_block - 1) / per_block;
  if (blocks < 1) blocks = 1;
  return static_cast<unsigned int>(blocks < cap ? blocks : cap);
}

// The launch's error, if any, as the Status every launcher returns.
inline Status launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Calls body(T{}) with T the storage type named by `dtype`.
template <typename Body>
Status dispatch_dtype(DType dtype, Body body) {
  switch (dtype) {
    case DType::kFloat32: body(float{}); break;
    case DType::kFloat16: body(__half{}); break;
    case DType::kBFloat16: body(__nv_bfloat16{}); break;
    default: return "unsupported dtype (expected float32, float16 or bfloat16)";
  }
  return launch_status();
}

}  // namespace mcore_fused
