/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for the chain parser (make fuzz).  Chain strings come
 * from xenstore, so the parser must survive any bytes.  Properties checked
 * beyond "no crash, no leak, no UB" (ASan and UBSan are on):
 *   - a refusal leaves the spec empty and a one-line message;
 *   - an accepted chain holds no NUL byte, every path layer (args_path)
 *     has an absolute path, and every driver's check accepts its args;
 *   - an accepted chain formats back and reparses to the same layers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static char buf[2 * BKS_CHAIN_STR_MAX + 2];
	struct bks_chain_spec spec, again;
	struct bks_error err = {0};
	int n;

	if (bks_chain_parse((const char *)data, size, &spec, &err) < 0) {
		if (spec.n != 0 || strchr(err.msg, '\n') || err.msg[0] == '\0')
			abort();
		return 0;
	}
	if (memchr(data, '\0', size))
		abort();
	for (unsigned int i = 0; i < spec.n; i++) {
		const struct bks_layer_spec *ls = &spec.layers[i];

		if (ls->desc->args_path && ls->args[0] != '/')
			abort();
		if (ls->desc->check && ls->desc->check(ls->args, &err) < 0)
			abort();
	}
	n = bks_chain_format(&spec, buf, sizeof(buf));
	if (n < 0)
		abort();
	if (bks_chain_parse(buf, (size_t)n, &again, &err) == 0) {
		if (again.n != spec.n)
			abort();
		for (unsigned int i = 0; i < spec.n; i++) {
			if (again.layers[i].desc != spec.layers[i].desc ||
			    strcmp(again.layers[i].args, spec.layers[i].args))
				abort();
		}
		bks_chain_spec_free(&again);
	} else if ((size_t)n <= BKS_CHAIN_STR_MAX) {
		/* Escaping can only lengthen a chain past the limit. */
		abort();
	}
	bks_chain_spec_free(&spec);
	return 0;
}
