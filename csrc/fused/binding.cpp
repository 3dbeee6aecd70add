// Python binding of the fused kernels: tensors in, checked, turned into raw pointers and
// sizes for the launchers of kernels.h, on the tensor's device and current stream.
//
// Compiled by the host compiler against torch's device-agnostic headers only (no
// ATen/cuda, no CUDA header), so it builds against the CPU wheel in CI. The current
// stream comes through c10's device-guard interface, which a CUDA torch registers at
// runtime. Autograd lives in megatron_core/fused (Python); these are the raw ops.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <torch/csrc/utils/pybind.h>

#include <c10/core/DeviceGuard.h>
#include <c10/core/impl/DeviceGuardImplInterface.h>

#include <vector>

#include "kernels.h"

namespace mcore_fused {
namespace {

DType dtype_of(const at::Tensor& t) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::kFloat32;
    case at::kHalf: return DType::kFloat16;
    case at::kBFloat16: return DType::kBFloat16;
    default: TORCH_CHECK(false, "fused kernels take float32, float16 or bfloat16 tensors, got ", t.scalar_type());
  }
}

Stream current_stream(const at::Tensor& t) {
  return c10::impl::getDeviceGuardImpl(t.device().type())->getStream(t.device()).native_handle();
}

void check_status(Status status, const char* op) { TORCH_CHECK(status == nullptr, op, " failed: ", status); }

void check_input(const at::Tensor& t, const at::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_cuda(), name, " must be a CUDA tensor");
  TORCH_CHECK(t.device() == like.device(), name, " is on ", t.device(), ", expected ", like.device());
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), name, " has dtype ", t.scalar_type(), ", expected ",
              like.scalar_type());
  TORCH_CHECK(t.is_contiguous(), name, " must be contiguous");
}

const void* optional_ptr(const c10::optional<at::Tensor>& t, const at::Tensor& like, const char* name,
                         int64_t numel) {
  if (!t.has_value()) return nullptr;
  check_input(*t, like, name);
  TORCH_CHECK(t->numel() == numel, name, " has ", t->numel(), " elements, expected ", numel);
  return t->data_ptr();
}

// ---- softmax ---------------------------------------------------------------------------

// scores [b, heads, sq, sk]; mask bool, broadcastable to it (stride 0 where broadcast).
at::Tensor softmax_forward_op(const at::Tensor& scores, const c10::optional<at::Tensor>& mask, bool causal,
                              double scale) {
  check_input(scores, scores, "scores");
  TORCH_CHECK(scores.dim() == 4, "scores must be [batch, heads, sq, sk], got ", scores.sizes());
  const c10::DeviceGuard guard(scores.device());
  const int64_t b = scores.size(0), h = scores.size(1), sq = scores.size(2), sk = scores.size(3);
  MaskStrides strides{0, 0, 0, 0};
  at::Tensor expanded;
  if (mask.has_value()) {
    TORCH_CHECK(mask->scalar_type() == at::kBool, "mask must be bool, got ", mask->scalar_type());
    TORCH_CHECK(mask->device() == scores.device(), "mask is on ", mask->device(), ", expected ", scores.device());
    expanded = mask->expand({b, h, sq, sk});
    strides = {expanded.stride(0), expanded.stride(1), expanded.stride(2), expanded.stride(3)};
  }
  at::Tensor probs = at::empty_like(scores);
  const uint8_t* mask_ptr = mask.has_value() ? static_cast<const uint8_t*>(expanded.data_ptr()) : nullptr;
  check_status(softmax_forward(dtype_of(scores), scores.data_ptr(), mask_ptr, strides, causal, probs.data_ptr(), b,
                               h, sq, sk, static_cast<float>(scale), current_stream(scores)),
               "softmax_forward");
  return probs;
}

at::Tensor softmax_backward_op(const at::Tensor& grad_probs, const at::Tensor& probs, double scale) {
  check_input(probs, probs, "probs");
  check_input(grad_probs, probs, "grad_probs");
  TORCH_CHECK(grad_probs.sizes() == probs.sizes(), "grad_probs and probs differ in shape");
  const c10::DeviceGuard guard(probs.device());
  const int64_t sk = probs.size(-1);
  at::Tensor grad_scores = at::empty_like(probs);
  check_status(softmax_backward(dtype_of(probs), grad_probs.data_ptr(), probs.data_ptr(), grad_scores.data_ptr(),
                                sk == 0 ? 0 : probs.numel() / sk, sk, static_cast<float>(scale),
                                current_stream(probs)),
               "softmax_backward");
  return grad_scores;
}

