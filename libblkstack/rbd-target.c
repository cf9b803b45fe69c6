/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Parsing the rbd: sink's args (rbd-target.h).  Every byte is untrusted
 * (xenstore, a command line): what the grammar in the header does not
 * allow is refused here, naming the part, and never reaches librados
 * (whose option values are themselves lists and templates).  The options
 * are read here and not with bks_args (driver.h) because a path may be
 * longer than BKS_ARGS_VALUE_MAX.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/rbd-target.h"

enum name_kind {
	KIND_NAME,    /* pool, image, snapshot, client id */
	KIND_CLUSTER, /* cluster name */
	KIND_PATH,    /* conf, keyring */
	KIND_VM,      /* vm */
};

static bool allowed(enum name_kind kind, char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '_' || c == '-')
		return true;
	switch (kind) {
	case KIND_NAME:
		return c == '.' || c == '+';
	case KIND_PATH:
		return c == '.' || c == '+' || c == '@' || c == ':' || c == '/';
	case KIND_VM:
		return c == '/';
	default:
		return false;
	}
}

/* A quotable copy of [s, s + n): at most 64 bytes, no control chars. */
static void quote(char *out, size_t size, const char *s, size_t n)
{
	snprintf(out, size, "%.*s%s", (int)(n < 64 ? n : 64), s,
		 n > 64 ? "..." : "");
	bks_sanitize_line(out);
}

/*
 * Check [s, s + n) as `what` of kind and copy it into out (max bytes
 * and a NUL).  Returns 0 or -EINVAL with err set.
 */
static int take_name(const char *what, enum name_kind kind, const char *s,
		     size_t n, char *out, size_t max, struct bks_error *err)
{
	char q[80];
	const char *why = NULL;

	quote(q, sizeof(q), s, n);
	if (n == 0)
		return bks_error_setmsg(err, EINVAL, "%s is empty; usage: %s",
					what, BKS_RBD_USAGE);
	if (n > max)
		return bks_error_setmsg(err, EINVAL,
					"%s '%s' is longer than %zu bytes; "
					"usage: %s",
					what, q, max, BKS_RBD_USAGE);
	for (size_t i = 0; i < n; i++) {
		if (!allowed(kind, s[i])) {
			char c = s[i] >= 0x20 && s[i] < 0x7f ? s[i] : '?';

			return bks_error_setmsg(err, EINVAL,
						"%s '%s': character '%c' is "
						"not allowed; usage: %s",
						what, q, c, BKS_RBD_USAGE);
		}
	}
	if (kind == KIND_PATH) {
		if (s[0] != '/')
			why = "is not an absolute path";
		for (size_t i = 0; !why && i < n; i++) {
			size_t rest = n - i - 1;
			const char *e = s + i + 1;

			if (s[i] != '/')
				continue;
			if (rest >= 1 && e[0] == '.' &&
			    (rest == 1 || e[1] == '/'))
				why = "has a '.' component";
			else if (rest >= 2 && e[0] == '.' && e[1] == '.' &&
				 (rest == 2 || e[2] == '/'))
				why = "has a '..' component";
		}
	} else if (kind == KIND_VM) {
		if (s[0] != '/')
			why = "does not start with '/'";
		for (size_t i = 0; !why && i < n; i++) {
			if (s[i] == '/' && (i + 1 == n || s[i + 1] == '/'))
				why = "has an empty component";
		}
	} else if (s[0] == '.' || s[0] == '-') {
		why = "starts with '.' or '-'";
	}
	if (why)
		return bks_error_setmsg(err, EINVAL, "%s '%s' %s; usage: %s",
					what, q, why, BKS_RBD_USAGE);
	memcpy(out, s, n);
	out[n] = '\0';
	return 0;
}

/* POOL/IMAGE[@SNAP], the part before the first ','. */
static int parse_spec(struct bks_rbd_target *t, const char *s, size_t n,
		      struct bks_error *err)
{
	const char *slash = memchr(s, '/', n);
	const char *at;
	size_t rest;
	int rc;

	if (n == 0)
		return bks_error_setmsg(err, EINVAL,
					"missing POOL/IMAGE; usage: %s",
					BKS_RBD_USAGE);
	if (!slash)
		return bks_error_setmsg(err, EINVAL,
					"'%s' is not POOL/IMAGE (no '/'); "
					"usage: %s",
					t->name, BKS_RBD_USAGE);
	rc = take_name("the pool name", KIND_NAME, s, (size_t)(slash - s),
		       t->pool, BKS_RBD_POOL_MAX, err);
	if (rc < 0)
		return rc;
	rest = n - (size_t)(slash - s) - 1;
	at = memchr(slash + 1, '@', rest);
	rc = take_name("the image name", KIND_NAME, slash + 1,
		       at ? (size_t)(at - slash - 1) : rest, t->image,
		       BKS_RBD_IMAGE_MAX, err);
	if (rc < 0 || !at)
		return rc;
	return take_name("the snapshot name", KIND_NAME, at + 1,
			 (size_t)(s + n - at - 1), t->snap, BKS_RBD_IMAGE_MAX,
			 err);
}

