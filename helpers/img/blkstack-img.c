/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-img: create, inspect, check and map the images the worker's
 * formats serve (raw, qcow2, vhd), in the style of qemu-img.  The
 * command line, the image's format (given or probed), the backing chain
 * walk, and the printing live here; each format is one file (img.h).
 * docs/blkstack-img.txt describes the commands, output and exit codes.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "blkstack/driver.h"
#include "img-map.h"
#include "img.h"
#include "version.h"

/* Exit codes (qemu-img check's convention for check). */
enum {
	EXIT_OK = 0,
	EXIT_ERR = 1,		/* an error: the message is on stderr */
	EXIT_CORRUPT = 2,	/* check: corruptions found */
	EXIT_LEAKS = 3,		/* check: leaks only */
	EXIT_NO_CHECK = 63,	/* check: the format has nothing to check */
	EXIT_USAGE = 1,		/* a bad command line */
	JSON_OUT_MAX = 1 << 24, /* the largest JSON document printed */
};

static const char *prog = "blkstack-img";

static void usage(FILE *f)
{
	fprintf(f,
		"usage: %s COMMAND [OPTIONS] FILE...\n"
		"  create [-q] [-f FMT] [-b BACKING [-F BACKING_FMT]] "
		"[-o OPTIONS] FILE [SIZE]\n"
		"  info   [-f FMT] [--json] [--backing-chain] FILE\n"
		"  check  [-f FMT] [--json] [-r leaks|all | --repair] FILE\n"
		"  map    [-f FMT] [--output=human|json] FILE\n"
		"  --version | --help\n"
		"formats: raw, qcow2%s; SIZE takes k, M, G, T, P, E "
		"(powers of 1024)\n",
		prog, img_format_find("vhd") ? ", vhd" : "");
}

/* "blkstack-img: CMD: MSG" on stderr; returns EXIT_ERR. */
static int fail(const char *cmd, const struct bks_error *err)
{
	fprintf(stderr, "%s: %s: %s\n", prog, cmd, err->msg);
	return EXIT_ERR;
}

static int fail_usage(const char *cmd, const char *msg)
{
	fprintf(stderr, "%s: %s: %s\n", prog, cmd, msg);
	usage(stderr);
	return EXIT_USAGE;
}

/* ---- sizes, paths, formats ---------------------------------------------- */

