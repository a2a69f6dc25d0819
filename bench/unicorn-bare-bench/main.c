/*
 * unicorn-bare-bench: the reference that `splice bench emu` compares Splice's machine to.
 * It runs one guest function of a static ELF image straight on libunicorn, the way a
 * bare C program would (uc_mem_map + uc_mem_write, registers set by hand, uc_emu_start
 * until a return address), with no Splice code anywhere on the path.
 *
 *   unicorn-bare-bench <image.elf> <function> <argument> <runs>
 *
 * Prints one line: instructions=<per call> runs=<runs> seconds=<total for all runs>
 * The instruction count comes from a separate run on a fresh engine with a counting code
 * hook; the timed runs have no hooks at all.
 */
#include <unicorn/unicorn.h>
#include <libelf.h>
#include <gelf.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define RETURN_ADDRESS 0x6fff0000ULL
#define STACK_BASE 0x70000000ULL
#define STACK_SIZE 0x100000ULL
#define PAGE 0x10000ULL

typedef struct { uint64_t vaddr, memsz, filesz; unsigned char *data; } segment;

static segment segments[16];
static int nsegments;
static uint64_t func_addr;
static int machine;

static void die(const char *what) { fprintf(stderr, "unicorn-bare-bench: %s\n", what); exit(2); }

static void read_image(const char *path, const char *function) {
    if (elf_version(EV_CURRENT) == EV_NONE) die("libelf init");
    int fd = open(path, O_RDONLY);
    if (fd < 0) die("cannot open image");
    Elf *elf = elf_begin(fd, ELF_C_READ, NULL);
    if (!elf) die(elf_errmsg(-1));
    GElf_Ehdr eh;
    if (!gelf_getehdr(elf, &eh)) die(elf_errmsg(-1));
    machine = eh.e_machine;
    size_t n;
    elf_getphdrnum(elf, &n);
    size_t fsize;
    char *raw = elf_rawfile(elf, &fsize);
    for (size_t i = 0; i < n && nsegments < 16; i++) {
        GElf_Phdr ph;
        gelf_getphdr(elf, (int)i, &ph);
        if (ph.p_type != PT_LOAD || ph.p_memsz == 0) continue;
        segment *s = &segments[nsegments++];
        s->vaddr = ph.p_vaddr; s->memsz = ph.p_memsz; s->filesz = ph.p_filesz;
        s->data = malloc(ph.p_filesz ? ph.p_filesz : 1);
        memcpy(s->data, raw + ph.p_offset, ph.p_filesz);
    }
    Elf_Scn *scn = NULL;
    while ((scn = elf_nextscn(elf, scn))) {
        GElf_Shdr sh;
        gelf_getshdr(scn, &sh);
        if (sh.sh_type != SHT_SYMTAB) continue;
        Elf_Data *d = elf_getdata(scn, NULL);
        for (size_t i = 0; i < sh.sh_size / sh.sh_entsize; i++) {
            GElf_Sym sym;
            gelf_getsym(d, (int)i, &sym);
            if (GELF_ST_TYPE(sym.st_info) == STT_FUNC && strcmp(elf_strptr(elf, sh.sh_link, sym.st_name), function) == 0)
                func_addr = sym.st_value;
        }
    }
    if (!func_addr) die("function not found");
    elf_end(elf);
    close(fd);
}

/* ppc64le in Unicorn 2.0.1: set MSR[HV] through the context blob (see shared/DESIGN.md). */
static void ppc_force_msr(uc_engine *uc, uint64_t want) {
    const uint64_t SF = 1ULL << 63, HV = 1ULL << 60, LE = 1;
    size_t size = uc_context_size(uc);
    uc_context *a, *b;
    uc_context_alloc(uc, &a);
    uc_context_alloc(uc, &b);
    uint64_t x = SF; uc_reg_write(uc, UC_PPC_REG_MSR, &x); uc_context_save(uc, a);
    x = SF | LE; uc_reg_write(uc, UC_PPC_REG_MSR, &x); uc_context_save(uc, b);
    unsigned char *pa = (unsigned char *)a, *pb = (unsigned char *)b;
    for (size_t i = 0; i + 8 <= size; i++) {
        uint64_t va, vb;
        memcpy(&va, pa + i, 8); memcpy(&vb, pb + i, 8);
        if (va == SF && vb == (SF | LE)) { uint64_t v = SF | HV; memcpy(pb + i, &v, 8); }
    }
    uc_context_restore(uc, b);
    uc_reg_write(uc, UC_PPC_REG_MSR, &want);
    uc_context_free(a);
    uc_context_free(b);
}

