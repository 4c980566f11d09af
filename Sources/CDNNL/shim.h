// oneDNN's C API (Debian libdnnl-dev: built with OpenMP threading through libgomp), the two
// OpenMP calls that set and read the calling thread's team size, and the CPU's own cpuid and
// xgetbv (what the CPU offers, beside what oneDNN says it will use). The OpenMP calls are
// declared here rather than through <omp.h>, which lives in GCC's private include directory.
#ifndef LORA_DIST_CDNNL_SHIM_H
#define LORA_DIST_CDNNL_SHIM_H
#include <dnnl.h>
#include <oneapi/dnnl/dnnl_debug.h>

void omp_set_num_threads(int num_threads);
int omp_get_max_threads(void);

/// cpuid leaf `leaf`, sub-leaf `sub`: out[0..3] = eax, ebx, ecx, edx (all zero off x86-64).
static inline void lora_dist_cpuid(unsigned leaf, unsigned sub, unsigned out[4]) {
#if defined(__x86_64__)
    unsigned a, b, c, d;
    __asm__ volatile("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(leaf), "c"(sub));
    out[0] = a; out[1] = b; out[2] = c; out[3] = d;
#else
    out[0] = out[1] = out[2] = out[3] = 0;
#endif
}

/// XCR0: which register states the operating system saves (bits 1-2 SSE/AVX, 5-7 AVX-512,
/// 17-18 AMX tiles); 0 where xgetbv is not allowed (cpuid leaf 1 ecx bit 27, OSXSAVE, clear).
static inline unsigned long long lora_dist_xcr0(void) {
#if defined(__x86_64__)
    unsigned r[4];
    lora_dist_cpuid(1, 0, r);
    if (!((r[2] >> 27) & 1)) return 0;
    unsigned lo, hi;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    return ((unsigned long long)hi << 32) | lo;
#else
    return 0;
#endif
}
#endif