// ---- norms -------------------------------------------------------------------------------

// x [..., cols] -> (y, mean [rows] (empty for RMSNorm), rstd [rows]).
std::vector<at::Tensor> norm_forward_op(const at::Tensor& x, const c10::optional<at::Tensor>& weight,
                                        const c10::optional<at::Tensor>& bias, bool rms, double eps) {
  check_input(x, x, "x");
  TORCH_CHECK(x.dim() >= 1, "x must have a last dimension to normalize");
  const c10::DeviceGuard guard(x.device());
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  const void* w = optional_ptr(weight, x, "weight", cols);
  const void* b = rms ? nullptr : optional_ptr(bias, x, "bias", cols);
  const auto stats = x.options().dtype(at::kFloat);
  at::Tensor y = at::empty_like(x);
  at::Tensor mean = at::empty({rms ? 0 : rows}, stats);
  at::Tensor rstd = at::empty({rows}, stats);
  check_status(norm_forward(dtype_of(x), rms, x.data_ptr(), w, b, y.data_ptr(), rms ? nullptr : mean.data_ptr<float>(),
                            rstd.data_ptr<float>(), rows, cols, static_cast<float>(eps), current_stream(x)),
               "norm_forward");
  return {y, mean, rstd};
}

// -> (grad_x, grad_weight (empty without weight), grad_bias (empty without bias)).
std::vector<at::Tensor> norm_backward_op(const at::Tensor& grad_y, const at::Tensor& x,
                                         const c10::optional<at::Tensor>& weight, const at::Tensor& mean,
                                         const at::Tensor& rstd, bool rms, bool with_bias) {
  check_input(x, x, "x");
  check_input(grad_y, x, "grad_y");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "grad_y and x differ in shape");
  const c10::DeviceGuard guard(x.device());
  const int64_t cols = x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  const void* w = optional_ptr(weight, x, "weight", cols);
  at::Tensor grad_x = at::empty_like(x);
  at::Tensor grad_w, grad_b, workspace;
  if (w != nullptr) {
    grad_w = at::empty({cols}, x.options());
    if (with_bias && !rms) grad_b = at::empty({cols}, x.options());
    workspace = at::empty({norm_backward_workspace_floats(rows, cols)}, x.options().dtype(at::kFloat));
  }
  check_status(norm_backward(dtype_of(x), rms, grad_y.data_ptr(), x.data_ptr(), w,
                             rms ? nullptr : mean.data_ptr<float>(), rstd.data_ptr<float>(), grad_x.data_ptr(),
                             grad_w.defined() ? grad_w.data_ptr() : nullptr,
                             grad_b.defined() ? grad_b.data_ptr() : nullptr,
                             workspace.defined() ? workspace.data_ptr<float>() : nullptr, rows, cols,
                             current_stream(x)),
               "norm_backward");
  auto none = at::empty({0}, x.options());
  return {grad_x, grad_w.defined() ? grad_w : none, grad_b.defined() ? grad_b : none};
}

// ---- bias + GeLU -------------------------------------------------------------------------

at::Tensor bias_gelu_forward_op(const at::Tensor& x, const c10::optional<at::Tensor>& bias, bool tanh_approx) {
  check_input(x, x, "x");
  const c10::DeviceGuard guard(x.device());
  const int64_t cols = x.dim() == 0 ? 1 : x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor y = at::empty_like(x);
  check_status(bias_gelu_forward(dtype_of(x), tanh_approx, x.data_ptr(), optional_ptr(bias, x, "bias", cols),
                                 y.data_ptr(), rows, cols, current_stream(x)),
               "bias_gelu_forward");
  return y;
}

at::Tensor bias_gelu_backward_op(const at::Tensor& grad_y, const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                                 bool tanh_approx) {
  check_input(x, x, "x");
  check_input(grad_y, x, "grad_y");
  TORCH_CHECK(grad_y.sizes() == x.sizes(), "grad_y and x differ in shape");
  const c10::DeviceGuard guard(x.device());
  const int64_t cols = x.dim() == 0 ? 1 : x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor grad_x = at::empty_like(x);
  check_status(bias_gelu_backward(dtype_of(x), tanh_approx, grad_y.data_ptr(), x.data_ptr(),
                                  optional_ptr(bias, x, "bias", cols), grad_x.data_ptr(), rows, cols,
                                  current_stream(x)),
               "bias_gelu_backward");
  return grad_x;
}

