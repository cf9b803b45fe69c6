/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-img's vhd format: create (fixed, dynamic, differencing with a
 * backing file), info and check (with --repair) of VHD images, on the
 * on-disk format of libblkstack/vhd-format.c.  Plain blocking I/O: a
 * command, not the worker.
 *
 * Sizes: create rounds the size up to one its CHS geometry covers exactly
 * (as qemu-img does), so that readers sizing a disk by its geometry and
 * readers using the footer's current size agree; above the geometry's
 * range (about 127 GiB) the size is rounded to a sector.  At most 2040
 * GiB (the specification's limit, below the 2 TiB a BAT can address).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/driver.h"
#include "blkstack/endian.h"
#include "blkstack/vhd-format.h"
#include "img.h"

/* Unreferenced space before a block, below this, is alignment padding. */
#define VHD_ALIGN_PAD 4096u

/* The whole of [off, off + len) or -errno. */
static int pread_all(int fd, void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t k = pread(fd, (char *)buf + done, len - done,
				  (off_t)(off + done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0)
			return -errno;
		if (k == 0)
			return -EIO;
		done += (size_t)k;
	}
	return 0;
}

static int pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t k = pwrite(fd, (const char *)buf + done, len - done,
				   (off_t)(off + done));

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return k < 0 ? -errno : -EIO;
		done += (size_t)k;
	}
	return 0;
}

static uint64_t file_size(int fd)
{
	struct stat st;

	if (fstat(fd, &st) < 0 || st.st_size < 0)
		return 0;
	return (uint64_t)st.st_size;
}

static bool vhd_probe(const unsigned char *head, size_t n, uint64_t fsize)
{
	(void)fsize;
	/* A dynamic disk starts with its footer copy; a fixed one has its
	 * footer only at the end, which probe does not see. */
	return n >= 8 && memcmp(head, "conectix", 8) == 0;
}

/* ---- reading an image ------------------------------------------------- */

struct vhd_img {
	uint64_t fsize;
	struct vhd_footer f;
	struct vhd_header h;
	bool dynamic;
	uint32_t nblocks;
	uint32_t *bat; /* host order, nblocks */
};

/*
 * Footer (at foot_off, or at the end for UINT64_MAX), header and BAT of
 * the image on fd.
 */
static int img_read_at(int fd, const char *path, struct vhd_img *v,
		       uint64_t foot_off, struct bks_error *err)
{
	unsigned char fb[VHD_FOOTER_SIZE], hb[VHD_HEADER_SIZE];
	unsigned char *bat = NULL;
	uint64_t bat_bytes;
	int r;

	memset(v, 0, sizeof(*v));
	v->fsize = file_size(fd);
	if (v->fsize < VHD_FOOTER_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"%s: %llu bytes is too small for a VHD",
					path, (unsigned long long)v->fsize);
	if (foot_off == UINT64_MAX)
		foot_off = v->fsize - VHD_FOOTER_SIZE;
	r = pread_all(fd, fb, sizeof(fb), foot_off);
	if (r < 0)
		return bks_error_set(err, -r, "%s: reading the footer", path);
	r = vhd_footer_parse(fb, &v->f, err);
	if (r < 0)
		return bks_error_prepend(err, "%s: at 0x%llx: ", path,
					 (unsigned long long)foot_off);
	if (v->f.disk_type == VHD_TYPE_FIXED) {
		if (v->f.virtual_size > v->fsize - VHD_FOOTER_SIZE)
			return bks_error_setmsg(
			    err, EINVAL,
			    "%s: fixed disk of %llu bytes in a file of only "
			    "%llu bytes of data",
			    path, (unsigned long long)v->f.virtual_size,
			    (unsigned long long)(v->fsize - VHD_FOOTER_SIZE));
		return 0;
	}
	v->dynamic = true;
	r = pread_all(fd, hb, sizeof(hb), v->f.data_offset);
	if (r < 0)
		return bks_error_set(
		    err, -r, "%s: reading the dynamic header at 0x%llx", path,
		    (unsigned long long)v->f.data_offset);
	r = vhd_header_parse(hb, &v->f, v->fsize, &v->h, err);
	if (r < 0)
		return bks_error_prepend(err, "%s: ", path);
	v->nblocks = (uint32_t)((v->f.virtual_size + v->h.block_size - 1) /
				v->h.block_size);
	bat_bytes = vhd_bat_bytes(v->h.max_entries);
	bat = malloc(bat_bytes);
	v->bat = calloc(v->nblocks, sizeof(*v->bat));
	if (!bat || !v->bat) {
		r = bks_error_set(err, ENOMEM, "%s: the BAT", path);
		goto out;
	}
	r = pread_all(fd, bat, bat_bytes, v->h.table_offset);
	if (r < 0) {
		bks_error_set(err, -r, "%s: reading the BAT", path);
		goto out;
	}
	for (uint32_t i = 0; i < v->nblocks; i++)
		v->bat[i] = bks_get_be32(bat + 4ull * i);
out:
	free(bat);
	if (r < 0) {
		free(v->bat);
		v->bat = NULL;
	}
	return r;
}

