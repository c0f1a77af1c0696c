// Shared by CPU (.cpp) and CUDA (.cu) translation units: per-row math written once.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FREMURE_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define FREMURE_HOST_DEVICE inline
#endif
