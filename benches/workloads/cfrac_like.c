/* cfrac_like: many short-lived small objects, single-threaded.
 *
 * Models a factoring program in the style of the continued-fraction method: arbitrary-precision
 * integers live in malloc'd arrays of 32-bit limbs, every arithmetic operation returns a freshly
 * allocated result and the operands die almost immediately. Per step it expands the continued
 * fraction of sqrt(N) one term, updates the convergent numerator P mod N, checks the identity
 * P_k^2 = (-1)^(k+1) d_(k+1) (mod N), and trial-divides d_(k+1) over a small factor base.
 * Objects are 4..72 bytes (with the default 8 limbs) and live for a few operations.
 *
 * usage: cfrac_like [limbs=8] [numbers=8] [steps=6000]
 *   limbs   size of each N in 32-bit limbs (N is pseudo-random, top bit set)
 *   numbers how many different N to expand
 *   steps   continued-fraction terms per N
 */
#include "common.h"

typedef struct big {
    uint32_t n;    /* number of limbs in use; 0 means zero; d[n-1] != 0 */
    uint32_t d[]; /* little-endian limbs */
} big;

static big *big_new(uint32_t n) {
    big *b = xmalloc(sizeof(big) + (size_t)n * sizeof(uint32_t));
    b->n = n;
    return b;
}

static big *big_trim(big *b) {
    while (b->n && b->d[b->n - 1] == 0) b->n--;
    return b;
}

static big *big_small(uint32_t v) {
    big *b = big_new(1);
    b->d[0] = v;
    return big_trim(b);
}

static big *big_copy(const big *a) {
    big *b = big_new(a->n);
    memcpy(b->d, a->d, a->n * sizeof(uint32_t));
    return b;
}

static int big_cmp(const big *a, const big *b) {
    if (a->n != b->n) return a->n < b->n ? -1 : 1;
    for (uint32_t i = a->n; i-- > 0;)
        if (a->d[i] != b->d[i]) return a->d[i] < b->d[i] ? -1 : 1;
    return 0;
}

static big *big_add(const big *a, const big *b) {
    if (a->n < b->n) {
        const big *t = a;
        a = b;
        b = t;
    }
    big *r = big_new(a->n + 1);
    uint64_t c = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        c += (uint64_t)a->d[i] + (i < b->n ? b->d[i] : 0);
        r->d[i] = (uint32_t)c;
        c >>= 32;
    }
    r->d[a->n] = (uint32_t)c;
    return big_trim(r);
}

/* a - b, requires a >= b */
static big *big_sub(const big *a, const big *b) {
    big *r = big_new(a->n);
    int64_t br = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        int64_t t = (int64_t)a->d[i] - (i < b->n ? b->d[i] : 0) - br;
        br = t < 0;
        r->d[i] = (uint32_t)t;
    }
    CHECK(br == 0, "big_sub underflow");
    return big_trim(r);
}

static big *big_mul(const big *a, const big *b) {
    if (a->n == 0 || b->n == 0) return big_new(0);
    big *r = big_new(a->n + b->n);
    memset(r->d, 0, r->n * sizeof(uint32_t));
    for (uint32_t i = 0; i < a->n; i++) {
        uint64_t c = 0;
        for (uint32_t j = 0; j < b->n; j++) {
            c += (uint64_t)a->d[i] * b->d[j] + r->d[i + j];
            r->d[i + j] = (uint32_t)c;
            c >>= 32;
        }
        r->d[i + b->n] = (uint32_t)c;
    }
    return big_trim(r);
}

static big *big_shr1(const big *a) {
    big *r = big_new(a->n);
    for (uint32_t i = 0; i < a->n; i++)
        r->d[i] = (a->d[i] >> 1) | (i + 1 < a->n ? a->d[i + 1] << 31 : 0);
    return big_trim(r);
}

/* a << s (0 <= s < 32) into a fresh number with `extra` more limbs than a. */
static big *big_shl_bits(const big *a, unsigned s, uint32_t extra) {
    big *r = big_new(a->n + extra);
    memset(r->d, 0, r->n * sizeof(uint32_t));
    uint32_t carry = 0;
    for (uint32_t i = 0; i < a->n; i++) {
        r->d[i] = (a->d[i] << s) | carry;
        carry = s ? a->d[i] >> (32 - s) : 0;
    }
    if (extra) r->d[a->n] = carry;
    return r; /* not trimmed: callers rely on the limb count */
}

