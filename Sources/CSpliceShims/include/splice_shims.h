/* What Swift cannot call directly in Unicorn 2.0.1: uc_hook_add and uc_ctl are variadic
 * (Swift marks them unavailable) and the uc_ctl_* helpers are macros. Also the two hooks
 * that run on every instruction or fault, written in C so the hot path never enters Swift. */
#ifndef SPLICE_SHIMS_H
#define SPLICE_SHIMS_H

#include <stdint.h>
#include <stdbool.h>
#include <unicorn/unicorn.h>

/* Non-variadic uc_hook_add for the three callback shapes Splice uses. */
uc_err splice_hook_code(uc_engine *uc, uc_hook *hh, uc_cb_hookcode_t cb, void *user_data,
                        uint64_t begin, uint64_t end);
uc_err splice_hook_block(uc_engine *uc, uc_hook *hh, uc_cb_hookcode_t cb, void *user_data,
                         uint64_t begin, uint64_t end);
uc_err splice_hook_interrupt(uc_engine *uc, uc_hook *hh, uc_cb_hookintr_t cb, void *user_data);

/* uc_ctl helpers. remove_cache drops the translated blocks covering [begin, end) of this
 * engine only: call it on the thread that owns the engine. */
uc_err splice_ctl_remove_cache(uc_engine *uc, uint64_t begin, uint64_t end);
uc_err splice_ctl_flush_tb(uc_engine *uc);
uc_err splice_ctl_get_page_size(uc_engine *uc, uint32_t *size);

/* Counts every executed guest instruction into *counter. */
uc_err splice_hook_count_instructions(uc_engine *uc, uc_hook *hh, uint64_t *counter);

/* What stopped the guest, filled by the fault hooks below. */
typedef enum {
    SPLICE_STOP_NONE = 0,
    SPLICE_STOP_INTERRUPT = 1,   /* intno holds the interrupt / exception number */
    SPLICE_STOP_MEMORY = 2,      /* mem_type, address, size describe the access */
    SPLICE_STOP_INVALID_INSN = 3,
} splice_stop_kind;

typedef struct {
    int pc_register;             /* in: the Unicorn register id of the program counter */
    splice_stop_kind kind;       /* out */
    uint32_t intno;
    int mem_type;                /* a uc_mem_type */
    uint64_t address;
    int size;
    uint64_t pc;                 /* PC when the hook ran */
} splice_stop_record;

/* Installs interrupt, invalid-memory and invalid-instruction hooks that fill *record and
 * stop the engine. The record must outlive the hooks. */
uc_err splice_hook_faults(uc_engine *uc, uc_hook hooks[3], splice_stop_record *record);

/* A vCPU's return-to-guest safe point: the rendezvous flag it obeys (shared by all vCPUs)
 * and its own sync request (a non-stop sync, the IPI of Linux's text_poke_bp, delivered here). */
typedef struct {
    const int *pending;
    int sync;
} splice_safe_point;

/* Stops the engine when it is about to execute `address` while *pending or sync is
 * nonzero. Costs one callback per pass, none elsewhere. A stop made here resumes exactly:
 * Unicorn syncs the PC before a code hook runs. (A uc_emu_stop from another thread, or
 * from a block hook, does not: 2.0.1 then skips restoring the PC of the interrupted
 * block chain and a resume re-executes code; see probes/async_stop.c.) */
uc_err splice_hook_safe_point(uc_engine *uc, uc_hook *hh, uint64_t address, splice_safe_point *point);
/* Raise / take (read and clear) a vCPU's sync request. */
void splice_safe_point_request_sync(splice_safe_point *point);
int splice_safe_point_take_sync(splice_safe_point *point);

/* Atomic access to the pending flag from Swift. */
void splice_flag_store(int *flag, int value);
int splice_flag_load(const int *flag);

#endif