static int img_read(int fd, const char *path, struct vhd_img *v,
		    struct bks_error *err)
{
	return img_read_at(fd, path, v, UINT64_MAX, err);
}

/* The end of the metadata: the header, the BAT, the locators' data. */
static uint64_t meta_end(const struct vhd_img *v)
{
	uint64_t end = v->f.data_offset + VHD_HEADER_SIZE;
	uint64_t bat_end = v->h.table_offset + vhd_bat_bytes(v->h.max_entries);

	if (bat_end > end)
		end = bat_end;
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const struct vhd_locator *l = &v->h.loc[i];
		uint64_t e = l->offset + l->length;

		if (l->code != VHD_PLAT_NONE && e > end)
			end = (e + VHD_SECTOR - 1) / VHD_SECTOR * VHD_SECTOR;
	}
	return end;
}

/* Decode locator i into out; 0 or -errno. */
static int locator_path(int fd, const struct vhd_img *v, unsigned int i,
			char *out, size_t size, struct bks_error *err)
{
	unsigned char data[VHD_LOCATOR_MAX];
	const struct vhd_locator *l = &v->h.loc[i];
	int r = pread_all(fd, data, l->length, l->offset);

	if (r < 0)
		return bks_error_set(err, -r, "reading parent locator %u", i);
	return vhd_locator_decode(l->code, data, l->length, out, size, err);
}

/*
 * The parent: as stored (a relative locator's name, else an absolute
 * one's) and resolved (the first locator naming an existing file:
 * absolute W2ku/MacX first, then relative ones against path's
 * directory), as the vhd: sink finds it.
 */
static void find_parent(int fd, const char *path, const struct vhd_img *v,
			char *stored, char *resolved)
{
	static const uint32_t order[] = {VHD_PLAT_W2KU, VHD_PLAT_MACX,
					 VHD_PLAT_W2RU, VHD_PLAT_MACX};
	char dir[IMG_PATH_MAX], p[IMG_PATH_MAX], cand[IMG_PATH_MAX * 2];
	char *slash;

	stored[0] = resolved[0] = 0;
	snprintf(dir, sizeof(dir), "%s", path);
	slash = strrchr(dir, '/');
	if (slash)
		slash[slash == dir ? 1 : 0] = 0;
	else
		snprintf(dir, sizeof(dir), ".");
	for (unsigned int pass = 0; pass < 4; pass++) {
		for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
			if (v->h.loc[i].code != order[pass] ||
			    locator_path(fd, v, i, p, sizeof(p), NULL) < 0)
				continue;
			if ((pass == 1 && p[0] != '/') ||
			    (pass == 3 && p[0] == '/'))
				continue;
			if (p[0] != '/' || !stored[0])
				snprintf(stored, IMG_PATH_MAX, "%s", p);
			if (p[0] == '/')
				snprintf(cand, sizeof(cand), "%s", p);
			else
				snprintf(cand, sizeof(cand), "%s/%s", dir, p);
			if (!resolved[0] && realpath(cand, p))
				snprintf(resolved, IMG_PATH_MAX, "%s", p);
		}
	}
	/* Last, the parent's name beside the child, as the vhd: sink. */
	if (!resolved[0] &&
	    vhd_parent_name_decode(v->h.parent_name, p, sizeof(p)) == 0 &&
	    p[0] && !strchr(p, '/')) {
		if (!stored[0])
			snprintf(stored, IMG_PATH_MAX, "%s", p);
		snprintf(cand, sizeof(cand), "%s/%s", dir, p);
		if (realpath(cand, p))
			snprintf(resolved, IMG_PATH_MAX, "%s", p);
	}
}

