/* A second ppc64le image with its own TOC, standing in for a patch module until payloads
 * exist: replacement functions that reach their own data through their own TOC, and a
 * "module" function that calls into the kernel through a pointer (a global call that
 * saves and restores its TOC at 24(r1)). Built without -pg and with
 * -fno-optimize-sibling-calls, as the seed asks of patch modules. */
long patch_factor = 5;
long module_bias = 1000000;

__attribute__((noinline, used)) long scaled_v2(long x) { return x * patch_factor + 1000; }

__attribute__((noinline, used)) long scaled_v3(long x) { return x * patch_factor * patch_factor; }

/* Calls a kernel function through a pointer, then uses its own TOC again. */
__attribute__((noinline, used)) long module_call(long (*fn)(long), long x) {
    long r = fn(x);
    return r + module_bias;
}
