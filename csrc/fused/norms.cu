// LayerNorm and RMSNorm over the last dimension, forward and backward, fp32 statistics.
//
// Forward and the input gradient: one block per row, the row read from global memory in
// strided passes (two-pass mean/variance, no Welford needed at these sizes).
// Weight/bias gradients sum over all rows: a first kernel gives each of `chunks` row
// ranges a 32-column tile of 32 x 8 threads and writes fp32 partial sums to the
// workspace; a second sums the partials per column.
#include "common.cuh"

namespace mcore_fused {
namespace {

constexpr int kRowThreads = 128;  // a multiple of 32, as block_sum requires
constexpr int kTileCols = 32;
constexpr int kTileRows = 8;
constexpr int64_t kMaxChunks = 512;
constexpr int64_t kRowsPerChunkMin = 32;

int64_t chunks_for(int64_t rows) {
  int64_t chunks = (rows + kRowsPerChunkMin - 1) / kRowsPerChunkMin;
  if (chunks > kMaxChunks) chunks = kMaxChunks;
  return chunks < 1 ? 1 : chunks;
}

template <typename T, bool kRms>
__global__ void norm_forward_kernel(const T* __restrict__ x, const T* __restrict__ weight,
                                    const T* __restrict__ bias, T* __restrict__ y, float* __restrict__ mean_out,
                                    float* __restrict__ rstd_out, int64_t cols, float eps) {
  __shared__ float shared[kWarpSize];
  const int64_t row = blockIdx.x;
  const T* xr = x + row * cols;
  T* yr = y + row * cols;
  float mean = 0.0f;
  if (!kRms) {
    float sum = 0.0f;
    for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) sum += to_f32(xr[c]);
    mean = block_sum(sum, shared) / static_cast<float>(cols);
  }
  float squares = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float centered = to_f32(xr[c]) - mean;
    squares += centered * centered;
  }
  const float rstd = rsqrtf(block_sum(squares, shared) / static_cast<float>(cols) + eps);
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    float v = (to_f32(xr[c]) - mean) * rstd;
    if (weight != nullptr) v *= to_f32(weight[c]);
    if (!kRms && bias != nullptr) v += to_f32(bias[c]);
    yr[c] = from_f32<T>(v);
  }
  if (threadIdx.x == 0) {
    if (!kRms) mean_out[row] = mean;
    rstd_out[row] = rstd;
  }
}

// grad_x = rstd * (g - mean(g) - xhat * mean(g * xhat)), g = grad_y * weight; RMSNorm has
// no mean(g) term (its xhat = x * rstd is not centred).
template <typename T, bool kRms>
__global__ void norm_backward_input_kernel(const T* __restrict__ grad_y, const T* __restrict__ x,
                                           const T* __restrict__ weight, const float* __restrict__ mean,
                                           const float* __restrict__ rstd, T* __restrict__ grad_x, int64_t cols) {
  __shared__ float shared[kWarpSize];
  const int64_t row = blockIdx.x;
  const T* dyr = grad_y + row * cols;
  const T* xr = x + row * cols;
  T* dxr = grad_x + row * cols;
  const float mu = kRms ? 0.0f : mean[row];
  const float rs = rstd[row];
  float sum_g = 0.0f, sum_g_xhat = 0.0f;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = to_f32(dyr[c]) * (weight != nullptr ? to_f32(weight[c]) : 1.0f);
    sum_g += g;
    sum_g_xhat += g * (to_f32(xr[c]) - mu) * rs;
  }
  const float inv_cols = 1.0f / static_cast<float>(cols);
  const float mean_g = kRms ? 0.0f : block_sum(sum_g, shared) * inv_cols;
  const float mean_g_xhat = block_sum(sum_g_xhat, shared) * inv_cols;
  for (int64_t c = threadIdx.x; c < cols; c += blockDim.x) {
    const float g = to_f32(dyr[c]) * (weight != nullptr ? to_f32(weight[c]) : 1.0f);
    const float xhat = (to_f32(xr[c]) - mu) * rs;
    dxr[c] = from_f32<T>(rs * (g - mean_g - xhat * mean_g_xhat));
  }
}

