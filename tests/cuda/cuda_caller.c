/* Drives the stand-in libcuda like a CUDA application: two threads launch kernels
 * (N and M times) and synchronise, the main thread copies, sets and synchronises.
 *
 * usage: cuda_caller N M SYNC_US [wait]
 *
 * Prints one JSON line with its pid and the three thread ids before calling anything;
 * with `wait`, it then waits for a line on stdin first (so a test can start the agent
 * after the library is mapped). Exits when done. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cuda_standin.h"

CUresult cuInit(unsigned);
CUresult cuLaunchKernel(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                        unsigned, void *, void **, void **);
CUresult cuLaunchKernel_ptsz(void *, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, unsigned, void *, void **, void **);
CUresult cuLaunchKernelEx_ptsz(const void *, void *, void **, void **);
CUresult cuGraphLaunch_ptsz(void *, void *);
CUresult cuMemcpyHtoD_v2(CUdeviceptr, const void *, size_t);
CUresult cuMemcpyDtoH_v2_ptds(void *, CUdeviceptr, size_t);
CUresult cuMemcpy2D_v2(const CUDA_MEMCPY2D *);
CUresult cuMemsetD32_v2(CUdeviceptr, unsigned, size_t);
CUresult cuMemsetD2D16Async(CUdeviceptr, size_t, unsigned short, size_t, size_t, void *);
CUresult cuStreamSynchronize(void *);
CUresult cuStreamSynchronize_ptsz(void *);
CUresult cuCtxSynchronize(void);

static long n_a, n_b;
static uintptr_t sync_us;
static pthread_barrier_t start, tids_known;
static pid_t tid_a, tid_b;

static void *thread_a(void *arg) {
    tid_a = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&tids_known);
    pthread_barrier_wait(&start);
    for (long i = 0; i < n_a; i++) {
        /* Half through each spelling: both are probed. */
        if (i % 2 == 0)
            cuLaunchKernel(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
        else
            cuLaunchKernel_ptsz(NULL, 1, 1, 1, 1, 1, 1, 0, NULL, NULL, NULL);
    }
    cuStreamSynchronize((void *)sync_us);
    return arg;
}

static void *thread_b(void *arg) {
    tid_b = (pid_t)syscall(SYS_gettid);
    pthread_barrier_wait(&tids_known);
    pthread_barrier_wait(&start);
    for (long i = 0; i < n_b; i++)
        cuLaunchKernelEx_ptsz(NULL, NULL, NULL, NULL);
    cuStreamSynchronize_ptsz((void *)sync_us);
    return arg;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: cuda_caller N M SYNC_US [wait]\n");
        return 2;
    }
    n_a = atol(argv[1]);
    n_b = atol(argv[2]);
    sync_us = (uintptr_t)atol(argv[3]);
    cuInit(0);
    pthread_barrier_init(&start, NULL, 3);
    pthread_barrier_init(&tids_known, NULL, 3);
    pthread_t a, b;
    pthread_create(&a, NULL, thread_a, NULL);
    pthread_create(&b, NULL, thread_b, NULL);
    pthread_barrier_wait(&tids_known);
    printf("{\"pid\":%d,\"a\":%d,\"b\":%d,\"main\":%ld}\n", getpid(), tid_a, tid_b,
           (long)syscall(SYS_gettid));
    fflush(stdout);
    if (argc > 4 && strcmp(argv[4], "wait") == 0) {
        char line[16];
        if (!fgets(line, sizeof line, stdin))
            return 3;
    }
    pthread_barrier_wait(&start);
    /* Main thread: 3 copies of 1000 B, one 2D copy of 64 x 10 B, one DtoH of 24 B,
     * memsets of 256 x 4 B (twice) and 8 x 4 x 2 B, 5 graph launches through an alias,
     * then one context synchronisation (blocks 20 ms). */
    char host[1000];
    memset(host, 0, sizeof host);
    for (int i = 0; i < 3; i++)
        cuMemcpyHtoD_v2(0x1000, host, sizeof host);
    CUDA_MEMCPY2D copy;
    memset(&copy, 0, sizeof copy);
    copy.WidthInBytes = 64;
    copy.Height = 10;
    cuMemcpy2D_v2(&copy);
    cuMemcpyDtoH_v2_ptds(host, 0x1000, 24);
    cuMemsetD32_v2(0x1000, 0, 256);
    cuMemsetD32_v2(0x1000, 0, 256);
    cuMemsetD2D16Async(0x1000, 64, 0, 8, 4, NULL);
    for (int i = 0; i < 5; i++)
        cuGraphLaunch_ptsz(NULL, NULL);
    cuCtxSynchronize();
    pthread_join(a, NULL);
    pthread_join(b, NULL);
    return 0;
}
