/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * libFuzzer target for qcow2 images as blkstack-img reads them (make
 * fuzz): the header and its extensions (qcow2-format.c's parser, through
 * info), the L1, L2 and refcount tables and the refcount blocks (check,
 * then check --repair).  The input is the whole image file, in a memfd.
 * Properties beyond "no crash, no leak, no UB" (ASan and UBSan are on):
 *   - a refusal is an error with a one-line message naming the file;
 *   - info and check agree on whether the header is acceptable;
 *   - after a repair of an image with leaks and no corruptions, a
 *     second check finds no leaks: a repair fixes every leak it counted;
 *   - a repair of a corrupt image fixes at most what it found.
 * Seeds: tests/fuzz/corpus-qcow2/, tiny qemu-img-made images (v2, v3,
 * backing name, compressed and zero clusters; see its README).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "img.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char fuzz_path[] = "fuzz.qcow2";

/* A refused image: the message is one line and names the file. */
static void check_error(const struct bks_error *err)
{
	if (err->code == 0 || strchr(err->msg, '\n') ||
	    !strstr(err->msg, fuzz_path))
		abort();
}

static int image_fd(const uint8_t *data, size_t size)
{
	int fd = memfd_create("fuzz-qcow2", MFD_CLOEXEC);
	size_t done = 0;

	if (fd < 0)
		abort();
	while (done < size) {
		ssize_t n = write(fd, data + done, size - done);

		if (n <= 0)
			abort();
		done += (size_t)n;
	}
	return fd;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static FILE *null;
	struct bks_error err = {0};
	struct json_writer extra;
	struct img_info info;
	struct img_check ck, again;
	int fd, ri, rc;

	if (!null && !(null = fopen("/dev/null", "w")))
		abort();
	if (!img_format_qcow2.probe(
		data, size < IMG_PROBE_BYTES ? size : IMG_PROBE_BYTES, size))
		return 0;
	fd = image_fd(data, size);
	json_writer_init(&extra, 1 << 20);
	json_obj_begin(&extra);
	ri = img_format_qcow2.info(fd, fuzz_path, &info, &extra, &err);
	if (ri < 0) {
		check_error(&err);
	} else {
		json_obj_end(&extra);
		if (json_error(&extra) < 0 || info.cluster_size < 512)
			abort();
	}
	json_writer_free(&extra);
	bks_error_clear(&err);
	rc = img_format_qcow2.check(fd, fuzz_path, false, null, &ck, &err);
	if (rc < 0)
		check_error(&err);
	/* check refuses what info refuses (it may refuse more: features). */
	if (ri < 0 && rc == 0)
		abort();
	if (rc == 0 && ck.leaks && !ck.corruptions) {
		bks_error_clear(&err);
		if (img_format_qcow2.check(fd, fuzz_path, true, null, &ck,
					   &err) < 0)
			abort();
		if (ck.leaks_fixed != ck.leaks)
			abort();
		if (img_format_qcow2.check(fd, fuzz_path, false, null, &again,
					   &err) < 0)
			abort();
		if (again.leaks != 0)
			abort();
	} else if (rc == 0 && ck.corruptions) {
		/* A repair of what is safe to fix, or a refusal to. */
		bks_error_clear(&err);
		if (img_format_qcow2.check(fd, fuzz_path, true, null, &ck,
					   &err) < 0)
			abort();
		if (ck.corruptions_fixed > ck.corruptions)
			abort();
	}
	close(fd);
	return 0;
}
