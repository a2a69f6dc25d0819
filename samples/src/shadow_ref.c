/* A reference of Splice's shadow-variable host calls for the native and qemu oracle
 * programs only (in Splice the host implements them: SplicePatching/ShadowVariables.swift).
 * Same meaning, a fixed table, no freeing of storage: enough for the oracle's few calls. */
#include <stdlib.h>

struct shadow { void *object; unsigned long id; void *data; };
static struct shadow table[64];

void *splice_shadow_get(void *object, unsigned long id) {
    for (int i = 0; i < 64; i++)
        if (table[i].data && table[i].object == object && table[i].id == id)
            return table[i].data;
    return 0;
}

void *splice_shadow_get_or_attach(void *object, unsigned long id, unsigned long size) {
    void *found = splice_shadow_get(object, id);
    if (found)
        return found;
    for (int i = 0; i < 64; i++)
        if (!table[i].data) {
            table[i] = (struct shadow){object, id, calloc(1, size)};
            return table[i].data;
        }
    return 0;
}
