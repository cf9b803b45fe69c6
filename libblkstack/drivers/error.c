/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * error:[ops=..][,errno=..][,rate=..][,after=N][,count=N][,seed=N] -- a
 * filter that fails requests on purpose, to test the layers and the
 * programs above it (after nbdkit's error filter).  The options are
 * described in include/blkstack/errinj.h.
 *
 * A request chosen to fail is refused: the op returns -errno, the
 * framework completes it, and the layer below never sees it.  The
 * choice is made with a pseudo-random generator kept in the layer
 * (xorshift64*, seeded from seed=), never rand() or the clock, so that
 * the same chain and the same requests fail the same way every time.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/driver.h"
#include "blkstack/errinj.h"

#define ERROR_USAGE                                                            \
	"error:[ops=OPS][,errno=E][,rate=R][,after=N][,count=N][,seed=N] "     \
	"(OPS: all, or some of read, write, flush, discard, write-zeroes "     \
	"joined by '+'; R: 0.25, 25% or 1:4)"

struct error_state {
	uint32_t ops;	    /* BKS_OPF() of the ops that may fail */
	int errnum;	    /* positive */
	bool always;	    /* rate 1: no need to draw */
	uint64_t threshold; /* else fail when a draw is below this */
	uint64_t after;
	uint64_t count; /* UINT64_MAX: no limit */
	uint64_t rng;	/* xorshift64* state, never 0 */
	struct bks_errinj_stats stats;
};

/* splitmix64: spreads any seed, 0 included, into a usable state. */
static uint64_t mix_seed(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	x ^= x >> 31;
	return x ? x : 1;
}

static uint64_t next_random(struct error_state *s)
{
	uint64_t x = s->rng;

	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	s->rng = x;
	return x * 0x2545f4914f6cdd1dull;
}

/*
 * A plain decimal number, no sign, no space: 0, -ERANGE above 2^64 - 1,
 * -EINVAL if s is anything else.
 */
static int parse_u64(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (*end)
		return -EINVAL;
	if (errno)
		return -ERANGE;
	*out = v;
	return 0;
}

/*
 * "D[.D]" -> its value, without strtod(), whose idea of the decimal point
 * follows the program's locale.  *end points after the number.
 */
static bool parse_decimal(const char *s, const char **end, double *out)
{
	double v = 0, scale = 1;
	bool digits = false;

	for (; *s >= '0' && *s <= '9'; s++, digits = true)
		v = v * 10 + (*s - '0');
	if (*s == '.')
		for (s++; *s >= '0' && *s <= '9'; s++, digits = true) {
			scale /= 10;
			v += (*s - '0') * scale;
		}
	*end = s;
	*out = v;
	return digits;
}

/* A probability: "0.25", "25%" or "1:4". */
static bool parse_rate(const char *s, double *out)
{
	const char *end;
	uint64_t a, b;
	const char *colon = strchr(s, ':');
	double v;

	if (colon) {
		char num[32];
		size_t n = (size_t)(colon - s);

		if (n >= sizeof(num))
			return false;
		memcpy(num, s, n);
		num[n] = '\0';
		if (parse_u64(num, &a) < 0 || parse_u64(colon + 1, &b) < 0 ||
		    b == 0 || a > b)
			return false;
		*out = (double)a / (double)b;
		return true;
	}
	if (!parse_decimal(s, &end, &v))
		return false;
	if (*end == '%') {
		v /= 100;
		end++;
	}
	if (*end || v > 1)
		return false;
	*out = v;
	return true;
}

/* "all" or "read+write+..." -> BKS_OPF() bits. */
static bool parse_ops(const char *s, uint32_t *out)
{
	uint32_t ops = 0;

	if (strcmp(s, "all") == 0) {
		*out = (1u << BKS_OP_COUNT) - 1;
		return true;
	}
	while (*s) {
		const char *plus = strchr(s, '+');
		size_t n = plus ? (size_t)(plus - s) : strlen(s);
		int op;

		for (op = 0; op < BKS_OP_COUNT; op++) {
			const char *name = bks_op_name((enum bks_op)op);

			if (strlen(name) == n && memcmp(name, s, n) == 0)
				break;
		}
		if (op == BKS_OP_COUNT)
			return false;
		ops |= BKS_OPF(op);
		s += n;
		if (plus && !*++s)
			return false; /* a trailing '+' */
	}
	*out = ops;
	return ops != 0;
}

enum {
	KEY_OPS,
	KEY_ERRNO,
	KEY_RATE,
	KEY_AFTER,
	KEY_COUNT,
	KEY_SEED
};

static const char *const error_keys[] = {
    [KEY_OPS] = "ops",
    [KEY_ERRNO] = "errno",
    [KEY_RATE] = "rate",
    [KEY_AFTER] = "after",
    [KEY_COUNT] = "count",
    [KEY_SEED] = "seed",
    NULL,
};

/* A number option: refused as not a number, or as too large. */
static int number(const struct bks_args *a, uint64_t *out,
		  struct bks_error *err)
{
	int rc = parse_u64(a->value, out);

	if (rc == -ERANGE)
		return bks_args_bad_value(a, err,
					  "is too large (at most 2^64 - 1)");
	if (rc < 0)
		return bks_args_bad_value(a, err, "is not a decimal number");
	return 0;
}

/* Parse args into s (its defaults first). */
static int parse_args(struct error_state *s, const char *args, double *rate,
		      uint64_t *seed, struct bks_error *err)
{
	struct bks_args a;
	int r;

	s->ops = (1u << BKS_OP_COUNT) - 1;
	s->errnum = EIO;
	s->after = 0;
	s->count = UINT64_MAX;
	*rate = 1;
	*seed = 0;
	bks_args_init(&a, args, error_keys, ERROR_USAGE);
	while ((r = bks_args_next(&a, err)) > 0) {
		switch (a.index) {
		case KEY_OPS:
			if (!parse_ops(a.value, &s->ops))
				return bks_args_bad_value(
				    &a, err,
				    "is not 'all' or op names joined by '+'");
			break;
		case KEY_ERRNO:
			if (bks_parse_errno(a.value, &s->errnum) < 0)
				return bks_args_bad_value(
				    &a, err,
				    "is not an errno name (EIO, ...) or a "
				    "number from 1 to 4095");
			break;
		case KEY_RATE:
			if (!parse_rate(a.value, rate))
				return bks_args_bad_value(
				    &a, err,
				    "is not a probability from 0 to 1 (0.25, "
				    "25%% or 1:4)");
			break;
		case KEY_AFTER:
			r = number(&a, &s->after, err);
			break;
		case KEY_COUNT:
			r = number(&a, &s->count, err);
			break;
		default: /* KEY_SEED */
			r = number(&a, seed, err);
			break;
		}
		if (r < 0)
			return r;
	}
	return r;
}

static int error_check(const char *args, struct bks_error *err)
{
	struct error_state s;
	uint64_t seed;
	double rate;

	return parse_args(&s, args, &rate, &seed, err);
}

static int error_open(void *state, struct bks_layer *self,
		      const struct bks_open_args *args, struct bks_error *err)
{
	struct error_state *s = state;
	uint64_t seed;
	double rate;
	int r;

	(void)self;
	r = parse_args(s, args->args, &rate, &seed, err);
	if (r < 0)
		return r;
	s->always = rate >= 1;
	/* rate < 1 here, so the product is below 2^64. */
	s->threshold =
	    s->always ? 0 : (uint64_t)(rate * 18446744073709551616.0);
	s->rng = mix_seed(seed);
	return 0;
}

/* Whether this eligible request fails; counts it. */
static bool should_fail(struct error_state *s)
{
	s->stats.seen++;
	if (s->stats.seen <= s->after || s->stats.injected >= s->count)
		return false;
	if (!s->always && next_random(s) >= s->threshold)
		return false;
	s->stats.injected++;
	return true;
}

/* Every op: refuse it, or pass it down untouched. */
static int error_op(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct error_state *s = state;

	if ((s->ops & BKS_OPF(req->op)) && should_fail(s))
		return -s->errnum;
	return bks_next_submit(bks_layer_child(self, BKS_CHILD_FILE), req);
}

/* The control socket's "error" object: seen, injected. */
static void error_stats(void *state, struct bks_layer *self,
			struct bks_stats_out *out)
{
	struct error_state *s = state;

	(void)self;
	bks_stats_u64(out, "seen", s->stats.seen);
	bks_stats_u64(out, "injected", s->stats.injected);
}

/* What parsing needs of error: (bks_driver_descs[] has it alone). */
#define ERROR_DESC                                                             \
	{                                                                      \
		.name = "error", .kind = BKS_FILTER, .usage = ERROR_USAGE,     \
		.check = error_check                                           \
	}

const struct bks_driver_desc bks_desc_error = ERROR_DESC;

const struct bks_driver bks_driver_error = {
    .desc = ERROR_DESC,
    .state_size = sizeof(struct error_state),
    .open = error_open,
    .read = error_op,
    .write = error_op,
    .flush = error_op,
    .discard = error_op,
    .write_zeroes = error_op,
    .stats = error_stats,
};

int bks_errinj_get_stats(struct bks_layer *layer, struct bks_errinj_stats *out)
{
	struct error_state *s;

	if (!layer || !out || bks_layer_driver(layer) != &bks_driver_error)
		return -EINVAL;
	s = bks_layer_state(layer);
	*out = s->stats;
	return 0;
}
