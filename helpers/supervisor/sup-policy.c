/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The supervisor's configuration and restart policy (sup-policy.h). */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "conf.h"
#include "sup-policy.h"

#define NS_PER_S 1000000000ull

/* An unsigned decimal key in [min, max], *out unchanged when absent. */
static int read_uint(const char *text, const char *name, const char *key,
		     unsigned int min, unsigned int max, unsigned int *out,
		     struct bks_error *err)
{
	char buf[16], *end;
	const char *v;
	unsigned long n;
	unsigned int line;
	size_t len;
	bool found;
	int rc;

	rc = conf_find(text, name, key, &v, &len, &line, &found, err);
	if (rc < 0 || !found)
		return rc;
	if (len == 0 || len >= sizeof(buf) || v[0] < '0' || v[0] > '9')
		goto bad;
	memcpy(buf, v, len);
	buf[len] = '\0';
	errno = 0;
	n = strtoul(buf, &end, 10);
	if (errno || *end || n < min || n > max)
		goto bad;
	*out = (unsigned int)n;
	return 0;
bad:
	return bks_error_setmsg(err, EINVAL,
				"%s:%u: %s: '%.*s' is not a number from %u to "
				"%u",
				name, line, key, (int)(len > 32 ? 32 : len), v,
				min, max);
}

int sup_policy_read(struct sup_policy *p, struct bks_error *err)
{
	static const char *const actions[] = {"report", "restart", NULL};
	unsigned int action = 0;
	const char *name;
	char *text = NULL;
	int rc;

	p->restart_limit = SUP_RESTART_LIMIT_DEFAULT;
	p->restart_window = SUP_RESTART_WINDOW_DEFAULT;
	p->hang_timeout = SUP_HANG_TIMEOUT_DEFAULT;
	p->hang_restart = false;
	rc = conf_read(&text, &name, err);
	if (rc < 0)
		goto out;
	rc = read_uint(text, name, "restart-limit", 1, SUP_RESTART_LIMIT_MAX,
		       &p->restart_limit, err);
	if (rc == 0)
		rc = read_uint(text, name, "restart-window", 1, 86400,
			       &p->restart_window, err);
	if (rc == 0)
		rc = read_uint(text, name, "hang-timeout", 0, 86400,
			       &p->hang_timeout, err);
	if (rc < 0)
		goto out;
	rc = conf_word(text, name, "hang-action", actions, &action, err);
	if (rc == 0)
		p->hang_restart = action == 1;
out:
	free(text);
	return rc;
}

bool sup_crash(struct sup_crashes *c, const struct sup_policy *p,
	       uint64_t now_ns, uint64_t ran_ns, unsigned int *delay_ms)
{
	uint64_t window = (uint64_t)p->restart_window * NS_PER_S;
	unsigned int keep = 0;

	/* Forget crashes older than the window. */
	for (unsigned int i = 0; i < c->n; i++)
		if (now_ns - c->at[i] < window)
			c->at[keep++] = c->at[i];
	c->n = keep;
	if (c->n == SUP_RESTART_LIMIT_MAX) {
		memmove(c->at, c->at + 1, (c->n - 1) * sizeof(c->at[0]));
		c->n--;
	}
	c->at[c->n++] = now_ns;
	*delay_ms = 0;
	if (c->n >= p->restart_limit)
		return true;
	/* A worker that ran a while was healthy: back-off resets. */
	if (ran_ns >= (uint64_t)SUP_STABLE_S * NS_PER_S)
		c->next_delay_ms = 0;
	*delay_ms = c->next_delay_ms;
	if (c->next_delay_ms == 0)
		c->next_delay_ms = SUP_BACKOFF_FIRST_MS;
	else if (c->next_delay_ms < SUP_BACKOFF_MAX_MS / 2)
		c->next_delay_ms *= 2;
	else
		c->next_delay_ms = SUP_BACKOFF_MAX_MS;
	return false;
}
