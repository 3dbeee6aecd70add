// Rotary position embedding applied to t [s, b, heads, d], one thread per element.
//
// Channel c < rot_dim pairs with p(c): c ^ 1 when interleaved, else c +- rot_dim/2.
// Forward: out_c = t_c cos(a_c) + sign_c t_p(c) sin(a_c), sign_c = -1 for the first
// channel of a pair and +1 for the second. The gradient is the transposed map:
// dt_c = dout_c cos(a_c) - sign_c dout_p(c) sin(a_p(c)). Channels >= rot_dim are copied.
#include "common.cuh"

namespace mcore_fused {
namespace {

constexpr int kThreads = 256;

template <typename T>
__global__ void rotary_kernel(const T* __restrict__ t, const float* __restrict__ angles, int64_t stride_s,
                              int64_t stride_b, T* __restrict__ out, int64_t n, int64_t b, int64_t heads, int64_t d,
                              int64_t rot_dim, bool interleaved, bool backward) {
  const int64_t half = rot_dim / 2;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t c = i % d;
    if (c >= rot_dim) {
      out[i] = t[i];
      continue;
    }
    const int64_t token = i / (d * heads);  // s * b + batch
    const float* a = angles + (token / b) * stride_s + (token % b) * stride_b;
    const bool first = interleaved ? (c % 2 == 0) : (c < half);
    const int64_t partner = interleaved ? (first ? c + 1 : c - 1) : (first ? c + half : c - half);
    const float sign = first ? -1.0f : 1.0f;
    const float x = to_f32(t[i]);
    const float xp = to_f32(t[i - c + partner]);
    const float v = backward ? x * cosf(a[c]) - sign * xp * sinf(a[partner]) : x * cosf(a[c]) + sign * xp * sinf(a[c]);
    out[i] = from_f32<T>(v);
  }
}

}  // namespace

Status rotary_apply(DType dtype, bool interleaved, bool backward, const void* t, const float* angles,
                    int64_t angle_stride_s, int64_t angle_stride_b, void* out, int64_t s, int64_t b, int64_t heads,
                    int64_t d, int64_t rot_dim, Stream stream) {
  const int64_t n = s * b * heads * d;
  if (n == 0) return nullptr;
  if (rot_dim % 2 != 0 || rot_dim > d) return "rotary_apply: rot_dim must be even and at most the head size";
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    rotary_kernel<T><<<blocks_for(n, kThreads), kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(t), angles, angle_stride_s, angle_stride_b, static_cast<T*>(out), n, b, heads, d,
        rot_dim, interleaved, backward);
  });
}

}  // namespace mcore_fused
