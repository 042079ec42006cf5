// Asynchronous copies from global to shared memory (cp.async, sm_80 and later), which hold no
// registers while in flight: staged attention copies its KV rows with them, and a GEMV that runs
// K in phases copies each phase's window of x.

// 16 bytes from global to shared memory (an ordinary load and store before sm_80).
__device__ __forceinline__ void copy_16_async(unsigned short* dst_shared,
                                              const unsigned short* src) {
#if __CUDA_ARCH__ >= 800
    unsigned long long dst;
    asm("cvta.to.shared.u64 %0, %1;" : "=l"(dst) : "l"(dst_shared));
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"((unsigned int)dst), "l"(src)
                 : "memory");
#else
    *reinterpret_cast<uint4*>(dst_shared) = *reinterpret_cast<const uint4*>(src);
#endif
}

// Closes the group of this thread's copies issued since the last call.
__device__ __forceinline__ void copy_async_commit() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

// Waits until at most PENDING of this thread's groups of copies are in flight.
template <int PENDING>
__device__ __forceinline__ void copy_async_wait() {
#if __CUDA_ARCH__ >= 800
    asm volatile("cp.async.wait_group %0;" ::"n"(PENDING) : "memory");
#endif
}