/* ---- create ------------------------------------------------------------ */

static int parse_options(const char *opts, bool *fixed, uint32_t *bsize,
			 struct bks_error *err)
{
	char buf[256], *save = NULL, *kv;

	*fixed = false;
	*bsize = VHD_DEFAULT_BLOCK;
	if (!opts)
		return 0;
	if (strlen(opts) >= sizeof(buf))
		return bks_error_setmsg(err, EINVAL, "vhd: options too long");
	strcpy(buf, opts);
	for (kv = strtok_r(buf, ",", &save); kv;
	     kv = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(kv, '=');

		if (!eq)
			return bks_error_setmsg(
			    err, EINVAL,
			    "vhd: option '%s' has no value "
			    "(known: subformat, block_size)",
			    kv);
		*eq++ = 0;
		if (strcmp(kv, "subformat") == 0) {
			if (strcmp(eq, "fixed") == 0)
				*fixed = true;
			else if (strcmp(eq, "dynamic") != 0)
				return bks_error_setmsg(
				    err, EINVAL,
				    "vhd: subformat '%s' (known: dynamic, "
				    "fixed)",
				    eq);
		} else if (strcmp(kv, "block_size") == 0) {
			uint64_t b;

			if (bks_parse_size(eq, &b) < 0 || b < VHD_MIN_BLOCK ||
			    b > VHD_MAX_BLOCK || (b & (b - 1)))
				return bks_error_setmsg(
				    err, EINVAL,
				    "vhd: block_size '%s' (a power of two, "
				    "512..256M)",
				    eq);
			*bsize = (uint32_t)b;
		} else {
			return bks_error_setmsg(
			    err, EINVAL,
			    "vhd: unknown option '%s' "
			    "(known: subformat, block_size)",
			    kv);
		}
	}
	return 0;
}

/* The parent's footer, for a differencing disk. */
static int parent_footer(const char *path, struct vhd_footer *pf,
			 uint32_t *block_size, struct bks_error *err)
{
	struct vhd_img v;
	int fd = open(path, O_RDONLY | O_CLOEXEC), r;

	if (fd < 0)
		return bks_error_set(err, errno, "open backing file %s", path);
	r = img_read(fd, path, &v, err);
	free(v.bat);
	close(fd);
	*pf = v.f;
	if (block_size)
		*block_size = v.dynamic ? v.h.block_size : 0;
	return r;
}

/* The locators of a differencing disk, their data from *pos on. */
static int add_locators(const struct img_create_opts *o, struct vhd_header *h,
			unsigned char *buf, size_t size, uint64_t *pos)
{
	const char *rel = o->backing[0] != '/' ? o->backing : NULL;
	const char *base = strrchr(o->backing_path, '/');
	char dir[IMG_PATH_MAX];
	const char *cs;
	unsigned int n = 0;
	size_t used = 0;
	struct {
		uint32_t code;
		const char *path;
	} want[3];

	/* A parent in the child's directory has a relative name too. */
	snprintf(dir, sizeof(dir), "%s", o->path);
	cs = strrchr(dir, '/');
	if (!rel && base && cs &&
	    (size_t)(cs - dir) == (size_t)(base - o->backing_path) &&
	    strncmp(dir, o->backing_path, (size_t)(cs - dir)) == 0)
		rel = base + 1;
	want[n].code = VHD_PLAT_W2KU;
	want[n++].path = o->backing_path;
	if (rel) {
		want[n].code = VHD_PLAT_W2RU;
		want[n++].path = rel;
	}
	want[n].code = VHD_PLAT_MACX;
	want[n++].path = rel ? rel : o->backing_path;
	for (unsigned int i = 0; i < n; i++) {
		int len = vhd_locator_encode(want[i].code, want[i].path,
					     buf + used, size - used);
		uint32_t sectors;

		if (len < 0)
			return len;
		sectors = ((uint32_t)len + VHD_SECTOR - 1) / VHD_SECTOR;
		h->loc[i].code = want[i].code;
		/* The specification: space in sectors (tapdisk, Hyper-V
		 * write bytes for W2ku; readers accept either). */
		h->loc[i].space = sectors;
		h->loc[i].length = (uint32_t)len;
		h->loc[i].offset = *pos;
		*pos += (uint64_t)sectors * VHD_SECTOR;
		used += (size_t)sectors * VHD_SECTOR;
		if (used > size)
			return -ENAMETOOLONG;
	}
	return (int)used;
}

