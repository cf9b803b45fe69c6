/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Parsing the nbd: sink's args (nbd-target.h): a strict NBD URI and the
 * sink's options.  Every byte is untrusted (it comes from xenstore or a
 * command line): anything the grammar in the header does not allow is
 * refused with a message naming the part, never passed on to libnbd.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/driver.h"
#include "blkstack/hexdigit.h"
#include "blkstack/nbd-target.h"

/* Characters a URI's path or query value may hold as they are. */
static bool uri_plain(char c, bool query)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return true;
	switch (c) {
	case '-':
	case '.':
	case '_':
	case '~':
	case '/':
	case ':':
	case '@':
	case '+':
	case '!':
	case '$':
	case '\'':
	case '(':
	case ')':
	case '*':
	case ';':
		return true;
	case '&':
	case '=':
		return !query; /* they separate query parameters */
	default:
		return false;
	}
}

/*
 * Decode [s, s + n) into out (size bytes, NUL-terminated): plain
 * characters as they are, %XX as the byte.  Returns 0, or -EINVAL with
 * err naming what (e.g. "export name") is wrong.
 */
static int uri_decode(const struct bks_nbd_target *t, const char *what,
		      const char *s, size_t n, bool query, char *out,
		      size_t size, struct bks_error *err)
{
	size_t o = 0;

	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == '%') {
			int hi = i + 2 < n
				     ? bks_hexdigit((unsigned char)s[i + 1])
				     : -1;
			int lo = i + 2 < n
				     ? bks_hexdigit((unsigned char)s[i + 2])
				     : -1;

			if (hi < 0 || lo < 0)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': %s: '%%' is not followed by two "
				    "hex digits; usage: %s",
				    t->uri, what, BKS_NBD_USAGE);
			c = (unsigned char)(hi << 4 | lo);
			i += 2;
			if (c == 0 || c < 0x20 || c == 0x7f)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': %s holds a control character; "
				    "usage: %s",
				    t->uri, what, BKS_NBD_USAGE);
		} else if (!uri_plain((char)c, query)) {
			return bks_error_setmsg(
			    err, EINVAL,
			    "URI '%s': %s: character '%c' is not allowed "
			    "(percent-encode it); usage: %s",
			    t->uri, what, c >= 0x20 && c < 0x7f ? c : '?',
			    BKS_NBD_USAGE);
		}
		if (o + 1 >= size)
			return bks_error_setmsg(err, EINVAL,
						"URI '%s': %s is longer than "
						"%zu bytes; usage: %s",
						t->uri, what, size - 1,
						BKS_NBD_USAGE);
		out[o++] = (char)c;
	}
	out[o] = '\0';
	return 0;
}

/* An absolute path without "." or ".." components and without ','. */
static int check_path(const struct bks_nbd_target *t, const char *what,
		      const char *p, struct bks_error *err)
{
	const char *why = NULL;

	if (p[0] != '/')
		why = "is not an absolute path";
	else if (strchr(p, ','))
		why = "holds a ','";
	for (const char *c = p; !why && *c; c++) {
		if (*c != '/')
			continue;
		const char *e = c + 1;

		if (e[0] == '.' && (e[1] == '/' || e[1] == '\0'))
			why = "has a '.' component";
		else if (e[0] == '.' && e[1] == '.' &&
			 (e[2] == '/' || e[2] == '\0'))
			why = "has a '..' component";
	}
	if (why)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': %s '%s' %s; usage: %s",
					t->uri, what, p, why, BKS_NBD_USAGE);
	return 0;
}

/* The authority of a TCP URI: HOST[:PORT] or [IPV6][:PORT]. */
static int parse_authority(struct bks_nbd_target *t, const char *s, size_t n,
			   struct bks_error *err)
{
	const char *host = s, *port = NULL;
	size_t hlen, plen = 0;
	bool v6 = false;