/* A size: digits and an optional binary suffix.  0 or -EINVAL/-ERANGE. */
static int parse_size(const char *s, uint64_t *out)
{
	static const char suffixes[] = "kmgtpe";
	unsigned int shift = 0;
	uint64_t v = 0;
	const char *p = s;

	if (*p < '0' || *p > '9')
		return -EINVAL;
	for (; *p >= '0' && *p <= '9'; p++) {
		if (v > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (uint64_t)(*p - '0');
	}
	if (*p) {
		const char *q = strchr(suffixes, *p | 0x20);

		if (!q || p[1] != '\0')
			return -EINVAL;
		shift = 10 * (unsigned int)(q - suffixes + 1);
	}
	if (shift && v > (UINT64_MAX >> shift))
		return -ERANGE;
	*out = v << shift;
	return 0;
}

/*
 * The file a backing name stored in (or given for) the image at path
 * means: an absolute name as it is, a relative one relative to the
 * image's directory (qemu-img's rule), made canonical when it exists.
 */
static int resolve_backing(const char *path, const char *name, char *out,
			   size_t size, struct bks_error *err)
{
	char joined[IMG_PATH_MAX], canon[PATH_MAX];
	const char *slash = strrchr(path, '/');
	int n;

	if (name[0] == '/')
		n = snprintf(joined, sizeof(joined), "%s", name);
	else if (slash)
		n = snprintf(joined, sizeof(joined), "%.*s/%s",
			     (int)(slash - path), path, name);
	else
		n = snprintf(joined, sizeof(joined), "%s", name);
	if (n < 0 || (size_t)n >= sizeof(joined))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s: backing file name too long", path);
	if (realpath(joined, canon))
		n = snprintf(out, size, "%s", canon);
	else if (joined[0] != '/' && realpath(".", canon))
		n = snprintf(out, size, "%s/%s", canon, joined);
	else
		n = snprintf(out, size, "%s", joined);
	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s: backing file name too long", path);
	return 0;
}

/* The format called name, or an error listing the known ones. */
static int find_format(const char *name, const struct img_format **out,
		       struct bks_error *err)
{
	char list[128] = "";
	size_t n = 0;

	*out = img_format_find(name);
	if (*out)
		return 0;
	for (size_t i = 0; img_formats[i]; i++) {
		int w = snprintf(list + n, sizeof(list) - n, "%s%s",
				 i ? ", " : "", img_formats[i]->name);

		if (w < 0 || (size_t)w >= sizeof(list) - n)
			break;
		n += (size_t)w;
	}
	return bks_error_setmsg(
	    err, EINVAL, "unknown format \"%s\" (known: %s)", name, list);
}

/* Probe the format of the image open on fd (at path). */
static int probe_format(int fd, const char *path, const struct img_format **out,
			struct bks_error *err)
{
	unsigned char head[IMG_PROBE_BYTES];
	struct stat st;
	ssize_t n;

	if (fstat(fd, &st) < 0)
		return bks_error_set(err, errno, "stat %s", path);
	n = pread(fd, head, sizeof(head), 0);
	if (n < 0)
		return bks_error_set(err, errno, "read %s", path);
	for (size_t i = 0; img_formats[i]; i++)
		if (img_formats[i]->probe(head, (size_t)n,
					  (uint64_t)st.st_size)) {
			*out = img_formats[i];
			return 0;
		}
	return bks_error_setmsg(err, EINVAL, "%s: unknown format", path);
}

/* Open path (flags O_RDONLY or O_RDWR) and find its format. */
static int open_image(const char *path, int flags, const char *fmt_name,
		      const struct img_format **fmt, struct bks_error *err)
{
	int fd = open(path, flags | O_CLOEXEC), r;

	if (fd < 0)
		return bks_error_set(err, errno, "open %s", path);
	if (fmt_name) {
		r = find_format(fmt_name, fmt, err);
		if (r < 0)
			bks_error_prepend(err, "%s: ", path);
	} else {
		r = probe_format(fd, path, fmt, err);
	}
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

/* ---- create ------------------------------------------------------------- */

static int cmd_create(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *fmt_name = "raw", *backing_fmt = NULL;
	struct img_create_opts o = {0};
	const struct img_format *fmt, *bfmt = NULL;
	struct json_writer xw;
	char backing_path[IMG_PATH_MAX];
	struct bks_error err = {0};
	struct stat st;
	bool quiet = false;
	int c, r, fd = -1;

	while ((c = getopt_long(argc, argv, "+qf:b:F:o:h", opts, NULL)) != -1) {
		switch (c) {
		case 'q':
			quiet = true;
			break;
		case 'f':
			fmt_name = optarg;
			break;
		case 'b':
			o.backing = optarg;
			break;
		case 'F':
			backing_fmt = optarg;
			break;
		case 'o':
			o.options = optarg;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc || argc - optind > 2)
		return fail_usage("create", "expected FILE [SIZE]");
	o.path = argv[optind];
	if (argc - optind == 2) {
		r = parse_size(argv[optind + 1], &o.size);
		if (r < 0) {
			bks_error_setmsg(&err, -r, "bad size \"%s\"",
					 argv[optind + 1]);
			return fail("create", &err);
		}
		if (o.size == 0 || o.size % 512) {
			bks_error_setmsg(&err, EINVAL,
					 "size %" PRIu64
					 " is not a positive multiple of 512",
					 o.size);
			return fail("create", &err);
		}
	} else if (!o.backing) {
		return fail_usage("create", "SIZE is required without -b");
	}
	if (backing_fmt && !o.backing)
		return fail_usage("create", "-F needs -b");
	if (find_format(fmt_name, &fmt, &err) < 0)
		return fail("create", &err);
	if (lstat(o.path, &st) == 0) {
		bks_error_setmsg(&err, EEXIST,
				 "%s exists: refusing to "
				 "overwrite it",
				 o.path);
		return fail("create", &err);
	}
	if (o.backing) {
		struct img_info bi;

		if (o.backing[0] == '\0' || strlen(o.backing) >= IMG_PATH_MAX) {
			bks_error_setmsg(&err, EINVAL, "bad backing file name");
			return fail("create", &err);
		}
		if (resolve_backing(o.path, o.backing, backing_path,
				    sizeof(backing_path), &err) < 0)
			return fail("create", &err);
		fd = open_image(backing_path, O_RDONLY, backing_fmt, &bfmt,
				&err);
		if (fd < 0) {
			bks_error_prepend(&err, "backing file: ");
			return fail("create", &err);
		}
		json_writer_init(&xw, 1 << 20);
		json_obj_begin(&xw);
		r = bfmt->info(fd, backing_path, &bi, &xw, &err);
		json_writer_free(&xw);
		close(fd);
		if (r < 0) {
			bks_error_prepend(&err, "backing file: ");
			return fail("create", &err);
		}
		o.backing_path = backing_path;
		o.backing_fmt = bfmt->name;
		o.backing_size = bi.virtual_size;
		if (o.size == 0)
			o.size = bi.virtual_size;
	}
	if (!quiet) {
		printf("Formatting '%s', fmt=%s size=%" PRIu64, o.path,
		       fmt->name, o.size);
		if (o.backing)
			printf(" backing_file=%s backing_fmt=%s", o.backing,
			       o.backing_fmt);
		if (o.options)
			printf(" %s", o.options);
		printf("\n");
	}
	if (fmt->create(&o, &err) < 0)
		return fail("create", &err);
	return EXIT_OK;
}

/* ---- info --------------------------------------------------------------- */

/* Copy the JSON value at token i of doc into j (re-emitted, not copied). */
static unsigned int json_copy(struct json_writer *j, const struct json_doc *d,
			      unsigned int i)
{
	const struct json_tok *t = &d->toks[i];
	char s[IMG_PATH_MAX];
	uint64_t v;

	switch (t->type) {
	case JSON_OBJECT:
	case JSON_ARRAY:
		if (t->type == JSON_OBJECT)
			json_obj_begin(j);
		else
			json_arr_begin(j);
		for (unsigned int k = i + 1; k < t->next;) {
			if (t->type == JSON_OBJECT) {
				json_get_str(d, (int)k, s, sizeof(s));
				json_key(j, s);
				k = d->toks[k].next;
			}
			k = json_copy(j, d, k);
		}
		if (t->type == JSON_OBJECT)
			json_obj_end(j);
		else
			json_arr_end(j);
		break;
	case JSON_STRING:
		json_get_str(d, (int)i, s, sizeof(s));
		json_str(j, s);
		break;
	case JSON_NUMBER:
		if (json_get_u64(d, (int)i, &v) == 0)
			json_u64(j, v);
		else
			json_null(j); /* formats write only u64s */
		break;
	case JSON_TRUE:
	case JSON_FALSE:
		json_bool(j, t->type == JSON_TRUE);
		break;
	case JSON_NULL:
		json_null(j);
		break;
	}
	return t->next;
}

/* Print the JSON value at token i as qemu-img's indented text. */
static unsigned int json_text(const struct json_doc *d, unsigned int i,
			      const char *key, int indent)
{
	const struct json_tok *t = &d->toks[i];
	char s[IMG_PATH_MAX];

	if (t->type == JSON_OBJECT || t->type == JSON_ARRAY) {
		unsigned int n = 0;

		if (key)
			printf("%*s%s:\n", indent, "", key);
		for (unsigned int k = i + 1; k < t->next; n++) {
			if (t->type == JSON_OBJECT) {
				json_get_str(d, (int)k, s, sizeof(s));
				k = d->toks[k].next;
			} else {
				snprintf(s, sizeof(s), "[%u]", n);
			}
			k = json_text(d, k, s, indent + 4);
		}
		return t->next;
	}
	if (t->type == JSON_STRING)
		json_get_str(d, (int)i, s, sizeof(s));
	else
		snprintf(s, sizeof(s), "%.*s", (int)(t->end - t->start),
			 d->text + t->start);
	bks_sanitize_line(s);
	printf("%*s%s: %s\n", indent, "", key ? key : "", s);
	return t->next;
}

/* "4 MiB" for n bytes, as qemu-img prints sizes. */
static void human_size(uint64_t n, char *buf, size_t size)
{
	static const char *const units[] = {"B",   "KiB", "MiB", "GiB",
					    "TiB", "PiB", "EiB"};
	double v = (double)n;
	unsigned int u = 0;

	while (v >= 1024 && u < 6) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%" PRIu64 " B", n);
	else if (v == (double)(uint64_t)v)
		snprintf(buf, size, "%" PRIu64 " %s", (uint64_t)v, units[u]);
	else
		snprintf(buf, size, "%.3g %s", v, units[u]);
}

/* One image of the chain, as info found it. */
struct info_one {
	char path[IMG_PATH_MAX];
	struct img_info info;
	uint64_t disk_size;
	char *extra_text;      /* the format's own keys: a JSON object */
	struct json_doc extra; /* extra_text parsed (it points into it) */
};

static void info_print_text(const struct info_one *im)
{
	char a[32], b[32];

	human_size(im->info.virtual_size, a, sizeof(a));
	human_size(im->disk_size, b, sizeof(b));
	printf("image: %s\nfile format: %s\nvirtual size: %s (%" PRIu64
	       " bytes)\ndisk size: %s\n",
	       im->path, im->info.format, a, im->info.virtual_size, b);
	if (im->info.cluster_size)
		printf("cluster_size: %" PRIu64 "\n", im->info.cluster_size);
	if (im->info.backing[0]) {
		char bk[IMG_PATH_MAX];

		snprintf(bk, sizeof(bk), "%s", im->info.backing);
		bks_sanitize_line(bk);
		printf("backing file: %s (actual path: %s)\n", bk,
		       im->info.backing_path);
		if (im->info.backing_fmt[0])
			printf("backing file format: %s\n",
			       im->info.backing_fmt);
	}
	if (im->info.dirty)
		printf("dirty flag: yes\n");
	if (im->extra.n > 1) {
		printf("Format specific information:\n");
		for (unsigned int k = 1; k < im->extra.toks[0].next;) {
			char key[256];

			json_get_str(&im->extra, (int)k, key, sizeof(key));
			k = json_text(&im->extra, im->extra.toks[k].next, key,
				      4);
		}
	}
}

static void info_print_json(struct json_writer *j, const struct info_one *im)
{
	json_obj_begin(j);
	json_kv_str(j, "filename", im->path);
	json_kv_str(j, "format", im->info.format);
	json_kv_u64(j, "virtual-size", im->info.virtual_size);
	json_kv_u64(j, "actual-size", im->disk_size);
	if (im->info.cluster_size)
		json_kv_u64(j, "cluster-size", im->info.cluster_size);
	if (im->info.backing[0]) {
		json_kv_str(j, "backing-filename", im->info.backing);
		json_kv_str(j, "full-backing-filename", im->info.backing_path);
		if (im->info.backing_fmt[0])
			json_kv_str(j, "backing-filename-format",
				    im->info.backing_fmt);
	}
	json_kv_bool(j, "dirty-flag", im->info.dirty);
	if (im->extra.n > 0) {
		json_key(j, "format-specific");
		json_obj_begin(j);
		json_kv_str(j, "type", im->info.format);
		json_key(j, "data");
		json_copy(j, &im->extra, 0);
		json_obj_end(j);
	}
	json_obj_end(j);
}

/*
 * Read one image: its format's info, its disk usage, its extra keys.
 * Returns 0 or -errno; dev/ino identify the file (for loops).
 */
static int info_read(struct info_one *im, const char *fmt_name,
		     struct json_writer *xw, dev_t *dev, ino_t *ino,
		     struct bks_error *err)
{
	const struct img_format *fmt;
	struct stat st;
	int fd, r;

	fd = open_image(im->path, O_RDONLY, fmt_name, &fmt, err);
	if (fd < 0)
		return fd;
	if (fstat(fd, &st) < 0) {
		r = bks_error_set(err, errno, "stat %s", im->path);
		goto out;
	}
	*dev = st.st_dev;
	*ino = st.st_ino;
	im->disk_size = (uint64_t)st.st_blocks * 512;
	json_reset(xw);
	json_obj_begin(xw);
	r = fmt->info(fd, im->path, &im->info, xw, err);
	if (r < 0)
		goto out;
	json_obj_end(xw);
	if (json_error(xw) < 0) {
		r = bks_error_set(err, -json_error(xw),
				  "%s: format-specific information", im->path);
		goto out;
	}
	im->extra_text = strndup(xw->buf, xw->len);
	if (!im->extra_text) {
		r = bks_error_set(err, ENOMEM,
				  "%s: format-specific "
				  "information",
				  im->path);
		goto out;
	}
	r = json_parse(&im->extra, im->extra_text, xw->len);
	if (r < 0) {
		bks_error_set(err, -r, "%s: format-specific information",
			      im->path);
		goto out;
	}
	if (im->info.backing[0] && !im->info.backing_path[0]) {
		r = resolve_backing(im->path, im->info.backing,
				    im->info.backing_path,
				    sizeof(im->info.backing_path), err);
		if (r < 0)
			goto out;
	}
out:
	close(fd);
	return r;
}

static int cmd_info(int argc, char **argv)
{
	enum {
		OPT_JSON = 256,
		OPT_CHAIN,
		OPT_OUTPUT
	};
	static const struct option opts[] = {
	    {"json", no_argument, NULL, OPT_JSON},
	    {"output", required_argument, NULL, OPT_OUTPUT},
	    {"backing-chain", no_argument, NULL, OPT_CHAIN},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	struct info_one *chain = NULL;
	const char *fmt_name = NULL;
	struct json_writer xw, out;
	struct bks_error err = {0};
	dev_t devs[BKS_CHAIN_MAX_LAYERS];
	ino_t inos[BKS_CHAIN_MAX_LAYERS];
	unsigned int n = 0;
	bool json = false;
	int c, rc = EXIT_ERR;

	json_writer_init(&xw, 1 << 20);
	json_writer_init(&out, JSON_OUT_MAX);
	while ((c = getopt_long(argc, argv, "+f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			fmt_name = optarg;
			break;
		case OPT_JSON:
			json = true;
			break;
		case OPT_OUTPUT:
			if (strcmp(optarg, "json") != 0 &&
			    strcmp(optarg, "human") != 0) {
				rc = fail_usage("info", "--output is human "
							"or json");
				goto out;
			}
			json = strcmp(optarg, "json") == 0;
			break;
		case OPT_CHAIN:
			break; /* the chain is always shown */
		case 'h':
			usage(stdout);
			rc = EXIT_OK;
			goto out;
		default:
			usage(stderr);
			rc = EXIT_USAGE;
			goto out;
		}
	}
	if (argc - optind != 1) {
		rc = fail_usage("info", "expected one FILE");
		goto out;
	}
	chain = calloc(BKS_CHAIN_MAX_LAYERS, sizeof(*chain));
	if (!chain) {
		bks_error_set(&err, ENOMEM, "info");
		rc = fail("info", &err);
		goto out;
	}
	snprintf(chain[0].path, sizeof(chain[0].path), "%s", argv[optind]);
	for (;;) {
		struct info_one *im = &chain[n];

		if (info_read(im, fmt_name, &xw, &devs[n], &inos[n], &err) <
		    0) {
			rc = fail("info", &err);
			goto out;
		}
		for (unsigned int k = 0; k < n; k++)
			if (devs[k] == devs[n] && inos[k] == inos[n]) {
				bks_error_setmsg(&err, ELOOP,
						 "%s: backing chain loops "
						 "back to %s",
						 chain[n - 1].path,
						 chain[k].path);
				rc = fail("info", &err);
				goto out;
			}
		n++;
		if (!im->info.backing[0])
			break;
		if (n == BKS_CHAIN_MAX_LAYERS) {
			bks_error_setmsg(&err, ELOOP,
					 "%s: backing chain longer than %d "
					 "images",
					 chain[0].path, BKS_CHAIN_MAX_LAYERS);
			rc = fail("info", &err);
			goto out;
		}
		snprintf(chain[n].path, sizeof(chain[n].path), "%s",
			 im->info.backing_path);
		fmt_name =
		    im->info.backing_fmt[0] ? im->info.backing_fmt : NULL;
	}
	if (json) {
		json_arr_begin(&out);
		for (unsigned int k = 0; k < n; k++)
			info_print_json(&out, &chain[k]);
		json_arr_end(&out);
		json_raw(&out, "\n", 1);
		if (json_error(&out) < 0) {
			bks_error_set(&err, -json_error(&out), "info --json");
			rc = fail("info", &err);
			goto out;
		}
		fwrite(out.buf, 1, out.len, stdout);
	} else {
		for (unsigned int k = 0; k < n; k++) {
			if (k)
				printf("\n");
			info_print_text(&chain[k]);
		}
	}
	rc = fflush(stdout) == 0 ? EXIT_OK : EXIT_ERR;
out:
	if (chain)
		for (unsigned int k = 0; k < BKS_CHAIN_MAX_LAYERS; k++) {
			json_doc_free(&chain[k].extra);
			free(chain[k].extra_text);
		}
	free(chain);
	json_writer_free(&xw);
	json_writer_free(&out);
	return rc;
}

/* ---- check -------------------------------------------------------------- */

static void check_print_text(const struct img_check *k)
{
	if (k->corruptions == 0 && k->leaks == 0)
		printf("No errors were found on the image.\n");
	if (k->corruptions)
		printf("\n%" PRIu64 " errors were found on the image.\n"
		       "Data may be corrupted, or further writes to the "
		       "image may corrupt it.\n",
		       k->corruptions);
	if (k->leaks)
		printf("\n%" PRIu64 " leaked clusters were found on the "
		       "image.\nThis means waste of disk space, but no harm "
		       "to data.\n",
		       k->leaks);
	if (k->total)
		printf("%" PRIu64 "/%" PRIu64 " = %.2f%% allocated clusters\n",
		       k->allocated, k->total,
		       100.0 * (double)k->allocated / (double)k->total);
}

static int check_json(const char *path, const char *fmt,
		      const struct img_check *k, const struct img_check *fixed)
{
	struct json_writer j;
	int r;

	json_writer_init(&j, 1 << 16);
	json_obj_begin(&j);
	json_kv_str(&j, "filename", path);
	json_kv_str(&j, "format", fmt);
	json_kv_u64(&j, "check-errors", 0);
	json_kv_u64(&j, "corruptions", k->corruptions);
	json_kv_u64(&j, "leaks", k->leaks);
	if (fixed) {
		json_kv_u64(&j, "corruptions-fixed", fixed->corruptions_fixed);
		json_kv_u64(&j, "leaks-fixed", fixed->leaks_fixed);
	}
	json_kv_u64(&j, "allocated-clusters", k->allocated);
	json_kv_u64(&j, "total-clusters", k->total);
	json_obj_end(&j);
	json_raw(&j, "\n", 1);
	r = json_error(&j);
	if (r == 0)
		fwrite(j.buf, 1, j.len, stdout);
	json_writer_free(&j);
	return r;
}

static int cmd_check(int argc, char **argv)
{
	enum {
		OPT_JSON = 256,
		OPT_REPAIR,
		OPT_OUTPUT
	};
	static const struct option opts[] = {
	    {"json", no_argument, NULL, OPT_JSON},
	    {"output", required_argument, NULL, OPT_OUTPUT},
	    {"repair", no_argument, NULL, OPT_REPAIR},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	const char *fmt_name = NULL, *path;
	const struct img_format *fmt;
	struct img_check k = {0}, fixed = {0};
	struct bks_error err = {0};
	bool json = false, repair = false;
	int c, fd = -1, rc = EXIT_ERR;

	while ((c = getopt_long(argc, argv, "+f:r:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			fmt_name = optarg;
			break;
		case 'r':
			/* Leaks are what repair fixes; "all" is the same. */
			if (strcmp(optarg, "leaks") != 0 &&
			    strcmp(optarg, "all") != 0)
				return fail_usage("check",
						  "-r is leaks or all");
			repair = true;
			break;
		case OPT_REPAIR:
			repair = true;
			break;
		case OPT_JSON:
			json = true;
			break;
		case OPT_OUTPUT:
			if (strcmp(optarg, "json") != 0 &&
			    strcmp(optarg, "human") != 0)
				return fail_usage("check",
						  "--output is human or json");
			json = strcmp(optarg, "json") == 0;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1)
		return fail_usage("check", "expected one FILE");
	path = argv[optind];
	fd = open_image(path, repair ? O_RDWR : O_RDONLY, fmt_name, &fmt, &err);
	if (fd < 0)
		return fail("check", &err);
	if (!fmt->check) {
		fprintf(stderr,
			"%s: check: %s: %s images have nothing to check\n",
			prog, path, fmt->name);
		rc = EXIT_NO_CHECK;
		goto out;
	}
	/* Problems go to stderr with --json, so that stdout stays JSON. */
	if (fmt->check(fd, path, repair, json ? stderr : stdout, &k, &err) <
	    0) {
		rc = fail("check", &err);
		goto out;
	}
	if (repair) {
		fixed = k;
		if (!json && (k.leaks_fixed || k.corruptions_fixed))
			printf("The following inconsistencies were found and "
			       "repaired:\n\n    %" PRIu64
			       " leaked clusters\n    %" PRIu64
			       " corruptions\n\nDouble checking the fixed "
			       "image now...\n",
			       k.leaks_fixed, k.corruptions_fixed);
		memset(&k, 0, sizeof(k));
		if (fmt->check(fd, path, false, json ? stderr : stdout, &k,
			       &err) < 0) {
			rc = fail("check", &err);
			goto out;
		}
	}
	if (json) {
		if (check_json(path, fmt->name, &k, repair ? &fixed : NULL) <
		    0) {
			bks_error_set(&err, ENOMEM, "check --json");
			rc = fail("check", &err);
			goto out;
		}
	} else {
		check_print_text(&k);
	}
	if (fflush(stdout) != 0)
		rc = EXIT_ERR;
	else if (k.corruptions)
		rc = EXIT_CORRUPT;
	else if (k.leaks)
		rc = EXIT_LEAKS;
	else
		rc = EXIT_OK;
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* ---- map ---------------------------------------------------------------- */

static int cmd_map(int argc, char **argv)
{
	enum {
		OPT_OUTPUT = 256,
		OPT_JSON
	};
	static const struct option opts[] = {
	    {"output", required_argument, NULL, OPT_OUTPUT},
	    {"json", no_argument, NULL, OPT_JSON},
	    {"help", no_argument, NULL, 'h'},
	    {0},
	};
	enum img_map_output output = IMG_MAP_HUMAN;
	const char *fmt_name = NULL;
	const struct img_format *fmt;
	struct bks_error err = {0};
	char abs[PATH_MAX];
	int c, fd;

	while ((c = getopt_long(argc, argv, "+f:h", opts, NULL)) != -1) {
		switch (c) {
		case 'f':
			fmt_name = optarg;
			break;
		case OPT_OUTPUT:
			if (strcmp(optarg, "json") == 0)
				output = IMG_MAP_JSON;
			else if (strcmp(optarg, "human") == 0)
				output = IMG_MAP_HUMAN;
			else
				return fail_usage("map",
						  "--output is human or json");
			break;
		case OPT_JSON:
			output = IMG_MAP_JSON;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (argc - optind != 1)
		return fail_usage("map", "expected one FILE");
	if (!realpath(argv[optind], abs)) {
		bks_error_set(&err, errno, "open %s", argv[optind]);
		return fail("map", &err);
	}
	fd = open_image(abs, O_RDONLY, fmt_name, &fmt, &err);
	if (fd < 0)
		return fail("map", &err);
	close(fd);
	if (img_map(abs, fmt->name, output, stdout, &err) < 0)
		return fail("map", &err);
	return fflush(stdout) == 0 ? EXIT_OK : EXIT_ERR;
}

/* ---- main --------------------------------------------------------------- */

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(int argc, char **argv);
	} cmds[] = {
	    {"create", cmd_create},
	    {"info", cmd_info},
	    {"check", cmd_check},
	    {"map", cmd_map},
	};

	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
		usage(stdout);
		return EXIT_OK;
	}
	if (strcmp(argv[1], "--version") == 0)
		return bks_version_print(stdout, prog) < 0 ? EXIT_ERR : EXIT_OK;
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		if (strcmp(argv[1], cmds[i].name) == 0)
			return cmds[i].fn(argc - 1, argv + 1);
	fprintf(stderr, "%s: unknown command \"%s\"\n", prog, argv[1]);
	usage(stderr);
	return EXIT_USAGE;
}