static int vhd_create(const struct img_create_opts *o, struct bks_error *err)
{
	unsigned char fb[VHD_FOOTER_SIZE], hb[VHD_HEADER_SIZE];
	unsigned char *bat = NULL, *locs = NULL;
	struct vhd_footer f, pf;
	struct vhd_header h;
	uint64_t size = o->size, pos, bat_bytes;
	uint32_t bsize, type, pbsize = 0;
	bool fixed, created = false;
	int fd = -1, r, nloc = 0;

	r = parse_options(o->options, &fixed, &bsize, err);
	if (r < 0)
		return r;
	type = fixed ? VHD_TYPE_FIXED : VHD_TYPE_DYNAMIC;
	if (o->backing) {
		if (fixed)
			return bks_error_setmsg(err, EINVAL,
						"vhd: a fixed disk has no "
						"backing file (-b)");
		if (o->backing_fmt && strcmp(o->backing_fmt, "vhd") != 0)
			return bks_error_setmsg(err, EINVAL,
						"vhd: backing file %s is %s; a "
						"differencing VHD's parent is "
						"a VHD",
						o->backing, o->backing_fmt);
		r = parent_footer(o->backing_path, &pf, &pbsize, err);
		if (r < 0)
			return r;
		if (size && size != pf.virtual_size)
			return bks_error_setmsg(
			    err, EINVAL,
			    "vhd: size %llu differs from the backing file's "
			    "%llu: a differencing disk has its parent's size",
			    (unsigned long long)size,
			    (unsigned long long)pf.virtual_size);
		size = pf.virtual_size;
		type = VHD_TYPE_DIFF;
		/* The parent's block size, unless asked otherwise. */
		if (pbsize && !(o->options && strstr(o->options, "block_size")))
			bsize = pbsize;
	}
	if (size == 0)
		return bks_error_setmsg(err, EINVAL, "vhd: size 0");
	if (size > VHD_MAX_SIZE)
		return bks_error_setmsg(err, EINVAL,
					"vhd: size %llu is over the VHD limit "
					"of 2040 GiB",
					(unsigned long long)size);
	if (type != VHD_TYPE_DIFF)
		size = vhd_round_size(size);
	vhd_footer_new(&f, size, type);
	if (type == VHD_TYPE_DIFF) {
		/* Differencing disks keep the parent's geometry. */
		f.cylinders = pf.cylinders;
		f.heads = pf.heads;
		f.sectors_per_track = pf.sectors_per_track;
		memcpy(f.creator_app, "bks ", 4);
	}

	fd = open(o->path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return bks_error_set(err, errno, "create %s", o->path);
	created = true;
	vhd_footer_build(fb, &f);
	if (type == VHD_TYPE_FIXED) {
		if (ftruncate(fd, (off_t)size) < 0) {
			r = bks_error_set(err, errno,
					  "%s: extend to %llu bytes", o->path,
					  (unsigned long long)size);
			goto out;
		}
		r = pwrite_all(fd, fb, sizeof(fb), size);
		goto written;
	}

	memset(&h, 0, sizeof(h));
	h.data_offset = UINT64_MAX;
	h.table_offset = VHD_FOOTER_SIZE + VHD_HEADER_SIZE;
	h.version = 0x00010000;
	h.block_size = bsize;
	h.max_entries = (uint32_t)((size + bsize - 1) / bsize);
	bat_bytes = vhd_bat_bytes(h.max_entries);
	pos = h.table_offset + bat_bytes;
	if (type == VHD_TYPE_DIFF) {
		const char *name = strrchr(o->backing_path, '/');

		locs = calloc(1, 3 * VHD_LOCATOR_MAX);
		if (!locs) {
			r = bks_error_set(err, ENOMEM, "%s", o->path);
			goto out;
		}
		memcpy(h.parent_uuid, pf.uuid, 16);
		h.parent_timestamp = pf.timestamp;
		vhd_parent_name_encode(h.parent_name,
				       name ? name + 1 : o->backing_path);
		nloc = add_locators(o, &h, locs, 3 * VHD_LOCATOR_MAX, &pos);
		if (nloc < 0) {
			r = bks_error_set(err, -nloc,
					  "%s: parent locators for %s", o->path,
					  o->backing_path);
			goto out;
		}
	}
	vhd_header_build(hb, &h);
	bat = malloc(bat_bytes);
	if (!bat) {
		r = bks_error_set(err, ENOMEM, "%s: BAT", o->path);
		goto out;
	}
	memset(bat, 0xFF, bat_bytes);
	r = pwrite_all(fd, fb, sizeof(fb), 0);
	if (r == 0)
		r = pwrite_all(fd, hb, sizeof(hb), VHD_FOOTER_SIZE);
	if (r == 0)
		r = pwrite_all(fd, bat, bat_bytes, h.table_offset);
	if (r == 0 && nloc > 0)
		r = pwrite_all(fd, locs, (size_t)nloc,
			       h.table_offset + bat_bytes);
	if (r == 0)
		r = pwrite_all(fd, fb, sizeof(fb), pos);
written:
	if (r < 0) {
		bks_error_set(err, -r, "%s: writing", o->path);
		goto out;
	}
	if (fsync(fd) < 0)
		r = bks_error_set(err, errno, "%s: fsync", o->path);
out:
	free(bat);
	free(locs);
	if (fd >= 0)
		close(fd);
	if (r < 0 && created)
		unlink(o->path);
	return r;
}

/* ---- info -------------------------------------------------------------- */

static int vhd_info(int fd, const char *path, struct img_info *out,
		    struct json_writer *j, struct bks_error *err)
{
	struct vhd_img v;
	char s[IMG_PATH_MAX], pn[5];
	uint64_t allocated = 0;
	int r;

	memset(out, 0, sizeof(*out));
	r = img_read(fd, path, &v, err);
	if (r < 0)
		goto out;
	snprintf(out->format, sizeof(out->format), "vhd");
	out->virtual_size = v.f.virtual_size;
	if (v.dynamic)
		out->cluster_size = v.h.block_size;
	if (v.f.disk_type == VHD_TYPE_DIFF) {
		find_parent(fd, path, &v, out->backing, out->backing_path);
		snprintf(out->backing_fmt, sizeof(out->backing_fmt), "vhd");
	}
	if (!j)
		goto out;
	json_kv_str(j, "subformat", vhd_type_name(v.f.disk_type));
	snprintf(s, sizeof(s), "%.4s", v.f.creator_app);
	bks_sanitize_line(s);
	json_kv_str(j, "creator_app", s);
	json_kv_str(j, "creator_os", vhd_plat_name(v.f.creator_os, pn));
	vhd_uuid_str(v.f.uuid, s);
	json_kv_str(j, "uuid", s);
	json_kv_u64(j, "timestamp", v.f.timestamp);
	json_kv_u64(j, "current_size", v.f.current_size);
	snprintf(s, sizeof(s), "%u/%u/%u", v.f.cylinders, v.f.heads,
		 v.f.sectors_per_track);
	json_kv_str(j, "geometry", s);
	if (!v.dynamic)
		goto out;
	for (uint32_t i = 0; i < v.nblocks; i++)
		allocated += v.bat[i] != VHD_BAT_UNUSED;
	json_kv_u64(j, "block_size", v.h.block_size);
	json_kv_u64(j, "max_table_entries", v.h.max_entries);
	json_kv_u64(j, "blocks_allocated", allocated);
	if (v.f.disk_type != VHD_TYPE_DIFF)
		goto out;
	vhd_uuid_str(v.h.parent_uuid, s);
	json_kv_str(j, "parent_uuid", s);
	json_kv_u64(j, "parent_timestamp", v.h.parent_timestamp);
	if (vhd_parent_name_decode(v.h.parent_name, s, sizeof(s)) == 0) {
		bks_sanitize_line(s);
		json_kv_str(j, "parent_name", s);
	}
	json_key(j, "parent_locators");
	json_arr_begin(j);
	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		const struct vhd_locator *l = &v.h.loc[i];

		if (l->code == VHD_PLAT_NONE)
			continue;
		json_obj_begin(j);
		json_kv_str(j, "platform", vhd_plat_name(l->code, pn));
		json_kv_u64(j, "offset", l->offset);
		json_kv_u64(j, "length", l->length);
		if (locator_path(fd, &v, i, s, sizeof(s), NULL) == 0) {
			bks_sanitize_line(s);
			json_kv_str(j, "path", s);
		}
		json_obj_end(j);
	}
	json_arr_end(j);
out:
	free(v.bat);
	return r;
}

