/* test_cpu.c -- the CPU-feature module (lib/cpu.c): what it reports agrees with the
 * compiler's own detection, and forcing the baseline copies turns the AVX2 ones off. */
#include "test.h"

#include "internal.h"

TEST(cpu_features_agree_with_the_compiler)
{
#if (defined(__x86_64__) || defined(__i386__)) && (defined(__GNUC__) || defined(__clang__))
    __builtin_cpu_init();
    ck_assert_int_eq(ulpt__cpu_has(ULPT__CPU_AVX2), !!__builtin_cpu_supports("avx2"));
    ck_assert_int_eq(ulpt__cpu_has(ULPT__CPU_FMA), !!__builtin_cpu_supports("fma"));
    ck_assert_int_eq(ulpt__cpu_has(ULPT__CPU_AVX2 | ULPT__CPU_FMA),
                     __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"));
#else
    ck_assert_int_eq(ulpt__cpu_has(ULPT__CPU_AVX2), 0);
#endif
    ck_assert_int_eq(ulpt__cpu_has(0), 1); /* no feature asked: always there */
    /* asked once: the same answer every time */
    ck_assert_int_eq(ulpt__cpu_has(ULPT__CPU_F16C), ulpt__cpu_has(ULPT__CPU_F16C));
}

TEST(forcing_the_portable_kernels_turns_avx2_off)
{
    const int avx2 = ulpt__cpu_has(ULPT__CPU_AVX2);
    ck_assert_int_eq(ulpt__use_avx2(), avx2);
    ulpt__kernel_force = ULPT__KERNEL_FUSED_PORTABLE;
    ck_assert_int_eq(ulpt__use_avx2(), 0);
    ulpt__kernel_force = ULPT__KERNEL_FUSED;
    ck_assert_int_eq(ulpt__use_avx2(), avx2);
    ulpt__kernel_force = ULPT__KERNEL_AUTO;
}
