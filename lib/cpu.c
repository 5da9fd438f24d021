/* cpu.c -- what the CPU can run, asked once, and which compiled copies of the
 * vectorised loops may run: the one place the library looks at the instruction set.
 * fused.c and philox.c carry AVX2 copies, half.c an F16C and an AVX2 copy; the shipped
 * library targets the baseline ISA and chooses among them here at run time. */
#include "internal.h"

#include <stdatomic.h>

int ulpt__kernel_force = ULPT__KERNEL_AUTO;

#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>

/* CPUID leaves 1 and 7, and XGETBV: the OS must save the YMM registers (XCR0 bits 1
 * and 2) for any AVX instruction to be usable, whatever CPUID says. */
static unsigned detect(void)
{
    unsigned a, b, c, d, m = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) || !(c & bit_AVX))
        return 0;
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    if ((lo & 6) != 6)
        return 0;
    m |= c & bit_F16C ? ULPT__CPU_F16C : 0;
    m |= c & bit_FMA ? ULPT__CPU_FMA : 0;
    if (__get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX2))
        m |= ULPT__CPU_AVX2;
    return m;
}
#else
static unsigned detect(void) { return 0; }
#endif

int ulpt__cpu_has(unsigned features)
{
    /* racing first callers compute the same value; relaxed is enough */
    static atomic_int cpu_cached = -1;
    int m = atomic_load_explicit(&cpu_cached, memory_order_relaxed);
    if (m < 0) {
        m = (int)detect();
        atomic_store_explicit(&cpu_cached, m, memory_order_relaxed);
    }
    return ((unsigned)m & features) == features;
}

int ulpt__use_avx2(void)
{
    return ulpt__kernel_force != ULPT__KERNEL_FUSED_PORTABLE && ulpt__cpu_has(ULPT__CPU_AVX2);
}
