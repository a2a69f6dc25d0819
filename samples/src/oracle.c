/* The oracle: the sample kernel's functions built as an ordinary hosted program and run
 * natively (x86-64) or under qemu-ppc64le. Its output is what Splice's machine must
 * reproduce by calling the same functions inside the emulator. */
#include <stdio.h>
#include "kernel.h"

typedef long (*fn3)(long, long, long);

struct oracle_case {
    const char *name;
    fn3 fn;
    int argc;
    long a, b, c;
};

#define CASE(f, n, a, b, c) {#f, (fn3)(void (*)(void))f, n, a, b, c},
static const struct oracle_case cases[] = {
#include "cases.def"
};
#undef CASE

int main(void) {
    for (unsigned i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const struct oracle_case *k = &cases[i];
        long args[3] = {k->a, k->b, k->c};
        printf("%s", k->name);
        for (int j = 0; j < k->argc; j++)
            printf(" %ld", args[j]);
        printf(" -> %ld\n", k->fn(k->a, k->b, k->c));
    }
    return 0;
}
