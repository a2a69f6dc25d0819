/* The conformance suite's sample (samples/conformance/, docs/conformance.md): the
 * functions Xen's test payloads (xen/test/livepatch) and Linux's livepatch selftests
 * (tools/testing/selftests/livepatch) patch, and the counters their hooks keep — the
 * suite reads these where Xen and Linux read their logs. Linked with kernel.c into
 * conformance-<isa>.elf; the patches under samples/patches/conformance/ apply to this file. */
#include "kernel.h"
#include "splice_livepatch.h"

#define KFUNC __attribute__((noinline, used))

/* Each hook bumps its own counter and shifts its number into conf_order, so 0x1234 reads
 * "1, then 2, then 3, then 4". */
long conf_loads, conf_unloads;
long conf_pre_apply, conf_post_apply, conf_pre_revert, conf_post_revert;
long conf_apply_action, conf_revert_action;
long conf_order;

KFUNC void conf_note(long step) { conf_order = conf_order << 4 | (step & 15); }

/* xen_hello_world, xen_bye_world, xen_replace_world: xen_extra_version. */
KFUNC const char *extra_version(long unused) {
    (void)unused;
    return "";
}

/* xen_nop: the marked instruction is what a NOP record turns into no-ops; the
 * instructions around it still run (minor_version(5) is 123 as built, 23 without it). */
KFUNC long minor_version(long x) {
    long v = x * 3 + 7;
#if defined(__x86_64__)
    __asm__ volatile(".globl minor_version_adjust\nminor_version_adjust:\n\taddq $100, %0" : "+r"(v));
#else
    __asm__ volatile(".globl minor_version_adjust\nminor_version_adjust:\n\taddi %0, %0, 100" : "+r"(v));
#endif
    return v + 1;
}

/* test-livepatch.sh: livepatch-sample patches cmdline_proc_show, test_klp_atomic_replace
 * meminfo_proc_show. */
KFUNC const char *cmdline_show(long unused) {
    (void)unused;
    return "splice.conformance=1";
}

KFUNC const char *meminfo_show(long unused) {
    (void)unused;
    return "MemTotal: 1024 kB";
}

/* test-callbacks.sh's busy target: while *flag is set the caller stays inside, passing
 * the safe point as a sleeping kernel thread passes the scheduler. */
long busy_flag;

KFUNC long busy_target(volatile long *flag) {
    long n = 0;
    while (*flag) {
        n++;
        safe_point();
    }
    return n;
}

/* The sample workload's record of iteration i (kernel.c's workload writes the same). */
static void ring_record(struct cpu_ring *ring, long i, long x, long y) {
    long slot = i & (CPU_RING - 1);
    ring->pairs[slot][0] = x;
    ring->pairs[slot][1] = y;
    ring->pairs[slot][2] = apply_unary(0, x);
    ring->iterations = i + 1;
}

/* The workload of the busy case: the sample workload's loop, and each iteration passes
 * through busy_target. */
KFUNC long busy_workload(struct cpu_ring *ring, long iterations) {
    for (long i = 0; iterations == 0 || i < iterations; i++) {
        long x = i & 1023;
        ring_record(ring, i, x, scaled(x));
        busy_target(&busy_flag);
        safe_point();
    }
    return iterations;
}

/* test-shadow-vars.sh: the payload's version runs the shadow-variable sequence and
 * returns 0, or the number of the first check that failed. */
long conf_ctor_calls, conf_dtor_calls;

KFUNC long shadow_selftest(long unused) {
    (void)unused;
    return -1;
}

/* test-state.sh: the "console loglevel" the state payloads change and give back. */
long conf_loglevel = 7;
long conf_state_takeovers;

KFUNC long loglevel_get(long unused) {
    (void)unused;
    return conf_loglevel;
}

/* test-syscall.sh: every vCPU calls scaled in a loop while it is patched and unpatched;
 * each result is checked here as it returns — the old 3x+1, the new 3x+2 (patch 02), or
 * anything else — and tallied in the vCPU's ring page, right after its ring. */
struct syscall_tally {
    long old_results, new_results, other_results;
    long other_x, other_y; /* the last result that was neither */
};

KFUNC long syscall_workload(struct cpu_ring *ring, long iterations) {
    struct syscall_tally *tally = (struct syscall_tally *)(ring + 1);
    for (long i = 0; iterations == 0 || i < iterations; i++) {
        long x = i & 1023;
        long y = scaled(x);
        if (y == 3 * x + 1) {
            tally->old_results++;
        } else if (y == 3 * x + 2) {
            tally->new_results++;
        } else {
            tally->other_results++;
            tally->other_x = x;
            tally->other_y = y;
        }
        ring_record(ring, i, x, y);
        safe_point();
    }
    return iterations;
}

/* xen_action_hooks_marker: whether extra_version is redirected, as the image's own callers
 * see it (called through a pointer, so through its global entry, and the compiler cannot
 * know what it returns). The marker payload's hooks check it at each point. */
KFUNC long extra_version_is_patched(long unused) {
    (void)unused;
    const char *(*volatile call)(long) = extra_version;
    return call(0)[0] != 0;
}
