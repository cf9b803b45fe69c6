// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * bks_image_create(): a new qcow2 or VHD image, optionally backed (the
 * overlay of a live snapshot).  Blocking calls only; never on the data
 * path.
 *
 * Crash order: the file is created with O_EXCL, written whole, then
 * fsynced, then its directory is fsynced.  A crash before the directory
 * sync may leave a partial file at path; it is not in any chain yet (the
 * caller records the new chain only after this returns), so nothing
 * opens it, and the next create of that path fails with EEXIST rather
 * than overwrite it.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/endian.h"
#include "blkstack/image-create.h"
#include "blkstack/image-file.h"
#include "blkstack/qcow2-format.h"
#include "blkstack/vhd-format.h"

/* The backing's kind, from its driver name. */
enum backing_kind {
	BK_RAW,
	BK_QCOW2,
	BK_VHD
};

struct backing {
	enum backing_kind kind;
	char path[BKS_CHAIN_STR_MAX + 1];
	uint64_t size; /* virtual */
	struct vhd_footer vf;
	uint32_t vhd_block; /* a dynamic/differencing parent's block */
};

/* Parse backing ("driver:/abs/path") and read its virtual size. */
static int read_backing(const char *s, struct backing *b, struct bks_error *err)
{
	struct bks_chain_spec spec = {0};
	const char *name;
	unsigned char buf[VHD_HEADER_SIZE];
	off_t end;
	int fd = -1, r;

	r = bks_chain_parse(s, strlen(s), &spec, err);
	if (r < 0)
		return bks_error_prepend(err, "backing %s: ", s);
	if (spec.n != 1 || spec.layers[0].desc->kind != BKS_SINK ||
	    !spec.layers[0].desc->args_path || spec.layers[0].args[0] != '/') {
		r = bks_error_setmsg(err, EINVAL,
				     "backing %s: not one image sink with an "
				     "absolute path",
				     s);
		goto out;
	}
	name = spec.layers[0].desc->name;
	b->kind = strcmp(name, "qcow2") == 0 ? BK_QCOW2
		  : strcmp(name, "vhd") == 0 ? BK_VHD
					     : BK_RAW;
	snprintf(b->path, sizeof(b->path), "%s", spec.layers[0].args);
	fd = open(b->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		r = bks_error_set(err, errno, "open backing file %s", b->path);
		goto out;
	}
	end = lseek(fd, 0, SEEK_END);
	if (end < 0) {
		r = bks_error_set(err, errno, "backing file %s: size", b->path);
		goto out;
	}
	switch (b->kind) {
	case BK_RAW:
		b->size = (uint64_t)end;
		break;
	case BK_QCOW2:
		r = bks_image_pio(fd, false, buf, 32, 0);
		if (r == 0 && !bks_qcow2_probe(buf, 32))
			r = -EINVAL;
		if (r < 0) {
			r = bks_error_set(err, -r,
					  "backing file %s: not a qcow2 image",
					  b->path);
			goto out;
		}
		b->size = bks_get_be64(buf + 24);
		break;
	case BK_VHD:
		if (end < (off_t)VHD_FOOTER_SIZE) {
			r = bks_error_setmsg(err, EINVAL,
					     "backing file %s: too small for "
					     "a VHD",
					     b->path);
			goto out;
		}
		r = bks_image_pio(fd, false, buf, VHD_FOOTER_SIZE,
				  (uint64_t)end - VHD_FOOTER_SIZE);
		if (r < 0) {
			r = bks_error_set(err, -r, "backing file %s: footer",
					  b->path);
			goto out;
		}
		r = vhd_footer_parse(buf, &b->vf, err);
		if (r < 0) {
			bks_error_prepend(err, "backing file %s: ", b->path);
			goto out;
		}
		b->size = b->vf.virtual_size;
		if (b->vf.disk_type != VHD_TYPE_FIXED) {
			struct vhd_header h;

			r = bks_image_pio(fd, false, buf, VHD_HEADER_SIZE,
					  b->vf.data_offset);
			if (r < 0) {
				r = bks_error_set(err, -r,
						  "backing file %s: header",
						  b->path);
				goto out;
			}
			r = vhd_header_parse(buf, &b->vf, (uint64_t)end, &h,
					     err);
			if (r < 0) {
				bks_error_prepend(err,
						  "backing file %s: ", b->path);
				goto out;
			}
			b->vhd_block = h.block_size;
		}
		break;
	}
	r = 0;
out:
	if (fd >= 0)
		close(fd);
	bks_chain_spec_free(&spec);
	return r;
}

