/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A tiny JSON writer and reader for the control protocol
 * (docs/control-protocol.txt).
 *
 * Writer: appends to one growable buffer, which its owner keeps and
 * reuses (json_reset), so that a reply allocates nothing once the buffer
 * has grown to fit.  Errors are sticky: after a failed allocation or
 * once the buffer would pass its limit, every call is a no-op and
 * json_error() says why, so a reply is built without checking each call.
 * Commas are placed by the writer.
 *
 * Reader: a validating parser into a flat array of tokens (jsmn-like),
 * for the client side: replies are small and come from the worker, but
 * are still checked fully.
 */
#ifndef BLKSTACK_JSON_H
#define BLKSTACK_JSON_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Deepest nesting of objects and arrays, for the writer and the reader. */
#define JSON_MAX_DEPTH 32

/* ---- writer -------------------------------------------------------------- */

struct json_writer {
	char *buf;
	size_t len, cap;
	size_t max; /* largest len allowed */
	int error;  /* 0, -ENOMEM or -E2BIG; sticky */
	unsigned int depth;
	bool need_comma[JSON_MAX_DEPTH + 1];
	bool after_key;
};

/* Start empty, with a limit of max bytes.  Allocates nothing yet. */
void json_writer_init(struct json_writer *j, size_t max);

/* Empty the text and forget the error; the buffer is kept. */
void json_reset(struct json_writer *j);

/* Free the buffer. */
void json_writer_free(struct json_writer *j);

/*
 * Cut the text back to len bytes (a length json_len() returned between
 * two top-level values) and forget the error: to replace a reply that
 * failed half-way with an error reply.
 */
void json_rewind(struct json_writer *j, size_t len);

/* Bytes written so far. */
size_t json_len(const struct json_writer *j);

/* 0, or -ENOMEM / -E2BIG (over max) / -EINVAL (misnested). */
int json_error(const struct json_writer *j);

void json_obj_begin(struct json_writer *j);
void json_obj_end(struct json_writer *j);
void json_arr_begin(struct json_writer *j);
void json_arr_end(struct json_writer *j);

/* An object key; the value follows with one of the calls below. */
void json_key(struct json_writer *j, const char *key);

/* A string, escaped (invalid UTF-8 bytes become U+FFFD). */
void json_str(struct json_writer *j, const char *s);
void json_u64(struct json_writer *j, uint64_t v);
void json_i64(struct json_writer *j, int64_t v);
void json_bool(struct json_writer *j, bool v);
void json_null(struct json_writer *j);

/* Key and value in one call. */
void json_kv_str(struct json_writer *j, const char *key, const char *s);
void json_kv_u64(struct json_writer *j, const char *key, uint64_t v);
void json_kv_bool(struct json_writer *j, const char *key, bool v);

/* Raw bytes, outside the JSON structure (e.g. the final "\n"). */
void json_raw(struct json_writer *j, const char *s, size_t len);

/* ---- reader -------------------------------------------------------------- */

enum json_type {
	JSON_NULL,
	JSON_FALSE,
	JSON_TRUE,
	JSON_NUMBER,
	JSON_STRING,
	JSON_ARRAY,
	JSON_OBJECT,
};

struct json_tok {
	enum json_type type;
	size_t start, end;  /* of the text; strings: without the quotes */
	unsigned int next;  /* index of the token after this one's subtree */
	unsigned int count; /* arrays: elements; objects: keys */
};

/*
 * A parsed document.  Tokens are in document order: an array's elements
 * follow it, an object's keys each followed by their value.  The first
 * child of token i is i + 1; a child's sibling is toks[child].next.
 */
struct json_doc {
	const char *text;
	size_t len;
	struct json_tok *toks;
	unsigned int n, cap;
};

/*
 * Parse len bytes of text (one value, surrounding white space allowed;
 * the text must outlive the doc).  Returns 0, -EINVAL (not valid JSON),
 * -E2BIG (nested too deep, too many tokens) or -ENOMEM.
 */
int json_parse(struct json_doc *doc, const char *text, size_t len);

void json_doc_free(struct json_doc *doc);

/* The value of key in object token obj, or -1 (also when obj is not one). */
int json_get(const struct json_doc *doc, int obj, const char *key);

/*
 * The number token i as a uint64_t.  Returns 0, or -EINVAL (not a
 * non-negative integer, or i < 0) / -ERANGE.
 */
int json_get_u64(const struct json_doc *doc, int i, uint64_t *out);

/*
 * The string token i, unescaped, into buf (NUL-terminated; a NUL in the
 * string becomes '?').  Returns 0, or -EINVAL (not a string, i < 0) /
 * -ENAMETOOLONG (truncated; buf still holds the start).
 */
int json_get_str(const struct json_doc *doc, int i, char *buf, size_t size);

/* True if token i is JSON true. */
bool json_is_true(const struct json_doc *doc, int i);

#endif /* BLKSTACK_JSON_H */