/* q = a / v, returns a % v; v != 0 */
static uint32_t big_divmod_small(const big *a, uint32_t v, big **q) {
    big *r = big_new(a->n);
    uint64_t rem = 0;
    for (uint32_t i = a->n; i-- > 0;) {
        uint64_t cur = (rem << 32) | a->d[i];
        r->d[i] = (uint32_t)(cur / v);
        rem = cur % v;
    }
    *q = big_trim(r);
    return (uint32_t)rem;
}

/* Long division (Knuth's algorithm D on 32-bit limbs). q and/or r may be NULL. b != 0. */
static void big_divmod(const big *a, const big *b, big **q, big **r) {
    CHECK(b->n != 0, "division by zero");
    if (big_cmp(a, b) < 0) {
        if (q) *q = big_new(0);
        if (r) *r = big_copy(a);
        return;
    }
    if (b->n == 1) {
        big *qq;
        uint32_t rr = big_divmod_small(a, b->d[0], &qq);
        if (q) *q = qq; else free(qq);
        if (r) *r = big_small(rr);
        return;
    }
    uint32_t n = b->n, m = a->n - b->n;
    unsigned s = (unsigned)__builtin_clz(b->d[n - 1]);
    big *v = big_shl_bits(b, s, 0);  /* normalised divisor, top bit set */
    big *u = big_shl_bits(a, s, 1);  /* dividend with one extra limb */
    big *qq = big_new(m + 1);
    uint64_t vtop = v->d[n - 1], vnext = v->d[n - 2];
    for (uint32_t j = m + 1; j-- > 0;) {
        uint64_t num = ((uint64_t)u->d[j + n] << 32) | u->d[j + n - 1];
        uint64_t qhat = num / vtop, rhat = num % vtop;
        while (qhat >> 32 || qhat * vnext > ((rhat << 32) | u->d[j + n - 2])) {
            qhat--;
            rhat += vtop;
            if (rhat >> 32) break;
        }
        /* u[j..j+n] -= qhat * v */
        int64_t k = 0, t;
        for (uint32_t i = 0; i < n; i++) {
            uint64_t p = qhat * v->d[i];
            t = (int64_t)u->d[i + j] - k - (int64_t)(p & 0xFFFFFFFFu);
            u->d[i + j] = (uint32_t)t;
            k = (int64_t)(p >> 32) - (t >> 32);
        }
        t = (int64_t)u->d[j + n] - k;
        u->d[j + n] = (uint32_t)t;
        if (t < 0) { /* qhat was one too large: add v back */
            qhat--;
            uint64_t c = 0;
            for (uint32_t i = 0; i < n; i++) {
                c += (uint64_t)u->d[i + j] + v->d[i];
                u->d[i + j] = (uint32_t)c;
                c >>= 32;
            }
            u->d[j + n] += (uint32_t)c;
        }
        qq->d[j] = (uint32_t)qhat;
    }
    if (q) *q = big_trim(qq); else free(qq);
    if (r) {
        big *rr = big_new(n);
        for (uint32_t i = 0; i < n; i++)
            rr->d[i] = (u->d[i] >> s) | (s && i + 1 <= n ? u->d[i + 1] << (32 - s) : 0);
        *r = big_trim(rr);
    }
    free(u);
    free(v);
}

static big *big_div(const big *a, const big *b) {
    big *q;
    big_divmod(a, b, &q, NULL);
    return q;
}

static big *big_mod(const big *a, const big *b) {
    big *r;
    big_divmod(a, b, NULL, &r);
    return r;
}

static uint32_t big_bits(const big *a) {
    return a->n ? 32 * (a->n - 1) + (32 - (uint32_t)__builtin_clz(a->d[a->n - 1])) : 0;
}

/* floor(sqrt(a)) by Newton's iteration from an over-estimate. */
static big *big_isqrt(const big *a) {
    if (a->n == 0) return big_new(0);
    uint32_t e = (big_bits(a) + 1) / 2;
    big *x = big_new(e / 32 + 1);
    memset(x->d, 0, x->n * sizeof(uint32_t));
    x->d[e / 32] = 1u << (e % 32);
    big_trim(x);
    for (;;) {
        big *qt = big_div(a, x);
        big *sum = big_add(x, qt);
        big *y = big_shr1(sum);
        free(qt);
        free(sum);
        if (big_cmp(y, x) >= 0) {
            free(y);
            return x;
        }
        free(x);
        x = y;
    }
}