/* ---- check ------------------------------------------------------------- */

struct span {
	uint64_t start, end;
	uint32_t block;
};

static int cmp_span(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->start < y->start ? -1 : x->start > y->start;
}

/* The footer at 0 of a dynamic disk: the same as the one at the end. */
static void check_footer_copy(int fd, const struct vhd_img *v, bool repair,
			      FILE *rep, struct img_check *out)
{
	unsigned char a[VHD_FOOTER_SIZE], b[VHD_FOOTER_SIZE];

	if (pread_all(fd, b, sizeof(b), v->fsize - VHD_FOOTER_SIZE) < 0)
		return;
	if (pread_all(fd, a, sizeof(a), 0) == 0 && memcmp(a, b, sizeof(a)) == 0)
		return;
	fprintf(rep, "ERROR footer copy at offset 0 is missing or differs "
		     "from the footer at the end\n");
	out->corruptions++;
	if (repair && pwrite_all(fd, b, sizeof(b), 0) == 0 && fsync(fd) == 0) {
		fprintf(rep, "Repaired footer copy at offset 0\n");
		out->corruptions_fixed++;
	}
}

static void check_bitmaps(int fd, const struct vhd_img *v, FILE *rep,
			  struct img_check *out)
{
	uint32_t bm = vhd_bitmap_bytes(v->h.block_size);
	unsigned char *buf = malloc(bm);

