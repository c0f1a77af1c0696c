// Input checks shared by the kernels of every op (CPU and CUDA): an error names the argument.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace fremure {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK(at::isFloatingType(t.scalar_type()), "fremure: ", name,
              " must be a floating tensor (float32/float64/float16/bfloat16), got ", t.scalar_type());
}

inline void check_dim(const at::Tensor& t, int64_t dim, const char* name) {
  TORCH_CHECK(t.dim() == dim, "fremure: ", name, " must have ", dim, " dimensions, got shape ", t.sizes());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK(a.device() == b.device(), "fremure: ", b_name, " must be on the same device as ", a_name,
              " (", a.device(), "), got ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK(a.scalar_type() == b.scalar_type(), "fremure: ", b_name, " must have the dtype of ", a_name,
              " (", a.scalar_type(), "), got ", b.scalar_type());
}

inline void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "fremure: ", name,
              " must be an int64 or int32 tensor, got ", t.scalar_type());
}

}  // namespace fremure
