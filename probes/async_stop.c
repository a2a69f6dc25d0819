/*
 * Probe (reference, not product code): is a vCPU stopped by uc_emu_stop() from another
 * host thread resumable at the PC Unicorn reports?  Debian's Unicorn 2.0.1, x86-64.
 *
 * The guest loop keeps three counters that must agree at the end of every iteration:
 *   TB1: rax = [rdi] + 1; [rdi] = rax; rbx += 1; rax == rbx or halt
 *   TB2: rcx += 1; [rdi+8] = rcx; rcx == rbx or halt; jmp TB1
 * A resume that re-executes TB1 after TB1 already ran (PC reported stale) makes rbx run
 * ahead of rcx and the guest halts; a resume at the right PC never does.
 *
 * Modes:
 *   0  no hooks at all, stop from another thread
 *   1  one UC_HOOK_CODE on an address the loop never executes, stop from another thread
 *   2  a UC_HOOK_BLOCK that stops the engine from its own thread when a flag set by the
 *      other thread is up
 *   3  a UC_HOOK_CODE on the loop head (TB1's first instruction) that stops the engine from
 *      its own thread when that flag is up: what Splice does at its safe point
 *   4  mode 2 plus the unrelated UC_HOOK_CODE of mode 1
 *
 * Measured on this machine kind, 200,000 stops each (broken resumes):
 *   mode 0: 93,246   mode 1: 61,570   mode 2: 0   mode 3: 0   mode 4: 72,638
 * A stop requested from another thread leaves a stale PC (2.0.1 does not restore the PC
 * of the interrupted chain of blocks when a stop was requested), so the resume re-runs
 * code. A block-hook stop is exact only while no code hook exists anywhere; a code-hook
 * stop is exact (the PC is synced before the hook runs).
 *
 * Build: gcc -O2 -pthread async_stop.c -o async_stop -lunicorn
 * Run:   ./async_stop MODE STOPS    (prints stops, halts = broken resumes)
 */
#include <unicorn/unicorn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CODE 0x100000
#define DATA 0x200000

static const uint8_t loop[] = {
    0x48, 0x8b, 0x07,                   /* TB1: mov rax,[rdi]        */
    0x48, 0x83, 0xc0, 0x01,             /*      add rax,1            */
    0x48, 0x89, 0x07,                   /*      mov [rdi],rax        */
    0x48, 0x83, 0xc3, 0x01,             /*      add rbx,1            */
    0x48, 0x39, 0xd8,                   /*      cmp rax,rbx          */
    0x0f, 0x85, 0x16, 0x00, 0x00, 0x00, /* jne bad (+0x16) */
    0x48, 0x83, 0xc1, 0x01,             /* TB2: add rcx,1            */
    0x48, 0x89, 0x4f, 0x08,             /*      mov [rdi+8],rcx      */
    0x48, 0x39, 0xd9,                   /*      cmp rcx,rbx          */
    0x0f, 0x85, 0x05, 0x00, 0x00, 0x00, /*      jne bad (+5)         */
    0xe9, 0xd3, 0xff, 0xff, 0xff,       /* jmp TB1 */
    0xf4,                               /* bad: hlt                  */
};

static uc_engine *uc;
static atomic_int want_stop, done;
static atomic_long stops_seen;

static void on_block(uc_engine *u, uint64_t address, uint32_t size, void *user) {
    (void)address; (void)size; (void)user;
    if (atomic_exchange(&want_stop, 0)) uc_emu_stop(u);
}

static void on_head(uc_engine *u, uint64_t address, uint32_t size, void *user) {
    (void)address; (void)size; (void)user;
    if (atomic_exchange(&want_stop, 0)) uc_emu_stop(u);
}

static void on_never(uc_engine *u, uint64_t address, uint32_t size, void *user) {
    (void)u; (void)address; (void)size; (void)user;
}

static int mode;

static void *stopper(void *arg) {
    (void)arg;
    while (!atomic_load(&done)) {
        if (mode >= 2) atomic_store(&want_stop, 1);
        else uc_emu_stop(uc);
        for (volatile int i = 0; i < 2000; i++) {}
    }
    return NULL;
}

int main(int argc, char **argv) {
    mode = argc > 1 ? atoi(argv[1]) : 0;
    long want = argc > 2 ? atol(argv[2]) : 200000;
    if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc)) return 1;
    uc_mem_map(uc, CODE, 0x1000, UC_PROT_READ | UC_PROT_EXEC);
    uc_mem_map(uc, DATA, 0x1000, UC_PROT_READ | UC_PROT_WRITE);
    uc_mem_write(uc, CODE, loop, sizeof loop);
    uint64_t rdi = DATA, zero = 0;
    uc_reg_write(uc, UC_X86_REG_RDI, &rdi);
    uc_reg_write(uc, UC_X86_REG_RBX, &zero);
    uc_reg_write(uc, UC_X86_REG_RCX, &zero);
    uc_hook h1, h2;
    if (mode == 1 || mode == 4) uc_hook_add(uc, &h1, UC_HOOK_CODE, (void *)on_never, NULL, CODE + 0x800, CODE + 0x800);
    if (mode == 2 || mode == 4) uc_hook_add(uc, &h2, UC_HOOK_BLOCK, (void *)on_block, NULL, 1, 0);
    if (mode == 3) uc_hook_add(uc, &h2, UC_HOOK_CODE, (void *)on_head, NULL, CODE, CODE);
    pthread_t t;
    pthread_create(&t, NULL, stopper, NULL);
    uint64_t pc = CODE;
    long starts = 0, halts = 0;
    while (atomic_load(&stops_seen) < want) {
        uc_err e = uc_emu_start(uc, pc, 0, 0, 0);
        starts++;
        uc_reg_read(uc, UC_X86_REG_RIP, &pc);
        if (e != UC_ERR_OK || pc == CODE + sizeof loop) {
            /* halted: a resume re-ran code. Count it, resynchronise the counters, go on. */
            halts++;
            if (halts <= 3) {
                uint64_t m[2], b, c; uc_mem_read(uc, DATA, m, 16);
                uc_reg_read(uc, UC_X86_REG_RBX, &b); uc_reg_read(uc, UC_X86_REG_RCX, &c);
                fprintf(stderr, "halt: err=%s pc=%#llx mem=%llu,%llu rbx=%llu rcx=%llu\n", uc_strerror(e),
                        (unsigned long long)pc, (unsigned long long)m[0], (unsigned long long)m[1],
                        (unsigned long long)b, (unsigned long long)c);
            }
            uint64_t v;
            uc_mem_read(uc, DATA, &v, 8);
            uc_reg_write(uc, UC_X86_REG_RBX, &v);
            uc_reg_write(uc, UC_X86_REG_RCX, &v);
            pc = CODE;
        }
        atomic_fetch_add(&stops_seen, 1);
    }
    atomic_store(&done, 1);
    pthread_join(t, NULL);
    uint64_t mem[2];
    uc_mem_read(uc, DATA, mem, 16);
    printf("mode %d: %ld stops/resumes, %ld broken resumes (guest halted), %llu iterations\n",
           mode, starts, halts, (unsigned long long)mem[0]);
    return halts ? 2 : 0;
}