static const uint32_t primes[] = {2,  3,  5,  7,  11, 13, 17, 19, 23, 29, 31, 37, 41, 43,
                                  47, 53, 59, 61, 67, 71, 73, 79, 83, 89, 97, 101, 103, 107};
#define NPRIMES (sizeof(primes) / sizeof(primes[0]))

/* Trial-divide x over the factor base; returns a bitmask of primes that divide it and whether
 * the cofactor is 1 (bit 31). Allocates a quotient per division, like a naive bignum code. */
static uint32_t trial_divide(const big *x) {
    big *c = big_copy(x);
    uint32_t mask = 0;
    for (unsigned i = 0; i < NPRIMES; i++) {
        for (;;) {
            big *q;
            uint32_t rem = big_divmod_small(c, primes[i], &q);
            if (rem != 0) {
                free(q);
                break;
            }
            mask |= 1u << i;
            free(c);
            c = q;
        }
    }
    if (c->n == 1 && c->d[0] == 1) mask |= 1u << 31;
    free(c);
    return mask;
}

int main(int argc, char **argv) {
    uint32_t limbs = (uint32_t)arg_u64(argc, argv, 1, 8);
    uint64_t numbers = arg_u64(argc, argv, 2, 8);
    uint64_t steps = arg_u64(argc, argv, 3, 6000);
    if (limbs < 2) limbs = 2;

    uint64_t h = 0, smooth = 0, checked = 0;
    rng r;
    rng_seed(&r, 0xCF4AC);
    for (uint64_t num = 0; num < numbers; num++) {
        big *N = big_new(limbs);
        for (uint32_t i = 0; i < limbs; i++) N->d[i] = (uint32_t)rng_next(&r);
        N->d[limbs - 1] |= 0x80000000u;
        big *a0 = big_isqrt(N);
        {
            big *sq = big_mul(a0, a0);
            int perfect = big_cmp(sq, N) == 0;
            free(sq);
            if (perfect) { /* astronomically unlikely; skip rather than divide by zero */
                free(a0);
                free(N);
                continue;
            }
        }
        big *m = big_new(0), *d = big_small(1), *a = big_copy(a0);
        big *Pprev = big_small(1), *P = big_mod(a0, N);
        for (uint64_t k = 0; k < steps; k++) {
            /* m' = d*a - m ; d' = (N - m'^2) / d ; a' = (a0 + m') / d' */
            big *da = big_mul(d, a);
            big *m1 = big_sub(da, m);
            free(da);
            big *m1sq = big_mul(m1, m1);
            big *num2 = big_sub(N, m1sq);
            free(m1sq);
            big *d1, *rem;
            big_divmod(num2, d, &d1, &rem);
            CHECK(rem->n == 0, "continued fraction step not exact");
            free(rem);
            free(num2);
            big *s = big_add(a0, m1);
            big *a1 = big_div(s, d1);
            free(s);

            /* P_k^2 mod N must equal d_(k+1) for odd k and N - d_(k+1) for even k */
            big *P2 = big_mul(P, P);
            big *P2m = big_mod(P2, N);
            free(P2);
            big *expect = (k & 1) ? big_copy(d1) : big_sub(N, d1);
            CHECK(big_cmp(P2m, expect) == 0, "convergent identity violated");
            free(expect);
            free(P2m);
            checked++;

            uint32_t mask = trial_divide(d1);
            if (mask >> 31) smooth++;
            h = mix(h, mask);
            h = mix(h, a1->n ? a1->d[0] : 0);

            /* P_(k+1) = a_(k+1) P_k + P_(k-1)  (mod N) */
            big *aP = big_mul(a1, P);
            big *sum = big_add(aP, Pprev);
            free(aP);
            big *Pnext = big_mod(sum, N);
            free(sum);
            free(Pprev);
            Pprev = P;
            P = Pnext;
            h = mix(h, P->n ? P->d[0] : 0);

            free(m);
            m = m1;
            free(d);
            d = d1;
            free(a);
            a = a1;
        }
        free(m);
        free(d);
        free(a);
        free(P);
        free(Pprev);
        free(a0);
        free(N);
    }
    printf("cfrac_like checksum=%016llx steps=%llu smooth=%llu\n", (unsigned long long)h,
           (unsigned long long)checked, (unsigned long long)smooth);
    return 0;
}