	if (n == 0)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': no host; usage: %s", t->uri,
					BKS_NBD_USAGE);
	if (memchr(s, '@', n))
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': user information ('@') is "
					"not supported; usage: %s",
					t->uri, BKS_NBD_USAGE);
	if (s[0] == '[') {
		const char *end = memchr(s, ']', n);

		if (!end)
			return bks_error_setmsg(err, EINVAL,
						"URI '%s': '[' without ']'; "
						"usage: %s",
						t->uri, BKS_NBD_USAGE);
		host = s + 1;
		hlen = (size_t)(end - host);
		v6 = true;
		if (end + 1 < s + n) {
			if (end[1] != ':')
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': junk after ']'; usage: %s",
				    t->uri, BKS_NBD_USAGE);
			port = end + 2;
			plen = (size_t)(s + n - port);
		}
	} else {
		const char *colon = memchr(s, ':', n);

		hlen = colon ? (size_t)(colon - s) : n;
		if (colon) {
			port = colon + 1;
			plen = (size_t)(s + n - port);
		}
	}
	if (hlen == 0 || hlen > 253)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': the host is empty or longer "
					"than 253 characters; usage: %s",
					t->uri, BKS_NBD_USAGE);
	for (size_t i = 0; i < hlen; i++) {
		char c = host[i];
		bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
			  (c >= 'A' && c <= 'F') || c == '.';

		if (v6)
			ok = ok || c == ':';
		else
			ok = ok || (c >= 'a' && c <= 'z') ||
			     (c >= 'A' && c <= 'Z') || c == '-';
		if (!ok)
			return bks_error_setmsg(
			    err, EINVAL,
			    "URI '%s': character '%c' is not allowed in %s; "
			    "usage: %s",
			    t->uri, c >= 0x20 && c < 0x7f ? c : '?',
			    v6 ? "an IPv6 address" : "a host name",
			    BKS_NBD_USAGE);
	}
	if (!v6 && host[0] == '-')
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': a host name cannot start "
					"with '-'; usage: %s",
					t->uri, BKS_NBD_USAGE);
	memcpy(t->host, host, hlen);
	t->host[hlen] = '\0';

	if (!port) {
		strcpy(t->port, "10809");
		return 0;
	}
	unsigned long v = 0;

	for (size_t i = 0; i < plen; i++) {
		if (port[i] < '0' || port[i] > '9' || i >= 5) {
			v = 0;
			break;
		}
		v = v * 10 + (unsigned long)(port[i] - '0');
	}
	if (plen == 0 || v == 0 || v > 65535)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': the port is not a number "
					"from 1 to 65535; usage: %s",
					t->uri, BKS_NBD_USAGE);
	snprintf(t->port, sizeof(t->port), "%lu", v);
	return 0;
}

/* The query: socket=PATH and tls-certificates=DIR, '&'-separated. */
static int parse_query(struct bks_nbd_target *t, const char *s, size_t n,
		       struct bks_error *err)
{
	bool have_socket = false, have_certs = false;
	const char *end = s + n;
	int rc;

	while (s < end) {
		const char *amp = memchr(s, '&', (size_t)(end - s));
		const char *pe = amp ? amp : end;
		const char *eq = memchr(s, '=', (size_t)(pe - s));

		if (!eq || eq == s)
			return bks_error_setmsg(err, EINVAL,
						"URI '%s': a query parameter "
						"is not KEY=VALUE; usage: %s",
						t->uri, BKS_NBD_USAGE);
		size_t klen = (size_t)(eq - s);
		const char *v = eq + 1;
		size_t vlen = (size_t)(pe - v);

		if (klen == 6 && !memcmp(s, "socket", 6)) {
			if (t->transport != BKS_NBD_UNIX)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': socket= belongs to nbd+unix:// "
				    "and nbds+unix:// URIs; usage: %s",
				    t->uri, BKS_NBD_USAGE);
			if (have_socket)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': socket= is given twice; "
				    "usage: %s",
				    t->uri, BKS_NBD_USAGE);
			rc = uri_decode(t, "the socket path", v, vlen, true,
					t->socket, sizeof(t->socket), err);
			if (rc < 0)
				return rc;
			rc = check_path(t, "the socket path", t->socket, err);
			if (rc < 0)
				return rc;
			have_socket = true;
		} else if (klen == 16 && !memcmp(s, "tls-certificates", 16)) {
			if (!t->tls)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': tls-certificates= needs TLS "
				    "(nbds:// or nbds+unix://); usage: %s",
				    t->uri, BKS_NBD_USAGE);
			if (have_certs)
				return bks_error_setmsg(
				    err, EINVAL,
				    "URI '%s': tls-certificates= is given "
				    "twice; usage: %s",
				    t->uri, BKS_NBD_USAGE);
			rc = uri_decode(t, "the certificate directory", v, vlen,
					true, t->tls_certificates,
					sizeof(t->tls_certificates), err);
			if (rc < 0)
				return rc;
			rc = check_path(t, "the certificate directory",
					t->tls_certificates, err);
			if (rc < 0)
				return rc;
			have_certs = true;
		} else {
			char key[32];

			snprintf(key, sizeof(key), "%.*s",
				 (int)(klen < 31 ? klen : 31), s);
			bks_sanitize_line(key);
			return bks_error_setmsg(
			    err, EINVAL,
			    "URI '%s': unknown query parameter '%s' (known: "
			    "socket, tls-certificates); usage: %s",
			    t->uri, key, BKS_NBD_USAGE);
		}
		s = amp ? amp + 1 : end;
		if (amp && s == end)
			return bks_error_setmsg(err, EINVAL,
						"URI '%s': an empty query "
						"parameter; usage: %s",
						t->uri, BKS_NBD_USAGE);
	}
	if (t->transport == BKS_NBD_UNIX && !have_socket)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': nbd+unix:// needs "
					"?socket=PATH; usage: %s",
					t->uri, BKS_NBD_USAGE);
	return 0;
}

static int parse_uri(struct bks_nbd_target *t, const char *s, size_t n,
		     struct bks_error *err)
{
	static const struct {
		const char *prefix;
		enum bks_nbd_transport transport;
		bool tls;
	} schemes[] = {
	    {"nbd://", BKS_NBD_TCP, false},
	    {"nbds://", BKS_NBD_TCP, true},
	    {"nbd+unix://", BKS_NBD_UNIX, false},
	    {"nbds+unix://", BKS_NBD_UNIX, true},
	};
	const char *end = s + n, *p = NULL;
	int rc;

	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t l = strlen(schemes[i].prefix);

