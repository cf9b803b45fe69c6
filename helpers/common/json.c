/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A tiny JSON writer and reader: see json.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"

/* ---- writer -------------------------------------------------------------- */

void json_writer_init(struct json_writer *j, size_t max)
{
	memset(j, 0, sizeof(*j));
	j->max = max;
}

void json_reset(struct json_writer *j)
{
	j->len = 0;
	j->error = 0;
	j->depth = 0;
	j->need_comma[0] = false;
	j->after_key = false;
}

void json_writer_free(struct json_writer *j)
{
	free(j->buf);
	j->buf = NULL;
	j->len = j->cap = 0;
}

void json_rewind(struct json_writer *j, size_t len)
{
	if (len < j->len)
		j->len = len;
	j->error = 0;
	j->depth = 0;
	j->need_comma[0] = false;
	j->after_key = false;
}

size_t json_len(const struct json_writer *j)
{
	return j->len;
}

int json_error(const struct json_writer *j)
{
	return j->error;
}

/* Make room for n more bytes.  Returns false (and sets the error) if not. */
static bool reserve(struct json_writer *j, size_t n)
{
	size_t cap;
	char *p;

	if (j->error)
		return false;
	if (n > j->max - j->len) {
		j->error = -E2BIG;
		return false;
	}
	if (j->len + n <= j->cap)
		return true;
	/* Double, so that a reply that grows byte by byte costs log(n). */
	cap = j->cap ? j->cap : 256;
	while (cap < j->len + n)
		cap *= 2;
	if (cap > j->max)
		cap = j->max;
	p = realloc(j->buf, cap);
	if (!p) {
		j->error = -ENOMEM;
		return false;
	}
	j->buf = p;
	j->cap = cap;
	return true;
}

static void put(struct json_writer *j, const char *s, size_t n)
{
	if (!reserve(j, n))
		return;
	memcpy(j->buf + j->len, s, n);
	j->len += n;
}

static void putc_(struct json_writer *j, char c)
{
	put(j, &c, 1);
}

void json_raw(struct json_writer *j, const char *s, size_t len)
{
	put(j, s, len);
}

/* What goes before a value (or a key): a comma after a sibling. */
static void prefix(struct json_writer *j)
{
	if (j->after_key) {
		j->after_key = false;
		return;
	}
	/* Top-level values are separate documents (one reply a line). */
	if (j->depth > 0 && j->need_comma[j->depth])
		putc_(j, ',');
	j->need_comma[j->depth] = true;
}

static void open_(struct json_writer *j, char c)
{
	prefix(j);
	if (j->depth >= JSON_MAX_DEPTH) {
		if (!j->error)
			j->error = -EINVAL;
		return;
	}
	putc_(j, c);
	j->depth++;
	j->need_comma[j->depth] = false;
}

static void close_(struct json_writer *j, char c)
{
	if (j->depth == 0 || j->after_key) {
		if (!j->error)
			j->error = -EINVAL;
		return;
	}
	j->depth--;
	putc_(j, c);
}

void json_obj_begin(struct json_writer *j)
{
	open_(j, '{');
}

void json_obj_end(struct json_writer *j)
{
	close_(j, '}');
}

void json_arr_begin(struct json_writer *j)
{
	open_(j, '[');
}

void json_arr_end(struct json_writer *j)
{
	close_(j, ']');
}

/*
 * Length of the valid UTF-8 sequence at s (at most n bytes), or 0 if the
 * bytes there are not one (overlong forms, surrogates and code points
 * past U+10FFFF included).
 */
static size_t utf8_len(const unsigned char *s, size_t n)
{
	unsigned char c = s[0];
	size_t len;
	uint32_t cp, min;

	if (c < 0x80)
		return 1;
	if (c >= 0xc2 && c <= 0xdf) {
		len = 2, cp = c & 0x1f, min = 0x80;
	} else if (c >= 0xe0 && c <= 0xef) {
		len = 3, cp = c & 0x0f, min = 0x800;
	} else if (c >= 0xf0 && c <= 0xf4) {
		len = 4, cp = c & 0x07, min = 0x10000;
	} else {
		return 0;
	}
	if (len > n)
		return 0;
	for (size_t i = 1; i < len; i++) {
		if ((s[i] & 0xc0) != 0x80)
			return 0;
		cp = cp << 6 | (s[i] & 0x3f);
	}
	if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
		return 0;
	return len;
}