	if (!buf)
		return;
	for (uint32_t i = 0; i < v->nblocks; i++) {
		bool any = false;

		if (v->bat[i] == VHD_BAT_UNUSED)
			continue;
		if (pread_all(fd, buf, bm, (uint64_t)v->bat[i] * VHD_SECTOR) <
		    0) {
			fprintf(rep,
				"ERROR block %u: bitmap at sector %u "
				"unreadable\n",
				i, v->bat[i]);
			out->corruptions++;
			continue;
		}
		for (uint32_t k = 0; k < bm && !any; k++)
			any = buf[k] != 0;
		if (!any)
			fprintf(rep,
				"Block %u: allocated, no sector in use "
				"(bitmap clear)\n",
				i);
	}
	free(buf);
}

static void check_locators(int fd, const char *path, const struct vhd_img *v,
			   FILE *rep, struct img_check *out)
{
	char p[IMG_PATH_MAX], stored[IMG_PATH_MAX], resolved[IMG_PATH_MAX];
	char pn[5], a[37], b[37];
	struct bks_error e = {0};
	struct vhd_footer pf;
	struct stat st;

	for (unsigned int i = 0; i < VHD_LOCATORS; i++) {
		if (v->h.loc[i].code == VHD_PLAT_NONE)
			continue;
		if (locator_path(fd, v, i, p, sizeof(p), &e) < 0 &&
		    e.code != ENOTSUP) {
			fprintf(rep, "ERROR parent locator %u (%s): %s\n", i,
				vhd_plat_name(v->h.loc[i].code, pn), e.msg);
			out->corruptions++;
		}
	}
	find_parent(fd, path, v, stored, resolved);
	if (!resolved[0]) {
		fprintf(rep, "ERROR parent: no locator names an existing "
			     "file\n");
		out->corruptions++;
		return;
	}
	if (parent_footer(resolved, &pf, NULL, &e) < 0) {
		fprintf(rep, "ERROR parent %s: %s\n", resolved, e.msg);
		out->corruptions++;
		return;
	}
	vhd_uuid_str(pf.uuid, a);
	vhd_uuid_str(v->h.parent_uuid, b);
	if (stat(resolved, &st) < 0)
		st.st_mtime = 0;
	if (memcmp(pf.uuid, v->h.parent_uuid, 16) != 0 ||
	    !vhd_parent_time_ok(v->h.parent_timestamp, pf.timestamp,
				st.st_mtime)) {
		fprintf(rep,
			"ERROR parent %s: UUID %s timestamp %u, the child "
			"records UUID %s timestamp %u\n",
			resolved, a, pf.timestamp, b, v->h.parent_timestamp);
		out->corruptions++;
	}
}

