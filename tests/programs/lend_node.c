#define _GNU_SOURCE
/* A node of the pool for the lending tests (tests/lending.rs), run under LD_PRELOAD of the
 * tiermalloc cdylib with a tier `cxl:pool,share=...`. Prints "ready", then obeys one command
 * per line on stdin, answering each in one line:
 *   take N    tm_malloc(TM_CXL, BLOCK) N times or until it fails:  "took K errno E ns T"
 *   plain N   malloc(BLOCK) N times:                                 "plain cxl K dram D failed F"
 *   free      frees every block held:                                "freed"
 *   stats     tm_get_stats(TM_CXL):
 *                 "stats capacity C in_use U lent L borrowed B"
 *   nodes     tm_pool_nodes, one line per node, then "end":
 *                 "node pid P share S in_use U lent L borrowed B"
 *   report    tm_print_stats() (to stderr), then                     "reported"
 *   fork      a forked child (no exec) tries to take 3 blocks:      "forked child took K"
 *   churn N   N random take/free steps (for kill -9 at any point):   "churned"
 *   exit      exits (0).
 * BLOCK is 768 KiB: one block per 1 MiB extent. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <tiermalloc.h>

#define BLOCK (768 << 10)
static void *held[4096];
static int n_held;

int main(void) {
    char line[256];
    setvbuf(stdout, NULL, _IOLBF, 0);
    printf("ready\n");
    unsigned x = 2463534242u ^ (unsigned)getpid();
    while (fgets(line, sizeof line, stdin)) {
        int n = 0;
        if (sscanf(line, "take %d", &n) == 1) {
            int k = 0, e = 0;
            struct timespec t0, t1;
            clock_gettime(CLOCK_MONOTONIC, &t0);
            for (; k < n; k++) {
                errno = 0;
                void *p = tm_malloc(TM_CXL, BLOCK);
                if (!p) { e = errno; break; }
                memset(p, 0x5a, 4096);
                held[n_held++] = p;
            }
            clock_gettime(CLOCK_MONOTONIC, &t1);
            printf("took %d errno %d ns %lld\n", k, e,
                   (long long)(t1.tv_sec - t0.tv_sec) * 1000000000LL + (t1.tv_nsec - t0.tv_nsec));
        } else if (sscanf(line, "plain %d", &n) == 1) {
            int cxl = 0, dram = 0, failed = 0;
            for (int i = 0; i < n; i++) {
                void *p = malloc(BLOCK);
                if (!p) { failed++; continue; }
                if (tm_kind_of(p) == TM_CXL) cxl++; else dram++;
                held[n_held++] = p;
            }
            printf("plain cxl %d dram %d failed %d\n", cxl, dram, failed);
        } else if (strncmp(line, "free", 4) == 0) {
            while (n_held) free(held[--n_held]);
            printf("freed\n");
        } else if (strncmp(line, "stats", 5) == 0) {
            tm_stats s;
            if (tm_get_stats(TM_CXL, &s) != 0) { printf("stats none\n"); continue; }
            printf("stats capacity %llu in_use %llu lent %llu borrowed %llu\n",
                   (unsigned long long)s.capacity, (unsigned long long)s.in_use,
                   (unsigned long long)s.lent, (unsigned long long)s.borrowed);
        } else if (strncmp(line, "nodes", 5) == 0) {
            tm_node_info nodes[64];
            int k = tm_pool_nodes(nodes, 64);
            for (int i = 0; i < k && i < 64; i++)
                printf("node pid %u share %llu in_use %llu lent %llu borrowed %llu\n", nodes[i].pid,
                       (unsigned long long)nodes[i].share, (unsigned long long)nodes[i].in_use,
                       (unsigned long long)nodes[i].lent, (unsigned long long)nodes[i].borrowed);
            printf("end\n");
        } else if (strncmp(line, "report", 6) == 0) {
            tm_print_stats();
            printf("reported\n");
        } else if (sscanf(line, "churn %d", &n) == 1) {
            for (int i = 0; i < n; i++) {
                x ^= x << 13; x ^= x >> 17; x ^= x << 5;
                if (x % 3 != 0 && n_held < 4096) {
                    void *p = tm_malloc(TM_CXL, BLOCK / (1 + x % 8));
                    if (p) held[n_held++] = p;
                } else if (n_held) {
                    int j = x % n_held;
                    free(held[j]);
                    held[j] = held[--n_held];
                }
            }
            printf("churned\n");
        } else if (strncmp(line, "fork", 4) == 0) {
            /* A child (no exec) that tries to take 3 blocks: its copy of the tier is private. */
            fflush(stdout);
            pid_t child = fork();
            if (child == 0) {
                int k = 0;
                while (k < 3 && tm_malloc(TM_CXL, BLOCK)) k++;
                _exit(k);
            }
            int status = 0;
            waitpid(child, &status, 0);
            printf("forked child took %d\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1);
        } else if (strncmp(line, "exit", 4) == 0) {
            return 0;
        }
    }
    return 0;
}
