/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The connect step's input checks (xb-ring.h): the frontend's ring nodes
 * and the backend's mode, every value untrusted.
 */
#include "xb-ring.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dec.h"
#include "json.h"

/* A printable, bounded copy of an untrusted value for a message. */
static const char *shown(const char *v, char *buf, size_t size)
{
	size_t i = 0;

	for (; v[i] && i + 1 < size; i++)
		buf[i] = (v[i] >= 0x20 && v[i] < 0x7f) ? v[i] : '?';
	buf[i] = '\0';
	return buf;
}

/* Look node up and parse it as decimal 0..max; absent is -ENOENT. */
static int get_uint(xb_ring_lookup_fn lookup, void *opaque, int be,
		    const char *node, unsigned int max, unsigned int *out,
		    struct bks_error *err)
{
	const char *v = NULL;
	char s[24];
	int rc = lookup(opaque, be, node, &v, err);

	if (rc < 0)
		goto out;
	if (rc == 0) {
		rc = -ENOENT;
		goto out;
	}
	rc = dec_parse_u32(v, max, out);
	if (rc < 0)
		rc = bks_error_setmsg(err, EINVAL, "%s '%s' is not 0-%u", node,
				      shown(v, s, sizeof(s)), max);
out:
	return rc;
}

int xb_ring_parse(xb_ring_lookup_fn lookup, void *opaque,
		  unsigned int max_order, struct xb_ring *r,
		  struct bks_error *err)
{
	const char *v = NULL;
	char node[16], s[24];
	unsigned int n = 0;
	int rc;

	memset(r, 0, sizeof(*r));
	if (max_order > XB_RING_ORDER_MAX)
		max_order = XB_RING_ORDER_MAX;

	rc = get_uint(lookup, opaque, 0, "ring-page-order", max_order,
		      &r->order, err);
	if (rc == -ENOENT) {
		r->order = 0;
		rc = 0;
	}
	if (rc < 0)
		goto out;
	r->nrefs = 1u << r->order;

	for (unsigned int i = 0; i < r->nrefs; i++) {
		unsigned int ref = 0;

		if (r->order == 0)
			snprintf(node, sizeof(node), "ring-ref");
		else
			snprintf(node, sizeof(node), "ring-ref%u", i);
		rc = get_uint(lookup, opaque, 0, node, UINT32_MAX, &ref, err);
		if (rc == -ENOENT)
			rc = bks_error_setmsg(err, EINVAL,
					      "%s is missing (ring-page-order "
					      "%u)",
					      node, r->order);
		if (rc < 0)
			goto out;
		r->refs[i] = ref;
	}

	rc = get_uint(lookup, opaque, 0, "event-channel", XB_RING_PORT_MAX,
		      &r->port, err);
	if (rc == -ENOENT)
		rc = bks_error_setmsg(err, EINVAL, "event-channel is missing");
	if (rc < 0)
		goto out;
	if (r->port == 0) {
		rc = bks_error_setmsg(err, EINVAL,
				      "event-channel '0' is not "
				      "a port");
		goto out;
	}

	rc = lookup(opaque, 0, "protocol", &v, err);
	if (rc < 0)
		goto out;
	if (rc == 0 || !v[0]) {
		snprintf(r->protocol, sizeof(r->protocol), "-");
	} else if (!strcmp(v, "x86_64-abi") || !strcmp(v, "x86_32-abi")) {
		snprintf(r->protocol, sizeof(r->protocol), "%s", v);
	} else {
		rc = bks_error_setmsg(err, EPROTONOSUPPORT,
				      "protocol '%s' is not x86_64-abi or "
				      "x86_32-abi",
				      shown(v, s, sizeof(s)));
		goto out;
	}

	rc = get_uint(lookup, opaque, 0, "multi-queue-num-queues", UINT32_MAX,
		      &n, err);
	if (rc == -ENOENT)
		rc = 0;
	else if (rc == 0 && n != 1)
		rc = bks_error_setmsg(err, EOPNOTSUPP,
				      "multi-queue-num-queues %u: one queue "
				      "only (none advertised)",
				      n);
	if (rc < 0)
		goto out;

	rc = lookup(opaque, 1, "mode", &v, err);
	if (rc < 0)
		goto out;
	if (rc == 0 || !strcmp(v, "w")) {
		r->mode = 'w';
	} else if (!strcmp(v, "r")) {
		r->mode = 'r';
	} else {
		rc = bks_error_setmsg(err, EINVAL, "mode '%s' is not r or w",
				      shown(v, s, sizeof(s)));
		goto out;
	}
	rc = 0;
out:
	return rc;
}

int xb_ring_refs_format(const struct xb_ring *r, char *buf, size_t size)
{
	size_t used = 0;
	int rc = 0;

	if (!size)
		return -ENOSPC;
	buf[0] = '\0';
	for (unsigned int i = 0; i < r->nrefs; i++) {
		int n = snprintf(buf + used, size - used, "%s%u", i ? "," : "",
				 (unsigned int)r->refs[i]);

		if (n < 0 || (size_t)n >= size - used) {
			rc = -ENOSPC;
			goto out;
		}
		used += (size_t)n;
	}
out:
	return rc;
}

int xb_ring_event_parse(const char *line, size_t len, const char *name,
			bool *broken, char *why, size_t size,
			struct bks_error *err)
{
	struct json_doc doc = {0};
	char ev[16], state[16], msg[BKS_ERROR_MSG_MAX];
	size_t nlen = strlen(name);
	const char *m = msg;
	int rc;

	if (len > XB_RING_EVENT_MAX || json_parse(&doc, line, len) < 0 ||
	    doc.toks[0].type != JSON_OBJECT) {
		rc = bks_error_setmsg(err, EPROTO,
				      "blkif-watch: the worker's line is not "
				      "a JSON object");
		goto out;
	}
	if (json_get_str(&doc, json_get(&doc, 0, "event"), ev, sizeof(ev)) <
		0 ||
	    strcmp(ev, "blkif") != 0 ||
	    json_get_str(&doc, json_get(&doc, 0, "blkif"), state,
			 sizeof(state)) < 0 ||
	    strcmp(state, "connected") == 0) {
		rc = bks_error_setmsg(err, EPROTO,
				      "blkif-watch: the worker's line is not "
				      "a ring event");
		goto out;
	}
	/* A reason cut short is still a reason (-ENOSPC). */
	if (json_get_str(&doc, json_get(&doc, 0, "error"), msg, sizeof(msg)) ==
	    -EINVAL)
		snprintf(msg, sizeof(msg), "the ring is %s (no reason given)",
			 state);
	if (strncmp(msg, name, nlen) == 0 && strncmp(msg + nlen, ": ", 2) == 0)
		m = msg + nlen + 2;
	shown(m, why, size);
	*broken = strcmp(state, "broken") == 0;
	rc = 0;
out:
	json_doc_free(&doc);
	return rc;
}
