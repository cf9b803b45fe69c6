/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The supervisor's hang watch (sup-hang.h). */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sup-hang.h"

/* "key=" then a decimal number up to the next space or the end. */
static int num_field(const char *word, size_t wlen, const char *key,
		     uint64_t *out)
{
	size_t klen = strlen(key);
	uint64_t v = 0;

	if (wlen <= klen || strncmp(word, key, klen) != 0)
		return -EINVAL;
	for (size_t i = klen; i < wlen; i++) {
		if (word[i] < '0' || word[i] > '9' || v > UINT64_MAX / 10 - 9)
			return -EINVAL;
		v = v * 10 + (uint64_t)(word[i] - '0');
	}
	*out = v;
	return 0;
}

int sup_msg_parse(const char *msg, size_t len, struct sup_beat *b)
{
	const char *words[4];
	size_t wlens[4], n = 0, i = 0;

	if (len == 8 && memcmp(msg, "stopping", 8) == 0)
		return SUP_MSG_STOPPING;
	if (len == 7 && memcmp(msg, "fuse-fd", 7) == 0)
		return SUP_MSG_FUSE_FD;
	/* Four words separated by single spaces. */
	while (i < len && n < 4) {
		size_t start = i;

		while (i < len && msg[i] != ' ')
			i++;
		words[n] = msg + start;
		wlens[n++] = i - start;
		if (i < len)
			i++;
	}
	if (n != 4 || i != len || wlens[0] != 4 ||
	    memcmp(words[0], "beat", 4) != 0 || wlens[1] <= 6 ||
	    wlens[1] - 6 >= sizeof(b->state) ||
	    memcmp(words[1], "state=", 6) != 0)
		return -EINVAL;
	for (size_t k = 6; k < wlens[1]; k++)
		if (words[1][k] < 'a' || words[1][k] > 'z')
			return -EINVAL;
	if (num_field(words[2], wlens[2], "inflight=", &b->inflight) < 0 ||
	    num_field(words[3], wlens[3], "oldest_ms=", &b->oldest_ms) < 0)
		return -EINVAL;
	memcpy(b->state, words[1] + 6, wlens[1] - 6);
	b->state[wlens[1] - 6] = '\0';
	return SUP_MSG_BEAT;
}

bool sup_hung(uint64_t now_ns, uint64_t last_msg_ns, const struct sup_beat *b,
	      unsigned int timeout_s, char *why, size_t size)
{
	uint64_t limit_ns = (uint64_t)timeout_s * 1000000000ull;

	if (timeout_s == 0)
		return false;
	if (now_ns > last_msg_ns && now_ns - last_msg_ns >= limit_ns) {
		snprintf(why, size, "no beat for %" PRIu64 " s",
			 (uint64_t)((now_ns - last_msg_ns) / 1000000000u));
		return true;
	}
	/* The age the beat said, plus what has passed since. */
	if (b && b->oldest_ms &&
	    b->oldest_ms + (now_ns - last_msg_ns) / 1000000u >=
		(uint64_t)timeout_s * 1000u) {
		snprintf(why, size, "a request in flight for %" PRIu64 " ms",
			 b->oldest_ms + (now_ns - last_msg_ns) / 1000000u);
		return true;
	}
	return false;
}