static int create_qcow2(int fd, const struct backing *b, uint64_t size,
			struct bks_error *err)
{
	struct bks_qcow2_create c = {
	    .size = size,
	    .refcount_order = BKS_QCOW2_DEFAULT_REFCOUNT_ORDER,
	};
	unsigned char *buf = NULL;
	size_t len = 0;
	int r;

	if (b) {
		if (b->kind == BK_VHD)
			return bks_error_setmsg(err, EINVAL,
						"a qcow2 image's backing file "
						"is qcow2 or raw, not vhd (%s)",
						b->path);
		if (strlen(b->path) > BKS_QCOW2_MAX_BACKING_NAME)
			return bks_error_setmsg(err, ENAMETOOLONG,
						"backing file name longer than "
						"%u bytes",
						BKS_QCOW2_MAX_BACKING_NAME);
		c.backing_file = b->path;
		c.backing_format = b->kind == BK_QCOW2 ? "qcow2" : "raw";
	}
	r = bks_qcow2_build(&c, &buf, &len, err);
	if (r < 0)
		return r;
	r = bks_image_pio(fd, true, buf, len, 0);
	if (r < 0)
		bks_error_set(err, -r, "write qcow2 metadata");
	free(buf);
	return r;
}

static int create_vhd(int fd, const struct backing *b, uint64_t size,
		      struct bks_error *err)
{
	unsigned char fb[VHD_FOOTER_SIZE], hb[VHD_HEADER_SIZE];
	unsigned char *bat = NULL, *locs = NULL;
	struct vhd_footer f;
	struct vhd_header h;
	uint64_t bat_bytes, pos;
	size_t nloc = 0;
	int r;

	if (b && b->kind != BK_VHD)
		return bks_error_setmsg(err, EINVAL,
					"a differencing VHD's parent is a VHD, "
					"not %s",
					b->path);
	if (b && size != b->size)
		return bks_error_setmsg(err, EINVAL,
					"size %llu differs from the backing "
					"file's %llu: a differencing VHD has "
					"its parent's size",
					(unsigned long long)size,
					(unsigned long long)b->size);
	if (size > VHD_MAX_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"size %llu is over the VHD limit of "
					"2040 GiB",
					(unsigned long long)size);
	if (!b)
		size = vhd_round_size(size);
	vhd_footer_new(&f, size, b ? VHD_TYPE_DIFF : VHD_TYPE_DYNAMIC);
	memset(&h, 0, sizeof(h));
	h.data_offset = UINT64_MAX;
	h.table_offset = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
	h.version = 0x00010000;
	h.block_size = b && b->vhd_block ? b->vhd_block : VHD_DEFAULT_BLOCK;
	h.max_entries = (uint32_t)((size + h.block_size - 1) / h.block_size);
	bat_bytes = vhd_bat_bytes(h.max_entries);
	pos = h.table_offset + bat_bytes;
	if (b) {
		const char *base = strrchr(b->path, '/');
		static const uint32_t codes[2] = {VHD_PLAT_W2KU, VHD_PLAT_MACX};

		/* Differencing disks keep the parent's geometry. */
		f.cylinders = b->vf.cylinders;
		f.heads = b->vf.heads;
		f.sectors_per_track = b->vf.sectors_per_track;
		memcpy(h.parent_uuid, b->vf.uuid, 16);
		h.parent_timestamp = b->vf.timestamp;
		r = vhd_parent_name_encode(h.parent_name, base + 1);
		if (r < 0) {
			r = bks_error_set(err, -r, "parent name of %s",
					  b->path);
			goto out;
		}
		locs = calloc(2, VHD_LOCATOR_MAX);
		if (!locs) {
			r = bks_error_set(err, ENOMEM, "parent locators");
			goto out;
		}
		/* Absolute locators only: the path is absolute. */
		for (unsigned int i = 0; i < 2; i++) {
			int len =
			    vhd_locator_encode(codes[i], b->path, locs + nloc,
					       2 * VHD_LOCATOR_MAX - nloc);
			uint32_t sectors;

			if (len < 0) {
				r = bks_error_set(err, -len,
						  "parent locator for %s",
						  b->path);
				goto out;
			}
			sectors = ((uint32_t)len + VHD_SECTOR - 1) / VHD_SECTOR;
			h.loc[i].code = codes[i];
			h.loc[i].space = sectors;
			h.loc[i].length = (uint32_t)len;
			h.loc[i].offset = pos;
			pos += (uint64_t)sectors * VHD_SECTOR;
			nloc += (size_t)sectors * VHD_SECTOR;
		}
	}
	vhd_footer_build(fb, &f);
	vhd_header_build(hb, &h);
	bat = malloc(bat_bytes);
	if (!bat) {
		r = bks_error_set(err, ENOMEM, "BAT");
		goto out;
	}
	memset(bat, 0xFF, bat_bytes);
	r = bks_image_pio(fd, true, fb, sizeof(fb), 0);
	if (r == 0)
		r = bks_image_pio(fd, true, hb, sizeof(hb), VHD_FOOTER_SIZE);
	if (r == 0)
		r = bks_image_pio(fd, true, bat, bat_bytes, h.table_offset);
	if (r == 0 && nloc)
		r = bks_image_pio(fd, true, locs, nloc,
				  h.table_offset + bat_bytes);
	if (r == 0)
		r = bks_image_pio(fd, true, fb, sizeof(fb), pos);
	if (r < 0)
		bks_error_set(err, -r, "write VHD metadata");
out:
	free(bat);
	free(locs);
	return r;
}