static void put_escaped(struct json_writer *j, const char *str)
{
	const unsigned char *s = (const unsigned char *)str;
	size_t n = strlen(str);
	char esc[8];

	putc_(j, '"');
	while (n > 0) {
		size_t run = 0, l;

		/* Copy the longest run that needs no escaping at once. */
		while (run < n && s[run] >= 0x20 && s[run] != '"' &&
		       s[run] != '\\' && s[run] != 0x7f &&
		       (l = utf8_len(s + run, n - run)) > 0)
			run += l;
		put(j, (const char *)s, run);
		s += run;
		n -= run;
		if (n == 0)
			break;
		switch (*s) {
		case '"':
			put(j, "\\\"", 2);
			break;
		case '\\':
			put(j, "\\\\", 2);
			break;
		case '\n':
			put(j, "\\n", 2);
			break;
		case '\r':
			put(j, "\\r", 2);
			break;
		case '\t':
			put(j, "\\t", 2);
			break;
		default:
			if (*s < 0x20 || *s == 0x7f) {
				snprintf(esc, sizeof(esc), "\\u%04x", *s);
				put(j, esc, 6);
			} else {
				/* A byte that is not valid UTF-8. */
				put(j, "\\ufffd", 6);
			}
			break;
		}
		s++;
		n--;
	}
	putc_(j, '"');
}

void json_key(struct json_writer *j, const char *key)
{
	if (j->after_key || j->depth == 0) {
		if (!j->error)
			j->error = -EINVAL;
		return;
	}
	prefix(j);
	put_escaped(j, key);
	putc_(j, ':');
	j->after_key = true;
}

void json_str(struct json_writer *j, const char *s)
{
	prefix(j);
	put_escaped(j, s);
}

void json_u64(struct json_writer *j, uint64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%llu", (unsigned long long)v);

	prefix(j);
	put(j, b, (size_t)n);
}

void json_i64(struct json_writer *j, int64_t v)
{
	char b[24];
	int n = snprintf(b, sizeof(b), "%lld", (long long)v);

	prefix(j);
	put(j, b, (size_t)n);
}

void json_bool(struct json_writer *j, bool v)
{
	prefix(j);
	if (v)
		put(j, "true", 4);
	else
		put(j, "false", 5);
}

void json_null(struct json_writer *j)
{
	prefix(j);
	put(j, "null", 4);
}

void json_kv_str(struct json_writer *j, const char *key, const char *s)
{
	json_key(j, key);
	json_str(j, s);
}

void json_kv_u64(struct json_writer *j, const char *key, uint64_t v)
{
	json_key(j, key);
	json_u64(j, v);
}

void json_kv_bool(struct json_writer *j, const char *key, bool v)
{
	json_key(j, key);
	json_bool(j, v);
}

/* ---- reader -------------------------------------------------------------- */

/* Most tokens in one document: far above any reply (4096 extents). */
#define JSON_MAX_TOKENS (1u << 20)

struct parser {
	struct json_doc *doc;
	size_t pos;
};

static void skip_ws(struct parser *p)
{
	const char *t = p->doc->text;

	while (p->pos < p->doc->len && (t[p->pos] == ' ' || t[p->pos] == '\t' ||
					t[p->pos] == '\n' || t[p->pos] == '\r'))
		p->pos++;
}

/* Append a token.  Returns its index, or -errno. */
static int new_tok(struct parser *p, enum json_type type, size_t start)
{
	struct json_doc *d = p->doc;
	struct json_tok *t;

	if (d->n == d->cap) {
		unsigned int cap = d->cap ? d->cap * 2 : 64;

		if (d->n >= JSON_MAX_TOKENS)
			return -E2BIG;
		t = realloc(d->toks, cap * sizeof(*t));
		if (!t)
			return -ENOMEM;
		d->toks = t;
		d->cap = cap;
	}
	t = &d->toks[d->n];
	t->type = type;
	t->start = t->end = start;
	t->next = 0;
	t->count = 0;
	return (int)d->n++;
}