static int parse_timeout(const char *v, size_t n, unsigned int *out,
			 struct bks_error *err)
{
	unsigned long x = 0;
	char q[80];

	quote(q, sizeof(q), v, n);
	for (size_t i = 0; i < n && x <= BKS_RBD_TIMEOUT_MAX; i++) {
		if (v[i] < '0' || v[i] > '9') {
			x = 0;
			break;
		}
		x = x * 10 + (unsigned long)(v[i] - '0');
	}
	if (x < 1 || x > BKS_RBD_TIMEOUT_MAX)
		return bks_error_setmsg(err, EINVAL,
					"option 'timeout': '%s' is not a "
					"number of seconds from 1 to %u; "
					"usage: %s",
					q, BKS_RBD_TIMEOUT_MAX, BKS_RBD_USAGE);
	*out = (unsigned int)x;
	return 0;
}

/* One KEY=VALUE option of [s, s + n); seen[] tracks the keys given. */
static int parse_option(struct bks_rbd_target *t, const char *s, size_t n,
			bool *seen, struct bks_error *err)
{
	static const char *const keys[] = {
	    "id", "conf", "keyring", "cluster", "timeout", "vm", NULL};
	const char *eq = memchr(s, '=', n);
	size_t klen = eq ? (size_t)(eq - s) : n, vlen;
	unsigned int k;
	char q[80];

	quote(q, sizeof(q), s, klen);
	for (k = 0; keys[k]; k++)
		if (strlen(keys[k]) == klen && !memcmp(keys[k], s, klen))
			break;
	if (!keys[k])
		return bks_error_setmsg(err, EINVAL,
					"unknown option '%s' (known: id, conf, "
					"keyring, cluster, timeout, vm); "
					"usage: %s",
					q, BKS_RBD_USAGE);
	if (!eq || eq + 1 == s + n)
		return bks_error_setmsg(err, EINVAL,
					"option '%s' has no value; usage: %s",
					keys[k], BKS_RBD_USAGE);
	if (seen[k])
		return bks_error_setmsg(err, EINVAL,
					"option '%s' is given twice; usage: %s",
					keys[k], BKS_RBD_USAGE);
	seen[k] = true;
	vlen = n - klen - 1;
	switch (k) {
	case 0:
		return take_name("option 'id'", KIND_NAME, eq + 1, vlen, t->id,
				 BKS_RBD_ID_MAX, err);
	case 1:
		return take_name("option 'conf'", KIND_PATH, eq + 1, vlen,
				 t->conf, BKS_RBD_PATH_MAX, err);
	case 2:
		return take_name("option 'keyring'", KIND_PATH, eq + 1, vlen,
				 t->keyring, BKS_RBD_PATH_MAX, err);
	case 3:
		return take_name("option 'cluster'", KIND_CLUSTER, eq + 1, vlen,
				 t->cluster, BKS_RBD_CLUSTER_MAX, err);
	case 4:
		return parse_timeout(eq + 1, vlen, &t->timeout_s, err);
	default:
		return take_name("option 'vm'", KIND_VM, eq + 1, vlen, t->vm,
				 BKS_RBD_VM_MAX, err);
	}
}

int bks_rbd_target_parse(const char *args, struct bks_rbd_target *t,
			 struct bks_error *err)
{
	bool seen[6] = {false};
	const char *comma, *p;
	size_t n;
	int rc;

	memset(t, 0, sizeof(*t));
	t->timeout_s = BKS_RBD_TIMEOUT_DEFAULT;
	if (!args)
		args = "";
	comma = strchr(args, ',');
	n = comma ? (size_t)(comma - args) : strlen(args);
	snprintf(t->name, sizeof(t->name), "%.*s",
		 (int)(n < sizeof(t->name) - 1 ? n : sizeof(t->name) - 1),
		 args);
	bks_sanitize_line(t->name);
	rc = parse_spec(t, args, n, err);
	for (p = comma; rc == 0 && p; p = comma) {
		p++;
		comma = strchr(p, ',');
		n = comma ? (size_t)(comma - p) : strlen(p);
		if (n == 0)
			return bks_error_setmsg(
			    err, EINVAL,
			    "an empty option (%s); usage: "
			    "%s",
			    comma ? "',,'" : "a trailing ','", BKS_RBD_USAGE);
		rc = parse_option(t, p, n, seen, err);
	}
	if (rc < 0)
		return rc;
	if (!t->id[0])
		strcpy(t->id, "admin");
	if (!t->cluster[0])
		strcpy(t->cluster, "ceph");
	snprintf(t->name, sizeof(t->name), "%s/%s%s%s", t->pool, t->image,
		 t->snap[0] ? "@" : "", t->snap);
	return 0;
}

int bks_rbd_target_check(const char *args, struct bks_error *err)
{
	struct bks_rbd_target t;

	return bks_rbd_target_parse(args, &t, err);
}

const struct bks_driver_desc bks_desc_rbd = BKS_RBD_DESC;
