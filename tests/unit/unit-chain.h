/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A check shared by the unit tests of drivers' args parsers: the chain
 * parser (bks_chain_parse(), the parse-only table) runs the driver's
 * check.  Include after <cmocka.h> and "blkstack/chain.h".
 */
#ifndef BLKSTACK_UNIT_CHAIN_H
#define BLKSTACK_UNIT_CHAIN_H

#include <errno.h>
#include <string.h>

/*
 * Parse chain: it must succeed (want NULL), or fail with -EINVAL and a
 * message holding want.
 */
static inline void unit_chain_parse(const char *chain, const char *want)
{
	struct bks_chain_spec spec;
	struct bks_error err = {0};
	int rc;

	memset(&spec, 0, sizeof(spec));
	rc = bks_chain_parse(chain, strlen(chain), &spec, &err);
	bks_chain_spec_free(&spec);
	if (!want && rc != 0)
		fail_msg("'%s': rc %d, message '%s'", chain, rc, err.msg);
	if (want && (rc != -EINVAL || !strstr(err.msg, want)))
		fail_msg("'%s': rc %d, message '%s', wanted '%s'", chain, rc,
			 err.msg, want);
}

#endif /* BLKSTACK_UNIT_CHAIN_H */
