#include "splice_shims.h"

uc_err splice_hook_code(uc_engine *uc, uc_hook *hh, uc_cb_hookcode_t cb, void *user_data,
                        uint64_t begin, uint64_t end) {
    return uc_hook_add(uc, hh, UC_HOOK_CODE, (void *)cb, user_data, begin, end);
}

uc_err splice_hook_block(uc_engine *uc, uc_hook *hh, uc_cb_hookcode_t cb, void *user_data,
                         uint64_t begin, uint64_t end) {
    return uc_hook_add(uc, hh, UC_HOOK_BLOCK, (void *)cb, user_data, begin, end);
}

uc_err splice_hook_interrupt(uc_engine *uc, uc_hook *hh, uc_cb_hookintr_t cb, void *user_data) {
    return uc_hook_add(uc, hh, UC_HOOK_INTR, (void *)cb, user_data, 1, 0);
}

uc_err splice_ctl_remove_cache(uc_engine *uc, uint64_t begin, uint64_t end) {
    return uc_ctl_remove_cache(uc, begin, end);
}

/* The 2.0.1 macro for UC_CTL_TB_FLUSH is misnamed uc_ctl_flush_tlb. */
uc_err splice_ctl_flush_tb(uc_engine *uc) { return uc_ctl_flush_tlb(uc); }

uc_err splice_ctl_get_page_size(uc_engine *uc, uint32_t *size) {
    return uc_ctl_get_page_size(uc, size);
}

static void count_instruction(uc_engine *uc, uint64_t address, uint32_t size, void *user) {
    (void)uc; (void)address; (void)size;
    (*(uint64_t *)user)++;
}

uc_err splice_hook_count_instructions(uc_engine *uc, uc_hook *hh, uint64_t *counter) {
    return uc_hook_add(uc, hh, UC_HOOK_CODE, (void *)count_instruction, counter, 1, 0);
}

static void record_pc(uc_engine *uc, splice_stop_record *r) {
    uint64_t pc = 0;
    uc_reg_read(uc, r->pc_register, &pc);
    r->pc = pc;
}

static void on_interrupt(uc_engine *uc, uint32_t intno, void *user) {
    splice_stop_record *r = user;
    if (r->kind == SPLICE_STOP_NONE) {
        r->kind = SPLICE_STOP_INTERRUPT;
        r->intno = intno;
        record_pc(uc, r);
    }
    uc_emu_stop(uc);
}

static bool on_invalid_memory(uc_engine *uc, uc_mem_type type, uint64_t address, int size,
                              int64_t value, void *user) {
    (void)value;
    splice_stop_record *r = user;
    if (r->kind == SPLICE_STOP_NONE) {
        r->kind = SPLICE_STOP_MEMORY;
        r->mem_type = type;
        r->address = address;
        r->size = size;
        record_pc(uc, r);
    }
    return false; /* not handled: the engine stops with the matching UC_ERR_* */
}

static bool on_invalid_instruction(uc_engine *uc, void *user) {
    splice_stop_record *r = user;
    if (r->kind == SPLICE_STOP_NONE) {
        r->kind = SPLICE_STOP_INVALID_INSN;
        record_pc(uc, r);
    }
    return false;
}

uc_err splice_hook_faults(uc_engine *uc, uc_hook hooks[3], splice_stop_record *record) {
    uc_err err = uc_hook_add(uc, &hooks[0], UC_HOOK_INTR, (void *)on_interrupt, record, 1, 0);
    if (err != UC_ERR_OK) return err;
    err = uc_hook_add(uc, &hooks[1], UC_HOOK_MEM_INVALID, (void *)on_invalid_memory, record, 1, 0);
    if (err != UC_ERR_OK) return err;
    return uc_hook_add(uc, &hooks[2], UC_HOOK_INSN_INVALID, (void *)on_invalid_instruction,
                       record, 1, 0);
}

static void on_safe_point(uc_engine *uc, uint64_t address, uint32_t size, void *user) {
    (void)address; (void)size;
    splice_safe_point *point = user;
    if (__atomic_load_n(point->pending, __ATOMIC_ACQUIRE) || __atomic_load_n(&point->sync, __ATOMIC_ACQUIRE))
        uc_emu_stop(uc);
}

uc_err splice_hook_safe_point(uc_engine *uc, uc_hook *hh, uint64_t address, splice_safe_point *point) {
    return uc_hook_add(uc, hh, UC_HOOK_CODE, (void *)on_safe_point, point, address, address);
}

void splice_safe_point_request_sync(splice_safe_point *point) {
    __atomic_store_n(&point->sync, 1, __ATOMIC_RELEASE);
}

int splice_safe_point_take_sync(splice_safe_point *point) {
    return __atomic_exchange_n(&point->sync, 0, __ATOMIC_ACQ_REL);
}

void splice_flag_store(int *flag, int value) { __atomic_store_n(flag, value, __ATOMIC_RELEASE); }
int splice_flag_load(const int *flag) { return __atomic_load_n(flag, __ATOMIC_ACQUIRE); }
