// Programmatic dependent launch (sm_90 and later; no-ops before). The host launches the decode
// kernels (the GEMVs, RMSNorm, the attention inputs, attention, silu) with permission to start
// while the kernel before them in the stream is still running: their launch and block start-up
// overlap it, and a GEMV issues its first weight loads (weights are never written by a kernel)
// before it waits. Such a kernel must call wait_for_prior_grid before it touches anything the
// kernels before it wrote or read: the wait returns once the prior grid has finished and its
// writes are visible. A kernel lets the next one be scheduled early with
// allow_dependent_launch; that changes nothing for a kernel launched the ordinary way after it.

__device__ __forceinline__ void allow_dependent_launch() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

__device__ __forceinline__ void wait_for_prior_grid() {
#if __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