/*
 * The footer at the end is bad (a crash of a writer that overwrites the
 * old footer before writing the new one, as qemu does): with a valid
 * copy at offset 0, the footer goes back after the last block the BAT
 * names, and what follows it (unreferenced) is cut.  Returns 0 when it
 * repaired it, -1 when it could not or was not asked to.
 */
static int restore_footer(int fd, const char *path, bool repair, FILE *rep,
			  struct img_check *out)
{
	struct bks_error e = {0};
	unsigned char fb[VHD_FOOTER_SIZE];
	uint64_t end, span;
	struct vhd_img v;
	int r = -1;

	if (img_read_at(fd, path, &v, 0, &e) < 0 || !v.dynamic)
		goto out;
	end = meta_end(&v);
	span = vhd_bitmap_bytes(v.h.block_size) + (uint64_t)v.h.block_size;
	for (uint32_t i = 0; i < v.nblocks; i++) {
		uint64_t s = (uint64_t)v.bat[i] * VHD_SECTOR;

		if (v.bat[i] == VHD_BAT_UNUSED ||
		    vhd_bat_check(i, v.bat[i], v.h.block_size, meta_end(&v),
				  v.fsize, &e) < 0)
			continue;
		if (s + span > end)
			end = s + span;
	}
	fprintf(rep,
		"ERROR footer at the end: the copy at offset 0 is valid; "
		"the footer belongs at 0x%llx\n",
		(unsigned long long)end);
	if (!repair || pread_all(fd, fb, sizeof(fb), 0) < 0 ||
	    pwrite_all(fd, fb, sizeof(fb), end) < 0 || fsync(fd) < 0 ||
	    ftruncate(fd, (off_t)(end + VHD_FOOTER_SIZE)) < 0 || fsync(fd) < 0)
		goto out;
	fprintf(rep,
		"Repaired: the footer copy written at 0x%llx, the file "
		"truncated after it\n",
		(unsigned long long)end);
	out->corruptions_fixed++;
	r = 0;
out:
	free(v.bat);
	return r;
}

static int vhd_check(int fd, const char *path, bool repair, FILE *rep,
		     struct img_check *out, struct bks_error *err)
{
	struct vhd_img v;
	struct span *sp = NULL;
	uint64_t first, data_end, last_end, span;
	uint32_t n = 0;
	int r;