/* fsync the directory of path, so that its new entry is durable. */
static int sync_dir(const char *path, struct bks_error *err)
{
	char dir[BKS_CHAIN_STR_MAX + 1];
	const char *slash = strrchr(path, '/');
	int fd, r = 0;

	if (!slash)
		snprintf(dir, sizeof(dir), ".");
	else if (slash == path)
		snprintf(dir, sizeof(dir), "/");
	else
		snprintf(dir, sizeof(dir), "%.*s", (int)(slash - path), path);
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return bks_error_set(err, errno, "open directory %s", dir);
	if (fsync(fd) < 0)
		r = bks_error_set(err, errno, "fsync directory %s", dir);
	close(fd);
	return r;
}

int bks_image_create(const char *path, const char *format, const char *backing,
		     uint64_t size, struct bks_error *err)
{
	struct backing *b = NULL;
	bool qcow2, created = false;
	int fd = -1, r;

	if (!path || !path[0] || strlen(path) > BKS_CHAIN_STR_MAX)
		return bks_error_setmsg(err, EINVAL,
					"create: no path, or a "
					"path too long");
	if (!format ||
	    (strcmp(format, "qcow2") != 0 && strcmp(format, "vhd") != 0)) {
		r = bks_error_setmsg(err, EINVAL,
				     "format '%s': want qcow2 or vhd",
				     format ? format : "(none)");
		goto prepend;
	}
	qcow2 = strcmp(format, "qcow2") == 0;
	if (size % 512) {
		r = bks_error_setmsg(err, EINVAL,
				     "size %llu is not a multiple of 512",
				     (unsigned long long)size);
		goto prepend;
	}
	if (backing) {
		b = calloc(1, sizeof(*b));
		if (!b) {
			r = bks_error_set(err, ENOMEM, "backing");
			goto prepend;
		}
		r = read_backing(backing, b, err);
		if (r < 0)
			goto prepend;
		if (size == 0)
			size = b->size;
	}
	if (size == 0) {
		r = bks_error_setmsg(err, EINVAL, "size 0");
		goto prepend;
	}
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0) {
		r = bks_error_set(err, errno, "create %s", path);
		goto out;
	}
	created = true;
	r = qcow2 ? create_qcow2(fd, b, size, err)
		  : create_vhd(fd, b, size, err);
	if (r < 0)
		goto prepend;
	if (fsync(fd) < 0) {
		r = bks_error_set(err, errno, "fsync %s", path);
		goto out;
	}
	if (close(fd) < 0) {
		fd = -1;
		r = bks_error_set(err, errno, "close %s", path);
		goto out;
	}
	fd = -1;
	r = sync_dir(path, err);
	if (r < 0)
		bks_error_prepend(err, "create %s: ", path);
	goto out;
prepend:
	bks_error_prepend(err, "create %s: ", path);
out:
	if (fd >= 0)
		close(fd);
	if (r < 0 && created)
		unlink(path);
	free(b);
	return r;
}
