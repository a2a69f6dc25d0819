/* The sample kernel. Every function is noinline so that calls stay calls and each
 * function keeps its own patchable entry. */
#include "kernel.h"

#define KFUNC __attribute__((noinline, used))

long tick_count = 0;
long scale_factor = 3;

static const char *const greetings[] = {
    "hello, world",
    "live patching is patching while it runs",
    "ppc64le global and local entries",
};

KFUNC long add(long a, long b) { return a + b; }

KFUNC long identity(long x) { return x; }

KFUNC long fib(long n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }

KFUNC long counter_add(long by) {
    tick_count += by;
    return tick_count;
}

KFUNC long counter_get(long unused) {
    (void)unused;
    return tick_count;
}

KFUNC long scaled(long x) { return x * scale_factor + 1; }

KFUNC long scaled_twice(long x) { return scaled(scaled(x)); }

static long op_add(long a, long b) { return a + b; }
static long op_sub(long a, long b) { return a - b; }
static long op_mul(long a, long b) { return a * b; }
static long op_scaled(long a, long b) { return scaled(a) + b; }

typedef long (*binary_op)(long, long);
/* volatile: the compiler must really load the pointer and call through it */
static binary_op volatile op_table[] = {op_add, op_sub, op_mul, op_scaled, add};

KFUNC long apply_op(long op, long a, long b) {
    if (op < 0 || op >= (long)(sizeof op_table / sizeof op_table[0]))
        return -1;
    return op_table[op](a, b);
}

typedef long (*unary_op)(long);
static unary_op volatile unary_table[] = {scaled, identity, fib, checked_double};

KFUNC long apply_unary(long which, long x) {
    if (which < 0 || which >= (long)(sizeof unary_table / sizeof unary_table[0]))
        return -1;
    return unary_table[which](x);
}

KFUNC long greeting_sum(long which) {
    if (which < 0 || which >= (long)(sizeof greetings / sizeof greetings[0]))
        return -1;
    long sum = 0;
    for (const char *p = greetings[which]; *p; p++)
        sum += (unsigned char)*p;
    return sum;
}

KFUNC long greeting_len(long which) {
    if (which < 0 || which >= (long)(sizeof greetings / sizeof greetings[0]))
        return -1;
    long n = 0;
    while (greetings[which][n])
        n++;
    return n;
}

KFUNC long mix_loop(long n) {
    unsigned long x = 0x9e3779b97f4a7c15ul;
    for (long i = 0; i < n; i++) {
        x = x * 6364136223846793005ul + 1442695040888963407ul;
        x ^= x >> 29;
    }
    return (long)(x >> 1);
}

KFUNC long gcd(long a, long b) { return b == 0 ? a : gcd(b, a % b); }

KFUNC long peek(long address) { return *(volatile long *)address; }

KFUNC long poke(long address, long value) {
    *(volatile long *)address = value;
    return value;
}

/* A sibling call: compiled as a branch to scaled's local entry, leaving LR pointing at
 * sibling_scaled's caller. */
KFUNC long sibling_scaled(long x) { return scaled(x + 1); }

long observed_toc = 0;

/* The TOC register as it is right now (ppc64le r2); 0 elsewhere. */
static inline long current_toc(void) {
#if defined(__powerpc64__)
    long toc;
    __asm__ volatile("mr %0,2" : "=r"(toc));
    return toc;
#else
    return 0;
#endif
}

/* After a local call the caller's r2 must still be its own TOC: record what it is. The
 * store itself goes through r2, so a wrong TOC also loses the record. */
KFUNC long toc_after_local_call(long x) {
    long r = scaled(x);
    observed_toc = current_toc();
    return r;
}

KFUNC long toc_after_pointer_call(long which, long x) {
    long r = apply_unary(which, x);
    long s = unary_table[which & 3](x);
    observed_toc = current_toc();
    return r + s;
}

/* First instruction on a 64 KiB boundary: its mcount site is 4 bytes past it. */
__attribute__((noinline, used, aligned(65536), section(".text.boundary"))) long boundary_leaf(long x) {
    return x ^ 0x5a;
}

/* The return-to-guest path: the host stops vCPUs here when it has work for them. */
KFUNC void safe_point(void) { __asm__ volatile("" ::: "memory"); }

KFUNC long workload(struct cpu_ring *ring, long iterations) {
    for (long i = 0; iterations == 0 || i < iterations; i++) {
        long x = i & 1023;
        long slot = i & (CPU_RING - 1);
        ring->pairs[slot][0] = x;
        ring->pairs[slot][1] = scaled(x);
        ring->pairs[slot][2] = apply_unary(0, x);
        ring->iterations = i + 1;
        safe_point();
    }
    return iterations;
}

KFUNC long spin_while(volatile long *flag) {
    long n = 0;
    while (*flag)
        n++;
    return n;
}

KFUNC long kernel_main(void) {
    long r = 0;
    r += add(1, 2);
    r += fib(10);
    r += scaled_twice(2);
    r += apply_op(3, 4, 5);
    r += greeting_len(0);
    r += counter_add(1);
    return r;
}
