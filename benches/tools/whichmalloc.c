/* whichmalloc: print the path of the shared object whose malloc and free this process uses.
 *
 * run.py runs it under each LD_PRELOAD before benchmarking, so that a library the dynamic
 * loader silently refused to preload ("cannot be preloaded ... ignored") is caught instead of
 * being benchmarked as glibc under another name.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

int main(void) {
    void *(*volatile m)(size_t) = malloc;
    void (*volatile f)(void *) = free;
    Dl_info mi, fi;
    if (!dladdr((void *)m, &mi) || !dladdr((void *)f, &fi)) {
        fprintf(stderr, "dladdr failed\n");
        return 1;
    }
    void *p = m(100);
    if (!p) return 1;
    f(p);
    printf("%s\n%s\n", mi.dli_fname, fi.dli_fname);
    return 0;
}
