/* mode: link-only */
/* stats_json.c — the machine-readable statistics and the version from C.
 *
 * - tm_stats_json(NULL, 0) returns the report's length; a buffer of that length + 1 gets the
 *   whole report, NUL-terminated, and the same length back; a short buffer gets a
 *   NUL-terminated prefix and still the whole length (as snprintf does).
 * - the report is one JSON object naming this process's pid and the dram tier, with its
 *   in_use, peak and reserved figures, and its allocations count grows after a malloc.
 * - tm_version() is "MAJOR.MINOR.PATCH" and agrees with the header's TIERMALLOC_VERSION_*
 *   macros and TIERMALLOC_VERSION.
 */
#define _GNU_SOURCE 1
#include "tiermalloc.h"

#include "check.h"

static unsigned long long number_after(const char *json, const char *key) {
    const char *p = strstr(json, key);
    return p ? strtoull(p + strlen(key), NULL, 10) : 0;
}

int main(void) {
    size_t n = tm_stats_json(NULL, 0);
    CHECK(n > 50, "report length %zu", n);
    char *buf = malloc(n + 64);
    if (!CHECK(buf != NULL, "malloc")) return check_done();
    size_t again = tm_stats_json(buf, n + 64);
    /* The malloc above moved the figures by a few digits. */
    CHECK(again + 32 >= n && again <= n + 32, "lengths %zu then %zu", n, again);
    CHECK(strlen(buf) == again, "NUL-terminated at %zu, strlen %zu", again, strlen(buf));
    CHECK(buf[0] == '{' && buf[again - 2] == '}' && buf[again - 1] == '\n', "one object: %s", buf);

    char pid[32];
    snprintf(pid, sizeof pid, "{\"pid\":%d,", (int)getpid());
    CHECK(strncmp(buf, pid, strlen(pid)) == 0, "starts with %s: %s", pid, buf);
    CHECK(strstr(buf, "\"program\":\"stats_json") != NULL, "program name: %s", buf);
    CHECK(strstr(buf, "\"kind\":\"dram\"") != NULL, "dram tier: %s", buf);
    CHECK(strstr(buf, "\"peak\":") && strstr(buf, "\"reserved\":") && strstr(buf, "\"in_use\":"),
          "figures: %s", buf);
    unsigned long long before = number_after(buf, "\"allocations\":");
    void *blocks[100];
    for (int i = 0; i < 100; i++) blocks[i] = malloc(64);
    tm_stats_json(buf, n + 64);
    CHECK(number_after(buf, "\"allocations\":") >= before + 100, "allocations %llu -> %llu",
          before, number_after(buf, "\"allocations\":"));
    for (int i = 0; i < 100; i++) free(blocks[i]);

    char small[10];
    memset(small, 'x', sizeof small);
    size_t whole = tm_stats_json(small, sizeof small);
    CHECK(whole > sizeof small && small[9] == '\0' && strncmp(small, "{\"pid\":", 7) == 0,
          "short buffer: %zu, %.9s", whole, small);
    free(buf);

    char expect[32];
    snprintf(expect, sizeof expect, "%d.%d.%d", TIERMALLOC_VERSION_MAJOR, TIERMALLOC_VERSION_MINOR,
             TIERMALLOC_VERSION_PATCH);
    CHECK(strcmp(tm_version(), expect) == 0, "tm_version %s, header %s", tm_version(), expect);
    CHECK(TIERMALLOC_VERSION == TIERMALLOC_VERSION_MAJOR * 10000 + TIERMALLOC_VERSION_MINOR * 100 +
                                    TIERMALLOC_VERSION_PATCH,
          "TIERMALLOC_VERSION %d", TIERMALLOC_VERSION);
    return check_done();
}