static uc_engine *make_engine(void) {
    uc_engine *uc;
    if (machine == EM_X86_64) {
        if (uc_open(UC_ARCH_X86, UC_MODE_64, &uc)) die("uc_open x86");
    } else if (machine == EM_PPC64) {
        if (uc_open(UC_ARCH_PPC, UC_MODE_PPC64 | UC_MODE_BIG_ENDIAN, &uc)) die("uc_open ppc");
        ppc_force_msr(uc, 0x9000000002803001ULL);
    } else die("unsupported machine");
    for (int i = 0; i < nsegments; i++) {
        uint64_t base = segments[i].vaddr & ~(PAGE - 1);
        uint64_t end = (segments[i].vaddr + segments[i].memsz + PAGE - 1) & ~(PAGE - 1);
        uc_mem_map(uc, base, end - base, UC_PROT_ALL); /* adjacent segments never share a 64K page here */
        uc_mem_write(uc, segments[i].vaddr, segments[i].data, segments[i].filesz);
    }
    uc_mem_map(uc, RETURN_ADDRESS, PAGE, UC_PROT_ALL);
    uc_mem_map(uc, STACK_BASE, STACK_SIZE, UC_PROT_READ | UC_PROT_WRITE);
    return uc;
}

static uc_err call(uc_engine *uc, uint64_t arg) {
    uint64_t sp = STACK_BASE + STACK_SIZE - 256;
    if (machine == EM_X86_64) {
        uint64_t ret = RETURN_ADDRESS;
        sp -= 8;
        uc_mem_write(uc, sp, &ret, 8);
        uc_reg_write(uc, UC_X86_REG_RSP, &sp);
        uc_reg_write(uc, UC_X86_REG_RDI, &arg);
    } else {
        uint64_t ret = RETURN_ADDRESS, zero = 0;
        sp -= 32;
        uc_mem_write(uc, sp, &zero, 8);
        uc_reg_write(uc, UC_PPC_REG_1, &sp);
        uc_reg_write(uc, UC_PPC_REG_3, &arg);
        uc_reg_write(uc, UC_PPC_REG_12, &func_addr);
        uc_reg_write(uc, UC_PPC_REG_LR, &ret);
    }
    return uc_emu_start(uc, func_addr, RETURN_ADDRESS, 0, 0);
}

static void count_hook(uc_engine *uc, uint64_t a, uint32_t s, void *user) { (void)uc; (void)a; (void)s; (*(uint64_t *)user)++; }

int main(int argc, char **argv) {
    if (argc != 5) { fprintf(stderr, "usage: unicorn-bare-bench <image.elf> <function> <argument> <runs>\n"); return 2; }
    read_image(argv[1], argv[2]);
    uint64_t arg = strtoull(argv[3], NULL, 0);
    long runs = atol(argv[4]);

    uc_engine *timed = make_engine();
    if (call(timed, arg) != UC_ERR_OK) die("warm-up call failed");
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < runs; r++)
        if (call(timed, arg) != UC_ERR_OK) die("timed call failed");
    clock_gettime(CLOCK_MONOTONIC, &t1);
    uint64_t result;
    uc_reg_read(timed, machine == EM_X86_64 ? UC_X86_REG_RAX : UC_PPC_REG_3, &result);
    uc_close(timed);

    uc_engine *counted = make_engine();
    uint64_t count = 0;
    uc_hook hh;
    uc_hook_add(counted, &hh, UC_HOOK_CODE, (void *)count_hook, &count, 1, 0);
    if (call(counted, arg) != UC_ERR_OK) die("counted call failed");
    uc_close(counted);

    double seconds = (t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("instructions=%llu runs=%ld seconds=%.9f result=%lld\n", (unsigned long long)count, runs, seconds,
           (long long)result);
    return 0;
}
