/* A library to preload before the allocator under test: counts the threads the process
 * creates with pthread_create (the allocator's helper threads included) and prints
 * "threads_created N" on stderr at exit. tests/profile.rs checks with it that a profile with
 * nothing to reserve starts no thread. Built with cc -shared -fPIC. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <unistd.h>

typedef int (*create_fn)(pthread_t *, const pthread_attr_t *, void *(*)(void *), void *);
static int created;

int pthread_create(pthread_t *thread, const pthread_attr_t *attr, void *(*start)(void *),
                   void *arg) {
    static create_fn real;
    if (!real)
        real = (create_fn)dlsym(RTLD_NEXT, "pthread_create");
    __atomic_add_fetch(&created, 1, __ATOMIC_RELAXED);
    return real(thread, attr, start, arg);
}

__attribute__((destructor)) static void report(void) {
    char line[64];
    int n = snprintf(line, sizeof line, "threads_created %d\n", created);
    if (write(2, line, n) < 0)
        return;
}
