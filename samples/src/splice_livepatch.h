/* What a Splice payload's C source can use (docs/payload-format.md): hooks, states and
 * shadow variables. The hook sections and the state records are what the loader reads;
 * the splice_* functions are host calls the loader links a payload against.
 *
 * Hook signatures:
 *   load, unload, postapply, postrevert:  void hook(void)
 *   preapply, prerevert:                  int hook(void)   nonzero vetoes the action
 *   apply, revert (action hooks):         int hook(void)   run instead of the native
 *                                         redirect writes; nonzero fails the action */
#ifndef SPLICE_LIVEPATCH_H
#define SPLICE_LIVEPATCH_H

#define SPLICE_HOOK(kind, fn)                                                                   \
    static __typeof__(&fn) const splice_hook_##kind##_##fn                                      \
        __attribute__((used, section(".livepatch.hooks." #kind))) = fn

/* A state a payload changes in the system (Linux's klp_state): an id, a version, and a
 * word of data the payload's hooks keep. A REPLACE is refused unless the new payload has
 * every state of the payloads it replaces, at the same or a newer version. */
struct splice_state {
    unsigned long id;
    unsigned long version;
    unsigned long data;
};
#define SPLICE_STATE(var, id_, version_)                                                        \
    static struct splice_state var __attribute__((used, section(".livepatch.states"))) = {id_, version_, 0}
/* The state `id` of the newest applied payload (to take it over), NULL if none has it. */
struct splice_state *splice_state_prev(unsigned long id);

/* Shadow variables (Linux's klp_shadow_*): data attached to an object by (object, id). */
void *splice_shadow_attach(void *object, unsigned long id, unsigned long size);        /* NULL if present or full */
void *splice_shadow_get(void *object, unsigned long id);                               /* NULL if absent */
void *splice_shadow_get_or_attach(void *object, unsigned long id, unsigned long size); /* NULL if full */
void splice_shadow_free(void *object, unsigned long id);
void splice_shadow_free_all(unsigned long id);
void *splice_shadow_any(unsigned long id); /* some object that has shadow `id`, NULL if none */

/* With a constructor and a destructor, as Linux has them. The constructor runs on the
 * zeroed data before alloc returns; if it fails the variable is freed again. */
typedef int (*splice_shadow_ctor)(void *object, void *data, void *ctor_data);
typedef void (*splice_shadow_dtor)(void *object, void *data);

static inline void *splice_shadow_alloc(void *object, unsigned long id, unsigned long size,
                                        splice_shadow_ctor ctor, void *ctor_data) {
    void *data = splice_shadow_attach(object, id, size);
    if (data && ctor && ctor(object, data, ctor_data)) {
        splice_shadow_free(object, id);
        return 0;
    }
    return data;
}

static inline void *splice_shadow_get_or_alloc(void *object, unsigned long id, unsigned long size,
                                               splice_shadow_ctor ctor, void *ctor_data) {
    void *data = splice_shadow_get(object, id);
    return data ? data : splice_shadow_alloc(object, id, size, ctor, ctor_data);
}

static inline void splice_shadow_free_with(void *object, unsigned long id, splice_shadow_dtor dtor) {
    void *data = splice_shadow_get(object, id);
    if (data && dtor)
        dtor(object, data);
    splice_shadow_free(object, id);
}

static inline void splice_shadow_free_all_with(unsigned long id, splice_shadow_dtor dtor) {
    void *object;
    while ((object = splice_shadow_any(id)) != 0)
        splice_shadow_free_with(object, id, dtor);
}

#endif
