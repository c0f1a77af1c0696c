// Input checks shared by the kernels of every op (CPU and CUDA): an error names the argument.
// Python sees TORCH_CHECK_TYPE as TypeError (wrong dtype) and TORCH_CHECK_VALUE as ValueError (wrong
// device, shape or value), the classes the pure-Python checks of the same ops raise.
#pragma once
#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace fremure {

inline void check_floating(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(at::isFloatingType(t.scalar_type()), "fremure: ", name,
                   " must be a floating tensor (float32/float64/float16/bfloat16), got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK_VALUE(a.device() == b.device(), "fremure: ", b_name, " must be on the same device as ", a_name,
                    " (", a.device(), "), got ", b.device());
}

inline void check_same_dtype(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fremure: ", b_name, " must have the dtype of ", a_name,
                   " (", a.scalar_type(), "), got ", b.scalar_type());
}

// Device and dtype of `b` follow `a`.
inline void check_like(const at::Tensor& a, const at::Tensor& b, const char* a_name, const char* b_name) {
  check_same_device(a, b, a_name, b_name);
  check_same_dtype(a, b, a_name, b_name);
}

inline void check_index(const at::Tensor& t, const char* name) {
  TORCH_CHECK_TYPE(t.scalar_type() == at::kLong || t.scalar_type() == at::kInt, "fremure: ", name,
                   " must be an int64 or int32 tensor, got ", t.scalar_type());
}

}  // namespace fremure