		if (n >= l && !memcmp(s, schemes[i].prefix, l)) {
			t->transport = schemes[i].transport;
			t->tls = schemes[i].tls;
			p = s + l;
			break;
		}
	}
	if (!p)
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': not an NBD URI (nbd://, "
					"nbds://, nbd+unix://, nbds+unix://); "
					"usage: %s",
					t->uri, BKS_NBD_USAGE);
	if (memchr(s, '#', n))
		return bks_error_setmsg(err, EINVAL,
					"URI '%s': a fragment ('#') is not "
					"allowed; usage: %s",
					t->uri, BKS_NBD_USAGE);

	const char *q = memchr(p, '?', (size_t)(end - p));
	const char *qend = q ? q : end;
	const char *slash = memchr(p, '/', (size_t)(qend - p));
	const char *aend = slash ? slash : qend;

	if (t->transport == BKS_NBD_UNIX) {
		if (aend != p)
			return bks_error_setmsg(
			    err, EINVAL,
			    "URI '%s': nbd+unix:// takes no "
			    "host (nbd+unix:///EXPORT?"
			    "socket=PATH); usage: %s",
			    t->uri, BKS_NBD_USAGE);
	} else {
		rc = parse_authority(t, p, (size_t)(aend - p), err);
		if (rc < 0)
			return rc;
	}
	t->export[0] = '\0';
	if (slash) {
		rc = uri_decode(t, "the export name", slash + 1,
				(size_t)(qend - slash - 1), false, t->export,
				sizeof(t->export), err);
		if (rc < 0)
			return rc;
	}
	return parse_query(t, q ? q + 1 : end, q ? (size_t)(end - q - 1) : 0,
			   err);
}

/* A number of seconds from 0 (or 1) to max. */
static int parse_seconds(const struct bks_args *a, unsigned int min,
			 unsigned int max, unsigned int *out,
			 struct bks_error *err)
{
	char *e;
	unsigned long v;

	if (a->value[0] < '0' || a->value[0] > '9')
		return bks_args_bad_value(a, err, "is not a number of seconds");
	errno = 0;
	v = strtoul(a->value, &e, 10);
	if (errno || *e || v < min || v > max)
		return bks_args_bad_value(a, err,
					  "is not a number of seconds from %u "
					  "to %u",
					  min, max);
	*out = (unsigned int)v;
	return 0;
}

int bks_nbd_target_parse(const char *args, struct bks_nbd_target *t,
			 struct bks_error *err)
{
	static const char *const keys[] = {"retry", "connect-timeout",
					   "reconnect-flush", NULL};
	const char *comma;
	size_t ulen;
	struct bks_args a;
	int rc;

	memset(t, 0, sizeof(*t));
	t->retry_s = BKS_NBD_RETRY_DEFAULT;
	t->connect_timeout_s = BKS_NBD_CONNECT_DEFAULT;
	if (!args)
		args = "";
	comma = strchr(args, ',');
	ulen = comma ? (size_t)(comma - args) : strlen(args);
	snprintf(t->uri, sizeof(t->uri), "%.*s",
		 (int)(ulen < sizeof(t->uri) - 1 ? ulen : sizeof(t->uri) - 1),
		 args);
	bks_sanitize_line(t->uri);
	if (ulen == 0)
		return bks_error_setmsg(err, EINVAL, "missing URI; usage: %s",
					BKS_NBD_USAGE);
	rc = parse_uri(t, args, ulen, err);
	if (rc < 0)
		return rc;
	if (!comma)
		return 0;

	bks_args_init(&a, comma + 1, keys, BKS_NBD_USAGE);
	if (!comma[1])
		return bks_error_setmsg(err, EINVAL,
					"an empty option after the URI; "
					"usage: %s",
					BKS_NBD_USAGE);
	while ((rc = bks_args_next(&a, err)) > 0) {
		switch (a.index) {
		case 0:
			rc = parse_seconds(&a, 0, BKS_NBD_RETRY_MAX,
					   &t->retry_s, err);
			break;
		case 1:
			rc = parse_seconds(&a, 1, BKS_NBD_CONNECT_MAX,
					   &t->connect_timeout_s, err);
			break;
		default:
			if (!strcmp(a.value, "fail"))
				t->trust_reconnect_flush = false;
			else if (!strcmp(a.value, "trust"))
				t->trust_reconnect_flush = true;
			else
				rc = bks_args_bad_value(&a, err,
							"is neither 'fail' "
							"nor 'trust'");
			break;
		}
		if (rc < 0)
			return rc;
	}
	return rc;
}

int bks_nbd_target_check(const char *args, struct bks_error *err)
{
	struct bks_nbd_target t;

	return bks_nbd_target_parse(args, &t, err);
}

const struct bks_driver_desc bks_desc_nbd = BKS_NBD_DESC;
