/* A stand-in for the CUDA driver library (libcuda.so.1), built by the tests: it exports
 * the entry points the agent's uprobes attach to, with cuda.h's signatures, and does
 * nothing but return CUDA_SUCCESS. The synchronize calls block for as many
 * microseconds as their stream/event handle says, so a test knows the time spent in
 * them. Built with -O0 so that every function keeps its own code; `cuGraphLaunch_ptsz`
 * is deliberately an alias of `cuGraphLaunch` (one function, two names). */
#include <time.h>

#include "cuda_standin.h"

#define API __attribute__((visibility("default"), noinline))

static void block_us(uintptr_t us) {
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

API CUresult cuInit(unsigned flags) { (void)flags; return 0; }

API CUresult cuLaunchKernel(void *f, unsigned gx, unsigned gy, unsigned gz, unsigned bx,
                            unsigned by, unsigned bz, unsigned shm, void *stream,
                            void **params, void **extra) {
    return 0;
}
API CUresult cuLaunchKernel_ptsz(void *f, unsigned gx, unsigned gy, unsigned gz,
                                 unsigned bx, unsigned by, unsigned bz, unsigned shm,
                                 void *stream, void **params, void **extra) {
    return 0;
}
API CUresult cuLaunchKernelEx(const void *config, void *f, void **params, void **extra) {
    return 0;
}
API CUresult cuLaunchKernelEx_ptsz(const void *config, void *f, void **params,
                                   void **extra) {
    return 0;
}
API CUresult cuGraphLaunch(void *graph, void *stream) { return 0; }
CUresult cuGraphLaunch_ptsz(void *graph, void *stream)
    __attribute__((alias("cuGraphLaunch"), visibility("default")));

API CUresult cuMemcpyHtoD_v2(CUdeviceptr dst, const void *src, size_t bytes) { return 0; }
API CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr dst, const void *src, size_t bytes,
                                  void *stream) {
    return 0;
}
API CUresult cuMemcpyDtoH_v2(void *dst, CUdeviceptr src, size_t bytes) { return 0; }
API CUresult cuMemcpyDtoH_v2_ptds(void *dst, CUdeviceptr src, size_t bytes) { return 0; }
API CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D *copy) { return 0; }
API CUresult cuMemcpy3D_v2(const void *copy) { return 0; }
API CUresult cuMemsetD32_v2(CUdeviceptr dst, unsigned value, size_t n) { return 0; }
API CUresult cuMemsetD2D16Async(CUdeviceptr dst, size_t pitch, unsigned short value,
                                size_t width, size_t height, void *stream) {
    return 0;
}

API CUresult cuStreamSynchronize(void *stream) {
    block_us((uintptr_t)stream);
    return 0;
}
API CUresult cuStreamSynchronize_ptsz(void *stream) {
    block_us((uintptr_t)stream);
    return 0;
}
API CUresult cuEventSynchronize(void *event) {
    block_us((uintptr_t)event);
    return 0;
}
/* Waits for "all streams": here one call to the exported cuStreamSynchronize, as a
 * driver may do; the agent must count one synchronisation, not two. */
API CUresult cuCtxSynchronize(void) { return cuStreamSynchronize((void *)(uintptr_t)20000); }