// ---- bias + dropout + add ------------------------------------------------------------------

at::Tensor bias_dropout_add_op(const at::Tensor& x, const c10::optional<at::Tensor>& bias,
                               const c10::optional<at::Tensor>& residual, const c10::optional<at::Tensor>& keep,
                               double scale) {
  check_input(x, x, "x");
  const c10::DeviceGuard guard(x.device());
  const int64_t cols = x.dim() == 0 ? 1 : x.size(-1);
  const int64_t rows = cols == 0 ? 0 : x.numel() / cols;
  at::Tensor out = at::empty_like(x);
  check_status(bias_dropout_add(dtype_of(x), x.data_ptr(), optional_ptr(bias, x, "bias", cols),
                                optional_ptr(residual, x, "residual", x.numel()),
                                optional_ptr(keep, x, "keep", x.numel()), static_cast<float>(scale), out.data_ptr(),
                                rows, cols, current_stream(x)),
               "bias_dropout_add");
  return out;
}

// ---- rotary ------------------------------------------------------------------------------

// t [s, b, heads, d]; angles float32 broadcastable to [s, b, 1, rot_dim].
at::Tensor rotary_apply_op(const at::Tensor& t, const at::Tensor& angles, bool interleaved, bool backward) {
  check_input(t, t, "t");
  TORCH_CHECK(t.dim() == 4, "t must be [seq, batch, heads, dim], got ", t.sizes());
  TORCH_CHECK(angles.dim() == 4 && angles.size(2) == 1, "angles must be [seq, batch, 1, rot_dim], got ",
              angles.sizes());
  TORCH_CHECK(angles.scalar_type() == at::kFloat, "angles must be float32, got ", angles.scalar_type());
  TORCH_CHECK(angles.device() == t.device(), "angles is on ", angles.device(), ", expected ", t.device());
  const c10::DeviceGuard guard(t.device());
  const int64_t s = t.size(0), b = t.size(1), heads = t.size(2), d = t.size(3), rot_dim = angles.size(3);
  TORCH_CHECK(rot_dim <= d && rot_dim % 2 == 0, "rot_dim ", rot_dim, " must be even and at most the head size ", d);
  at::Tensor a = angles.stride(3) == 1 ? angles : angles.contiguous();
  a = a.expand({s, b, 1, rot_dim});
  at::Tensor out = at::empty_like(t);
  check_status(rotary_apply(dtype_of(t), interleaved, backward, t.data_ptr(), a.data_ptr<float>(), a.stride(0),
                            a.stride(1), out.data_ptr(), s, b, heads, d, rot_dim, current_stream(t)),
               "rotary_apply");
  return out;
}

}  // namespace
}  // namespace mcore_fused

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace mcore_fused;
  namespace py = pybind11;
  m.doc() = "megatron_core fused CUDA kernels (raw ops; autograd lives in megatron_core.fused)";
  m.def("softmax_forward", &softmax_forward_op, py::arg("scores"), py::arg("mask"), py::arg("causal"),
        py::arg("scale"));
  m.def("softmax_backward", &softmax_backward_op, py::arg("grad_probs"), py::arg("probs"), py::arg("scale"));
  m.def("norm_forward", &norm_forward_op, py::arg("x"), py::arg("weight"), py::arg("bias"), py::arg("rms"),
        py::arg("eps"));
  m.def("norm_backward", &norm_backward_op, py::arg("grad_y"), py::arg("x"), py::arg("weight"), py::arg("mean"),
        py::arg("rstd"), py::arg("rms"), py::arg("with_bias"));
  m.def("bias_gelu_forward", &bias_gelu_forward_op, py::arg("x"), py::arg("bias"), py::arg("tanh_approx"));
  m.def("bias_gelu_backward", &bias_gelu_backward_op, py::arg("grad_y"), py::arg("x"), py::arg("bias"),
        py::arg("tanh_approx"));
  m.def("bias_dropout_add", &bias_dropout_add_op, py::arg("x"), py::arg("bias"), py::arg("residual"),
        py::arg("keep"), py::arg("scale"));
  m.def("rotary_apply", &rotary_apply_op, py::arg("t"), py::arg("angles"), py::arg("interleaved"),
        py::arg("backward"));
}