// Partial sums over one row range (blockIdx.y) of grad_y * xhat and grad_y, for the 32
// columns of blockIdx.x. Threads past the last column still reach every barrier.
template <typename T, bool kRms>
__global__ void norm_param_partials_kernel(const T* __restrict__ grad_y, const T* __restrict__ x,
                                           const float* __restrict__ mean, const float* __restrict__ rstd,
                                           float* __restrict__ partial_w, float* __restrict__ partial_b,
                                           int64_t rows, int64_t cols, int64_t rows_per_chunk) {
  __shared__ float tile_w[kTileRows][kTileCols + 1];
  __shared__ float tile_b[kTileRows][kTileCols + 1];
  const int64_t col = static_cast<int64_t>(blockIdx.x) * kTileCols + threadIdx.x;
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_chunk;
  int64_t end = first + rows_per_chunk;
  if (end > rows) end = rows;
  float acc_w = 0.0f, acc_b = 0.0f;
  if (col < cols) {
    for (int64_t r = first + threadIdx.y; r < end; r += kTileRows) {
      const float dy = to_f32(grad_y[r * cols + col]);
      const float xhat = (to_f32(x[r * cols + col]) - (kRms ? 0.0f : mean[r])) * rstd[r];
      acc_w += dy * xhat;
      acc_b += dy;
    }
  }
  tile_w[threadIdx.y][threadIdx.x] = acc_w;
  tile_b[threadIdx.y][threadIdx.x] = acc_b;
  __syncthreads();
  if (threadIdx.y == 0 && col < cols) {
    float w = 0.0f, b = 0.0f;
#pragma unroll
    for (int i = 0; i < kTileRows; ++i) {
      w += tile_w[i][threadIdx.x];
      b += tile_b[i][threadIdx.x];
    }
    partial_w[blockIdx.y * cols + col] = w;
    if (partial_b != nullptr) partial_b[blockIdx.y * cols + col] = b;
  }
}

template <typename T>
__global__ void norm_param_finish_kernel(const float* __restrict__ partial_w, const float* __restrict__ partial_b,
                                         T* __restrict__ grad_weight, T* __restrict__ grad_bias, int64_t chunks,
                                         int64_t cols) {
  for (int64_t col = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; col < cols;
       col += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    float w = 0.0f, b = 0.0f;
    for (int64_t chunk = 0; chunk < chunks; ++chunk) {
      w += partial_w[chunk * cols + col];
      if (grad_bias != nullptr) b += partial_b[chunk * cols + col];
    }
    grad_weight[col] = from_f32<T>(w);
    if (grad_bias != nullptr) grad_bias[col] = from_f32<T>(b);
  }
}

}  // namespace

Status norm_forward(DType dtype, bool rms, const void* x, const void* weight, const void* bias, void* y, float* mean,
                    float* rstd, int64_t rows, int64_t cols, float eps, Stream stream) {
  if (rows == 0) return nullptr;
  if (rows > INT32_MAX) return "norm_forward: more than 2^31 - 1 rows";
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    auto kernel = rms ? norm_forward_kernel<T, true> : norm_forward_kernel<T, false>;
    kernel<<<static_cast<unsigned int>(rows), kRowThreads, 0, static_cast<cudaStream_t>(stream)>>>(
        static_cast<const T*>(x), static_cast<const T*>(weight), static_cast<const T*>(bias), static_cast<T*>(y),
        mean, rstd, cols, eps);
  });
}

int64_t norm_backward_workspace_floats(int64_t rows, int64_t cols) { return 2 * chunks_for(rows) * cols; }

Status norm_backward(DType dtype, bool rms, const void* grad_y, const void* x, const void* weight, const float* mean,
                     const float* rstd, void* grad_x, void* grad_weight, void* grad_bias, float* workspace,
                     int64_t rows, int64_t cols, Stream stream) {
  if (rows > INT32_MAX) return "norm_backward: more than 2^31 - 1 rows";
  const cudaStream_t s = static_cast<cudaStream_t>(stream);
  const int64_t chunks = chunks_for(rows);
  const int64_t rows_per_chunk = (rows + chunks - 1) / chunks;
  return dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    if (rows > 0) {
      auto input_kernel = rms ? norm_backward_input_kernel<T, true> : norm_backward_input_kernel<T, false>;
      input_kernel<<<static_cast<unsigned int>(rows), kRowThreads, 0, s>>>(
          static_cast<const T*>(grad_y), static_cast<const T*>(x), static_cast<const T*>(weight), mean, rstd,
          static_cast<T*>(grad_x), cols);
    }
    if (grad_weight == nullptr) return;
    float* partial_w = workspace;
    float* partial_b = grad_bias != nullptr ? workspace + chunks * cols : nullptr;
    if (rows > 0) {
      auto partials = rms ? norm_param_partials_kernel<T, true> : norm_param_partials_kernel<T, false>;
      const dim3 grid(blocks_for(cols, kTileCols, INT32_MAX), static_cast<unsigned int>(chunks));
      partials<<<grid, dim3(kTileCols, kTileRows), 0, s>>>(
          static_cast<const T*>(grad_y), static_cast<const T*>(x), mean, rstd, partial_w, partial_b, rows, cols,
          rows_per_chunk);
    }
    // With no rows the gradients are zeros: sum zero chunks.
    norm_param_finish_kernel<T><<<blocks_for(cols, 256), 256, 0, s>>>(
        partial_w, partial_b, static_cast<T*>(grad_weight), static_cast<T*>(grad_bias), rows > 0 ? chunks : 0, cols);
  });
}

}  // namespace mcore_fused
