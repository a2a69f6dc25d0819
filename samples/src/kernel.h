/* The sample "kernel" every Splice issue runs: small functions with the shapes live
 * patching has to cope with (leaf, TOC user with local and global callers, calls through
 * a function pointer, recursion, rodata, a .data counter, a body shorter than a jmp). */
#ifndef SPLICE_SAMPLE_KERNEL_H
#define SPLICE_SAMPLE_KERNEL_H

long add(long a, long b);
long identity(long x);                 /* x86-64: 4 bytes, shorter than jmp rel32 */
long fib(long n);                      /* recursion */
long counter_add(long by);             /* bumps tick_count in .data, returns it */
long counter_get(long unused);
long scaled(long x);                   /* reads scale_factor: a TOC user on ppc64le */
long scaled_twice(long x);             /* calls scaled() directly: local entry */
long apply_op(long op, long a, long b);/* calls through a function-pointer table: global entry */
long apply_unary(long which, long x); /* calls scaled/identity/fib through pointers: their global entries */
long greeting_sum(long which);         /* sums the bytes of a rodata string */
long greeting_len(long which);
long mix_loop(long n);                 /* loop-heavy, no closed form: benchmarks */
long checked_double(long x);           /* x86-64: starts with endbr64 */
long gcd(long a, long b);
long peek(long address);              /* loads 8 bytes from any address: fault tests */
long poke(long address, long value);  /* stores 8 bytes to any address: fault tests */
long sibling_scaled(long x);           /* tail-calls scaled's local entry (a sibling call) */
long toc_after_local_call(long x);     /* calls scaled locally, then records r2 in observed_toc */
long toc_after_pointer_call(long which, long x); /* same through unary_table: a global call */
long boundary_leaf(long x);            /* starts exactly on a 64 KiB boundary (ppc64le seed's guard) */
long kernel_main(void);

/* The multi-vCPU workload: each vCPU loops calling patchable functions, records
 * (argument, result) pairs in its own ring, and passes the return-to-guest safe point once
 * per iteration (where a rendezvous stops it). */
#define CPU_RING 64
struct cpu_ring {
    long iterations;
    long pairs[CPU_RING][3]; /* x, scaled(x), apply_unary(0, x) */
};
void safe_point(void);
long workload(struct cpu_ring *ring, long iterations);
long spin_while(volatile long *flag);  /* never reaches the safe point: "interrupts off" */

extern long observed_toc;

extern long tick_count;
extern long scale_factor;

#endif
