/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-img: what one image format offers the tool.
 *
 * Each format is one file, helpers/img/img-FORMAT.c, defining
 * const struct img_format img_format_FORMAT (listed in img-formats.c);
 * blkstack-img.c parses the command line, finds the format (given with
 * -f, or probed from the first bytes), walks backing chains and prints.
 * The tool reads images with plain blocking pread/pwrite: it is a
 * command, not the worker.  Every image is untrusted: every header field
 * and table entry is bounds-checked before use, and a bad one is an
 * error naming the file, the structure and the value.
 *
 * Every op returns 0 or -errno with err set (the program prints it).
 */
#ifndef BLKSTACK_IMG_H
#define BLKSTACK_IMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "blkstack/error.h"
#include "json.h"

/* Longest path or backing name kept, NUL included. */
#define IMG_PATH_MAX 4096
/* Bytes the frame reads from the start of a file for probe. */
#define IMG_PROBE_BYTES 512

/* What create is asked for. */
struct img_create_opts {
	const char *path; /* the new image (refused if it exists) */
	/* Virtual size in bytes; with a backing file, 0 means its size. */
	uint64_t size;
	/*
	 * NULL, or the backing file's name as the user gave it: stored as
	 * given (qemu-img's rule: a relative name is relative to the
	 * directory of path, not to the current directory).
	 */
	const char *backing;
	const char *backing_path; /* the same, resolved to an absolute path */
	const char *backing_fmt;  /* "raw", "qcow2" or "vhd" (the frame
				     probes it when the user gave none) */
	uint64_t backing_size;	  /* its virtual size (the frame reads it) */
	/*
	 * NULL, or the format's own "key=value,..." from -o (qcow2:
	 * cluster_size, compat=0.10|1.1, refcount_bits; vhd:
	 * subformat=dynamic|fixed, block_size).  Unknown keys are refused
	 * by the format, naming the key and listing the known ones.
	 */
	const char *options;
};

/* What info says of one image (the frame prints it, text or JSON). */
struct img_info {
	char format[16]; /* "raw", "qcow2", "vhd" */
	uint64_t virtual_size;
	uint64_t cluster_size;	    /* qcow2 cluster, vhd block; 0 for raw */
	char backing[IMG_PATH_MAX]; /* as stored in the image, "" none */
	char backing_path[IMG_PATH_MAX]; /* resolved absolute, "" none */
	char backing_fmt[32];		 /* as stored, "" if not stored */
	bool dirty;			 /* qcow2 dirty bit, "" for others */
};

/* What check found (and repaired). */
struct img_check {
	uint64_t corruptions;	    /* errors that make data wrong */
	uint64_t leaks;		    /* clusters/blocks allocated, unused */
	uint64_t corruptions_fixed; /* with repair */
	uint64_t leaks_fixed;	    /* with repair */
	uint64_t allocated;	    /* clusters/blocks in use */
	uint64_t total;		    /* clusters/blocks of the virtual size */
};

struct img_format {
	/* Required.  The format's name, as -f and chain strings use it. */
	const char *name;
	/*
	 * Required.  True if the first n bytes of a file of file_size
	 * bytes (n = min(IMG_PROBE_BYTES, file_size)) are this format's
	 * (raw's probe says true to anything: it is tried last).  Called
	 * by the frame on every image whose format is not given.
	 */
	bool (*probe)(const unsigned char *head, size_t n, uint64_t file_size);
	/* Required.  Create o->path (the frame has checked the names). */
	int (*create)(const struct img_create_opts *o, struct bks_error *err);
	/*
	 * Required.  Read the header of the image open on fd (read-only)
	 * into *out.  Extra lines go to extra (a JSON object the frame has
	 * opened, for --json; the text output prints its keys too), may be
	 * ignored by formats with nothing more to say.
	 */
	int (*info)(int fd, const char *path, struct img_info *out,
		    struct json_writer *extra, struct bks_error *err);
	/*
	 * Optional (absent: check says the format has nothing to check).
	 * Check the image open on fd (O_RDWR when repair, else O_RDONLY):
	 * every table entry and reference, reporting each problem as one
	 * line on report ("ERROR cluster 0x50000 refcount=1 reference=2",
	 * "Leaked cluster 5 refcount=1 reference=0"), counts in *out.
	 * With repair, leaks are fixed (and corruptions, where that is
	 * safe); without, nothing is written.  Returns 0 when the check
	 * ran (whatever it found), -errno when it could not.
	 */
	int (*check)(int fd, const char *path, bool repair, FILE *report,
		     struct img_check *out, struct bks_error *err);
};

/* The formats, NULL-terminated, in probe order (raw last). */
extern const struct img_format *const img_formats[];
extern const struct img_format img_format_raw, img_format_qcow2, img_format_vhd;

/* The format called name, or NULL. */
const struct img_format *img_format_find(const char *name);

#endif /* BLKSTACK_IMG_H */