static bool is_hex(char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	       (c >= 'A' && c <= 'F');
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static int parse_string(struct parser *p)
{
	const char *t = p->doc->text;
	size_t len = p->doc->len;
	int i;

	p->pos++; /* the opening quote */
	i = new_tok(p, JSON_STRING, p->pos);
	if (i < 0)
		return i;
	while (p->pos < len && t[p->pos] != '"') {
		unsigned char c = (unsigned char)t[p->pos];

		if (c < 0x20)
			return -EINVAL;
		if (c != '\\') {
			p->pos++;
			continue;
		}
		if (++p->pos >= len)
			return -EINVAL;
		switch (t[p->pos]) {
		case '"':
		case '\\':
		case '/':
		case 'b':
		case 'f':
		case 'n':
		case 'r':
		case 't':
			p->pos++;
			break;
		case 'u':
			if (len - p->pos < 5)
				return -EINVAL;
			for (int k = 1; k <= 4; k++) {
				if (!is_hex(t[p->pos + k]))
					return -EINVAL;
			}
			p->pos += 5;
			break;
		default:
			return -EINVAL;
		}
	}
	if (p->pos >= len)
		return -EINVAL;
	p->doc->toks[i].end = p->pos;
	p->pos++; /* the closing quote */
	p->doc->toks[i].next = p->doc->n;
	return 0;
}

static int parse_number(struct parser *p)
{
	const char *t = p->doc->text;
	size_t len = p->doc->len, start = p->pos;
	int i;

	if (p->pos < len && t[p->pos] == '-')
		p->pos++;
	if (p->pos >= len || !is_digit(t[p->pos]))
		return -EINVAL;
	if (t[p->pos] == '0') {
		p->pos++;
	} else {
		while (p->pos < len && is_digit(t[p->pos]))
			p->pos++;
	}
	if (p->pos < len && t[p->pos] == '.') {
		p->pos++;
		if (p->pos >= len || !is_digit(t[p->pos]))
			return -EINVAL;
		while (p->pos < len && is_digit(t[p->pos]))
			p->pos++;
	}
	if (p->pos < len && (t[p->pos] == 'e' || t[p->pos] == 'E')) {
		p->pos++;
		if (p->pos < len && (t[p->pos] == '+' || t[p->pos] == '-'))
			p->pos++;
		if (p->pos >= len || !is_digit(t[p->pos]))
			return -EINVAL;
		while (p->pos < len && is_digit(t[p->pos]))
			p->pos++;
	}
	i = new_tok(p, JSON_NUMBER, start);
	if (i < 0)
		return i;
	p->doc->toks[i].end = p->pos;
	p->doc->toks[i].next = p->doc->n;
	return 0;
}

static int parse_literal(struct parser *p, const char *word,
			 enum json_type type)
{
	size_t n = strlen(word);
	int i;

	if (p->doc->len - p->pos < n ||
	    memcmp(p->doc->text + p->pos, word, n) != 0)
		return -EINVAL;
	i = new_tok(p, type, p->pos);
	if (i < 0)
		return i;
	p->pos += n;
	p->doc->toks[i].end = p->pos;
	p->doc->toks[i].next = p->doc->n;
	return 0;
}

static int parse_value(struct parser *p, unsigned int depth);

/* An object or an array, at p->pos on its opening bracket. */
static int parse_container(struct parser *p, unsigned int depth)
{
	const char *t = p->doc->text;
	bool obj = t[p->pos] == '{';
	char close = obj ? '}' : ']';
	int i, rc;

	if (depth >= JSON_MAX_DEPTH)
		return -E2BIG;
	i = new_tok(p, obj ? JSON_OBJECT : JSON_ARRAY, p->pos);
	if (i < 0)
		return i;
	p->pos++;
	skip_ws(p);
	if (p->pos < p->doc->len && t[p->pos] == close) {
		p->pos++;
		goto done;
	}
	for (;;) {
		if (obj) {
			skip_ws(p);
			if (p->pos >= p->doc->len || t[p->pos] != '"')
				return -EINVAL;
			rc = parse_string(p);
			if (rc < 0)
				return rc;
			skip_ws(p);
			if (p->pos >= p->doc->len || t[p->pos] != ':')
				return -EINVAL;
			p->pos++;
		}
		rc = parse_value(p, depth + 1);
		if (rc < 0)
			return rc;
		p->doc->toks[i].count++;
		skip_ws(p);
		if (p->pos >= p->doc->len)
			return -EINVAL;
		if (t[p->pos] == ',') {
			p->pos++;
			continue;
		}
		if (t[p->pos] != close)
			return -EINVAL;
		p->pos++;
		break;
	}
done:
	p->doc->toks[i].end = p->pos;
	p->doc->toks[i].next = p->doc->n;
	return 0;
}

static int parse_value(struct parser *p, unsigned int depth)
{
	skip_ws(p);
	if (p->pos >= p->doc->len)
		return -EINVAL;
	switch (p->doc->text[p->pos]) {
	case '{':
	case '[':
		return parse_container(p, depth);
	case '"':
		return parse_string(p);
	case 't':
		return parse_literal(p, "true", JSON_TRUE);
	case 'f':
		return parse_literal(p, "false", JSON_FALSE);
	case 'n':
		return parse_literal(p, "null", JSON_NULL);
	default:
		return parse_number(p);
	}
}

int json_parse(struct json_doc *doc, const char *text, size_t len)
{
	struct parser p = {.doc = doc};
	int rc;

	memset(doc, 0, sizeof(*doc));
	doc->text = text;
	doc->len = len;
	rc = parse_value(&p, 0);
	if (rc < 0)
		goto out;
	skip_ws(&p);
	if (p.pos != len)
		rc = -EINVAL;
out:
	if (rc < 0)
		json_doc_free(doc);
	return rc;
}

void json_doc_free(struct json_doc *doc)
{
	free(doc->toks);
	doc->toks = NULL;
	doc->n = doc->cap = 0;
}

/* Does string token i equal s (compared unescaped)? */
static bool str_eq(const struct json_doc *doc, int i, const char *s)
{
	char buf[256];

	if (json_get_str(doc, i, buf, sizeof(buf)) < 0)
		return false;
	return strcmp(buf, s) == 0;
}

int json_get(const struct json_doc *doc, int obj, const char *key)
{
	unsigned int k;

	if (obj < 0 || (unsigned int)obj >= doc->n ||
	    doc->toks[obj].type != JSON_OBJECT)
		return -1;
	k = (unsigned int)obj + 1;
	for (unsigned int c = 0; c < doc->toks[obj].count; c++) {
		unsigned int v = k + 1;

		if (str_eq(doc, (int)k, key))
			return (int)v;
		k = doc->toks[v].next;
	}
	return -1;
}

int json_get_u64(const struct json_doc *doc, int i, uint64_t *out)
{
	const struct json_tok *t;
	uint64_t v = 0;

	if (i < 0 || (unsigned int)i >= doc->n)
		return -EINVAL;
	t = &doc->toks[i];
	if (t->type != JSON_NUMBER)
		return -EINVAL;
	for (size_t k = t->start; k < t->end; k++) {
		char c = doc->text[k];

		if (!is_digit(c))
			return -EINVAL; /* a sign, a fraction, an exponent */
		if (v > (UINT64_MAX - (uint64_t)(c - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (uint64_t)(c - '0');
	}
	*out = v;
	return 0;
}

static unsigned int hex4(const char *s)
{
	unsigned int v = 0;

	for (int k = 0; k < 4; k++) {
		char c = s[k];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned int)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned int)(c - 'a' + 10);
		else
			v |= (unsigned int)(c - 'A' + 10);
	}
	return v;
}

/* Encode cp as UTF-8 into b; returns the length. */
static size_t utf8_put(char *b, uint32_t cp)
{
	if (cp < 0x80) {
		b[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		return 2;
	}
	if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		return 3;
	}
	b[0] = (char)(0xf0 | cp >> 18);
	b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
	b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
	b[3] = (char)(0x80 | (cp & 0x3f));
	return 4;
}

int json_get_str(const struct json_doc *doc, int i, char *buf, size_t size)
{
	const struct json_tok *t;
	const char *s;
	size_t k, o = 0;

	if (i < 0 || (unsigned int)i >= doc->n || size == 0)
		return -EINVAL;
	t = &doc->toks[i];
	if (t->type != JSON_STRING)
		return -EINVAL;
	s = doc->text;
	for (k = t->start; k < t->end;) {
		char b[4];
		size_t n = 1;

		if (s[k] != '\\') {
			b[0] = s[k++];
		} else {
			char e = s[k + 1];

			k += 2;
			switch (e) {
			case 'b':
				b[0] = '\b';
				break;
			case 'f':
				b[0] = '\f';
				break;
			case 'n':
				b[0] = '\n';
				break;
			case 'r':
				b[0] = '\r';
				break;
			case 't':
				b[0] = '\t';
				break;
			case 'u': {
				uint32_t cp = hex4(s + k);

				k += 4;
				if (cp >= 0xd800 && cp <= 0xdbff &&
				    t->end - k >= 6 && s[k] == '\\' &&
				    s[k + 1] == 'u') {
					uint32_t lo = hex4(s + k + 2);

					if (lo >= 0xdc00 && lo <= 0xdfff) {
						cp = 0x10000 +
						     ((cp - 0xd800) << 10) +
						     (lo - 0xdc00);
						k += 6;
					}
				}
				if (cp >= 0xd800 && cp <= 0xdfff)
					cp = 0xfffd; /* a lone surrogate */
				if (cp == 0)
					cp = '?'; /* C strings end at NUL */
				n = utf8_put(b, cp);
				break;
			}
			default: /* '"', '\\', '/' */
				b[0] = e;
				break;
			}
		}
		if (n >= size - o) {
			buf[o] = '\0';
			return -ENAMETOOLONG;
		}
		memcpy(buf + o, b, n);
		o += n;
	}
	buf[o] = '\0';
	return 0;
}

bool json_is_true(const struct json_doc *doc, int i)
{
	return i >= 0 && (unsigned int)i < doc->n &&
	       doc->toks[i].type == JSON_TRUE;
}
