/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The chain parser: the only code that reads chain strings.  The grammar
 * is in include/blkstack/chain.h.  Chain strings come from xenstore and
 * command lines, so they are untrusted: every byte is checked, and every
 * refusal names the offset, the layer and the reason.  Each layer's args
 * are checked too: a path driver's path must be absolute, and a driver
 * with a check op checks its options here, so that a chain that parses
 * is one whose drivers accept their args.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"

static bool name_char(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static bool control_char(char c)
{
	unsigned char u = (unsigned char)c;

	return u < 0x20 || u == 0x7f;
}

/* Describe byte c for a message: printable as itself, else as hex. */
static const char *show(char c, char buf[8])
{
	unsigned char u = (unsigned char)c;

	if (u > 0x20 && u < 0x7f) {
		buf[0] = '\'';
		buf[1] = c;
		buf[2] = '\'';
		buf[3] = '\0';
	} else {
		static const char hex[] = "0123456789abcdef";

		buf[0] = '0';
		buf[1] = 'x';
		buf[2] = hex[u >> 4];
		buf[3] = hex[u & 15];
		buf[4] = '\0';
	}
	return buf;
}

void bks_chain_spec_free(struct bks_chain_spec *spec)
{
	for (unsigned int i = 0; i < spec->n; i++) {
		free(spec->layers[i].args);
		spec->layers[i].args = NULL;
	}
	spec->n = 0;
}

/*
 * Parse the args of layer `layer` from s[*pos] up to the next unescaped
 * '|' or the end, unescaping into a new string.
 */
static int parse_args(const char *s, size_t len, size_t *pos,
		      unsigned int layer, char **out, struct bks_error *err)
{
	char *args, sh[8];
	size_t p = *pos, n = 0;
	int rc = 0;

	*out = NULL;
	args = malloc(len - p + 1);
	if (!args)
		return bks_error_set(err, ENOMEM, "chain: layer %u", layer);
	while (p < len && s[p] != '|') {
		char c = s[p];

		if (control_char(c)) {
			rc = bks_error_setmsg(err, EINVAL,
					      "chain: layer %u at offset %zu: "
					      "control character %s",
					      layer, p, show(c, sh));
			goto out;
		}
		if (c == '\\') {
			if (p + 1 >= len ||
			    (s[p + 1] != '|' && s[p + 1] != '\\')) {
				rc = bks_error_setmsg(
				    err, EINVAL,
				    "chain: layer %u at offset %zu: '\\' "
				    "must be followed by '|' or '\\' (write "
				    "a literal '|' as '\\|', a literal '\\' "
				    "as '\\\\')",
				    layer, p);
				goto out;
			}
			c = s[p + 1];
			p++;
		}
		args[n++] = c;
		p++;
	}
	args[n] = '\0';
	*pos = p;
	*out = args;
	args = NULL;
out:
	free(args);
	return rc;
}

/*
 * The driver's rules for its args: a path driver's path is there and
 * absolute, and the driver's own check (its options) passes.
 */
static int check_args(const struct bks_layer_spec *ls, struct bks_error *err)
{
	const struct bks_driver_desc *d = ls->desc;

	if (d->args_path && !ls->args[0])
		return bks_error_setmsg(err, EINVAL, "missing path; usage: %s",
					d->usage);
	if (d->args_path && ls->args[0] != '/')
		return bks_error_setmsg(err, EINVAL,
					"path '%s' must be an absolute path "
					"(a relative one would depend on the "
					"directory of whoever opens it)",
					ls->args);
	return d->check ? d->check(ls->args, err) : 0;
}

/* Parse one layer starting at s[*pos] into spec->layers[spec->n]. */
/* Only the parse-only table: parsing links no data path. */
static const struct bks_driver_desc *
lookup(const struct bks_driver *const *extra, const char *name, size_t len)
{
	for (size_t i = 0; extra && extra[i]; i++) {
		if (strlen(extra[i]->name) == len &&
		    memcmp(extra[i]->name, name, len) == 0)
			return &extra[i]->desc;
	}
	return bks_driver_desc_lookup(name, len);
}

static int parse_layer(const char *s, size_t len, size_t *pos,
		       const struct bks_driver *const *extra,
		       struct bks_chain_spec *spec, struct bks_error *err)
{
	unsigned int layer = spec->n + 1; /* 1-based, for people */
	struct bks_layer_spec *ls;
	size_t start = *pos, p = *pos, nlen;
	char sh[8];
	int rc;

	while (p < len && name_char(s[p]))
		p++;
	nlen = p - start;
	if (p >= len || s[p] == '|') {
		if (nlen == 0)
			return bks_error_setmsg(
			    err, EINVAL,
			    "chain: layer %u at offset %zu: "
			    "empty layer",
			    layer, start);
		return bks_error_setmsg(err, EINVAL,
					"chain: layer %u at offset %zu: "
					"missing ':' after driver name '%.*s'",
					layer, start, (int)nlen, s + start);
	}
	if (s[p] != ':') {
		return bks_error_setmsg(err, EINVAL,
					"chain: layer %u at offset %zu: "
					"character %s is not allowed in a "
					"driver name ([a-z0-9-]+)",
					layer, p, show(s[p], sh));
	}
	if (nlen == 0)
		return bks_error_setmsg(err, EINVAL,
					"chain: layer %u at offset %zu: "
					"missing driver name before ':'",
					layer, start);
	if (nlen > BKS_DRIVER_NAME_MAX)
		return bks_error_setmsg(err, EINVAL,
					"chain: layer %u at offset %zu: driver "
					"name is %zu characters; at most %d",
					layer, start, nlen,
					BKS_DRIVER_NAME_MAX);
	ls = &spec->layers[spec->n];
	ls->offset = start;
	ls->desc = lookup(extra, s + start, nlen);
	if (!ls->desc)
		return bks_error_setmsg(err, EINVAL,
					"chain: layer %u at offset %zu: "
					"unknown driver '%.*s'",
					layer, start, (int)nlen, s + start);
	p++; /* ':' */
	rc = parse_args(s, len, &p, layer, &ls->args, err);
	if (rc < 0)
		return rc;
	rc = check_args(ls, err);
	if (rc < 0) {
		bks_error_prepend(err,
				  "chain: layer %u (%s) at offset %zu: ", layer,
				  ls->desc->name, start);
		free(ls->args);
		ls->args = NULL;
		return rc;
	}
	spec->n++;
	*pos = p;
	return 0;
}

/* A chain is filters over exactly one sink, at the bottom. */
static int check_kinds(const struct bks_chain_spec *spec, struct bks_error *err)
{
	for (unsigned int i = 0; i < spec->n; i++) {
		const struct bks_layer_spec *ls = &spec->layers[i];
		bool last = i + 1 == spec->n;

		if (!last && ls->desc->kind == BKS_SINK)
			return bks_error_setmsg(
			    err, EINVAL,
			    "chain: layer %u at offset %zu: '%s' is a "
			    "sink and must be the last layer; only "
			    "filters can be stacked above another layer",
			    i + 1, ls->offset, ls->desc->name);
		if (last && ls->desc->kind != BKS_SINK)
			return bks_error_setmsg(
			    err, EINVAL,
			    "chain: layer %u at offset %zu: '%s' is a "
			    "filter and cannot be the last layer: a "
			    "chain ends in a sink (e.g. aio:PATH)",
			    i + 1, ls->offset, ls->desc->name);
	}
	return 0;
}

int bks_chain_parse(const char *s, size_t len, struct bks_chain_spec *spec,
		    struct bks_error *err)
{
	return bks_chain_parse_with(s, len, NULL, spec, err);
}

int bks_chain_parse_with(const char *s, size_t len,
			 const struct bks_driver *const *extra,
			 struct bks_chain_spec *spec, struct bks_error *err)
{
	const char *nul;
	size_t pos = 0;
	int rc = 0;

	memset(spec, 0, sizeof(*spec));
	if (!s || len == 0)
		return bks_error_setmsg(err, EINVAL, "chain: empty chain");
	if (len > BKS_CHAIN_STR_MAX)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"chain: %zu bytes long; at most %d",
					len, BKS_CHAIN_STR_MAX);
	/* First: a NUL would end the string for anyone who reads it as C. */
	nul = memchr(s, '\0', len);
	if (nul)
		return bks_error_setmsg(err, EINVAL,
					"chain: NUL byte at offset %zu",
					(size_t)(nul - s));
	for (;;) {
		if (spec->n == BKS_CHAIN_MAX_LAYERS) {
			rc = bks_error_setmsg(err, EINVAL,
					      "chain: more than %d layers "
					      "(offset %zu)",
					      BKS_CHAIN_MAX_LAYERS, pos);
			goto out;
		}
		rc = parse_layer(s, len, &pos, extra, spec, err);
		if (rc < 0)
			goto out;
		if (pos >= len)
			break;
		pos++; /* '|': another layer must follow */
	}
	rc = check_kinds(spec, err);
out:
	if (rc < 0)
		bks_chain_spec_free(spec);
	return rc;
}

int bks_chain_format(const struct bks_chain_spec *spec, char *buf, size_t size)
{
	size_t n = 0;

#define PUT(c)                                                                 \
	do {                                                                   \
		if (n + 1 >= size)                                             \
			return -ENAMETOOLONG;                                  \
		buf[n++] = (c);                                                \
	} while (0)

	for (unsigned int i = 0; i < spec->n; i++) {
		const struct bks_layer_spec *ls = &spec->layers[i];

		if (i)
			PUT('|');
		for (const char *p = ls->desc->name; *p; p++)
			PUT(*p);
		PUT(':');
		for (const char *p = ls->args; p && *p; p++) {
			if (*p == '|' || *p == '\\')
				PUT('\\');
			PUT(*p);
		}
	}
#undef PUT
	if (size == 0)
		return -ENAMETOOLONG;
	buf[n] = '\0';
	return (int)n;
}