	memset(out, 0, sizeof(*out));
	r = img_read(fd, path, &v, err);
	if (r < 0) {
		/* A header or footer this bad is what check reports. */
		fprintf(rep, "ERROR %s\n", err->msg);
		out->corruptions++;
		bks_error_clear(err);
		if (restore_footer(fd, path, repair, rep, out) < 0)
			return 0;
		r = img_read(fd, path, &v, err);
		if (r < 0) {
			fprintf(rep, "ERROR %s\n", err->msg);
			out->corruptions++;
			bks_error_clear(err);
			return 0;
		}
	}
	if (!v.dynamic)
		goto out;
	check_footer_copy(fd, &v, repair, rep, out);
	first = meta_end(&v);
	data_end = v.fsize - VHD_FOOTER_SIZE;
	span = vhd_bitmap_bytes(v.h.block_size) + (uint64_t)v.h.block_size;
	out->total = v.nblocks;
	sp = calloc(v.nblocks ? v.nblocks : 1, sizeof(*sp));
	if (!sp) {
		r = bks_error_set(err, ENOMEM, "%s: check", path);
		goto out;
	}
	for (uint32_t i = 0; i < v.nblocks; i++) {
		struct bks_error e = {0};

		if (v.bat[i] == VHD_BAT_UNUSED)
			continue;
		if (vhd_bat_check(i, v.bat[i], v.h.block_size, first, data_end,
				  &e) < 0) {
			fprintf(rep, "ERROR %s\n", e.msg);
			out->corruptions++;
			v.bat[i] = VHD_BAT_UNUSED;
			continue;
		}
		sp[n].start = (uint64_t)v.bat[i] * VHD_SECTOR;
		sp[n].end = sp[n].start + span;
		sp[n++].block = i;
	}
	out->allocated = n;
	qsort(sp, n, sizeof(*sp), cmp_span);
	last_end = first;
	for (uint32_t i = 0; i < n; i++) {
		if (sp[i].start < last_end && i > 0) {
			fprintf(rep,
				"ERROR block %u at 0x%llx overlaps block "
				"%u\n",
				sp[i].block, (unsigned long long)sp[i].start,
				sp[i - 1].block);
			out->corruptions++;
		} else if (sp[i].start >= last_end + VHD_ALIGN_PAD) {
			/* Less is the padding that puts a block's data on a
			 * 4 KiB boundary (the vhd: sink does so). */
			uint64_t gap = sp[i].start - last_end;

			fprintf(rep,
				"Leaked space: %llu bytes at 0x%llx "
				"(before block %u)\n",
				(unsigned long long)gap,
				(unsigned long long)last_end, sp[i].block);
			out->leaks += (gap + span - 1) / span;
		}
		if (sp[i].end > last_end)
			last_end = sp[i].end;
	}
	check_bitmaps(fd, &v, rep, out);
	if (v.f.disk_type == VHD_TYPE_DIFF)
		check_locators(fd, path, &v, rep, out);
	/* Space after the last block (an allocation a crash cut short):
	 * the footer moves back to the end of the last block. */
	if (last_end < data_end) {
		uint64_t gap = data_end - last_end, k = (gap + span - 1) / span;
		unsigned char fb[VHD_FOOTER_SIZE];

		fprintf(rep,
			"Leaked space: %llu bytes at 0x%llx (after the "
			"last block)\n",
			(unsigned long long)gap, (unsigned long long)last_end);
		out->leaks += k;
		if (repair && out->corruptions == out->corruptions_fixed &&
		    pread_all(fd, fb, sizeof(fb), data_end) == 0 &&
		    pwrite_all(fd, fb, sizeof(fb), last_end) == 0 &&
		    fsync(fd) == 0 &&
		    ftruncate(fd, (off_t)(last_end + VHD_FOOTER_SIZE)) == 0 &&
		    fsync(fd) == 0) {
			fprintf(rep,
				"Repaired: the footer moved to 0x%llx, "
				"the file truncated after it\n",
				(unsigned long long)last_end);
			out->leaks_fixed += k;
		}
	}
out:
	free(sp);
	free(v.bat);
	return r;
}

const struct img_format img_format_vhd = {
    .name = "vhd",
    .probe = vhd_probe,
    .create = vhd_create,
    .info = vhd_info,
    .check = vhd_check,
};
