/* Built with -fcf-protection=branch -mmanual-endbr (x86-64 only): cf_check gives just
 * this function an endbr64, so the sample has one ENDBR function among plain ones. */
#include "kernel.h"

#if defined(__x86_64__)
#define CF_CHECK __attribute__((cf_check))
#else
#define CF_CHECK
#endif

__attribute__((noinline, used)) CF_CHECK long checked_double(long x) { return 2 * x; }
