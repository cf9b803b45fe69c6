/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: blkstack-img's vhd format (helpers/img/img-vhd.c) and the
 * vhd: sink on the images it makes, cross-checked with real tools:
 *
 *   - create: dynamic and fixed images qemu-img reads at the same size
 *     (qemu-img info -f vpc), vhdiinfo names their type; refusals of bad
 *     options;
 *   - differencing (-b): vhdiinfo names the parent; data written through
 *     a vhd: chain reads back through the chain and through vhdimount
 *     (libvhdi, FUSE) identically, the parent's data where the child has
 *     none; block status says which image holds what (depth); a
 *     replaced parent (new UUID) and a changed timestamp are refused;
 *   - check: a clean image is clean; a stale footer copy, a leaked tail
 *     (an allocation a crash cut short) and a BAT entry beyond the file
 *     are found, --repair fixes the first two, and the data stays what
 *     qemu-img convert reads.
 *
 * Files live in a private directory under /var/tmp (aio needs O_DIRECT,
 * tmpfs may lack it), removed at the end.  vhdimount's FUSE mount is
 * unmounted at once; every wait for it is bounded.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/endian.h"
#include "blkstack/loop.h"
#include "blkstack/vhd-format.h"
#include "img.h"
#include "unit-util.h"

#define MiB (1ull << 20)

static char dir[256];

static void pathf(char *out, const char *name)
{
	snprintf(out, PATH_MAX, "%s/%s", dir, name);
}

/* Run a shell command, its stdout into out (size bytes); its status. */
static int run(char *out, size_t size, const char *fmt, ...)
{
	char cmd[4 * PATH_MAX];
	va_list ap;
	FILE *p;
	size_t n = 0;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	p = popen(cmd, "r");
	assert_non_null(p);
	if (out) {
		n = fread(out, 1, size - 1, p);
		out[n] = 0;
	} else {
		char sink[4096];

		while (fread(sink, 1, sizeof(sink), p) > 0)
			;
	}
	return pclose(p);
}

static int create(const char *name, uint64_t size, const char *backing,
		  const char *options, struct bks_error *err)
{
	char path[PATH_MAX], bpath[PATH_MAX];
	struct img_create_opts o = {0};

	pathf(path, name);
	o.path = path;
	o.size = size;
	o.options = options;
	if (backing) {
		pathf(bpath, backing);
		o.backing = backing;
		o.backing_path = bpath;
		o.backing_fmt = "vhd";
	}
	return img_format_vhd.create(&o, err);
}

static void must_create(const char *name, uint64_t size, const char *backing,
			const char *options)
{
	struct bks_error err = {0};

	if (create(name, size, backing, options, &err) != 0)
		fail_msg("create %s: %s", name, err.msg);
}

/* ---- a chain driven synchronously --------------------------------------- */

struct rig {
	struct bks_loop *loop;
	struct bks_chain *chain;
	int calls, result;
};

static void done(struct bks_req *req, int result)
{
	struct rig *r = req->opaque;

	r->calls++;
	r->result = result;
}

static int rig_open(struct rig *r, const char *name, bool ro,
		    struct bks_error *err)
{
	char chain[PATH_MAX + 8];

	memset(r, 0, sizeof(*r));
	assert_int_equal(bks_loop_new(&r->loop, err), 0);
	snprintf(chain, sizeof(chain), "vhd:%s/%s", dir, name);
	if (bks_chain_open(&r->chain, chain, r->loop, ro, err) != 0) {
		bks_loop_free(r->loop);
		return -1;
	}
	return 0;
}

static void rig_close(struct rig *r)
{
	bks_chain_close(r->chain);
	bks_loop_free(r->loop);
}

static int io(struct rig *r, enum bks_op op, uint64_t off, void *buf,
	      uint64_t len, struct bks_extent *ext, uint32_t next)
{
	struct iovec iov = {.iov_base = buf, .iov_len = len};
	struct bks_req req = {
	    .op = op,
	    .offset = off,
	    .len = len,
	    .iov = buf ? &iov : NULL,
	    .iovcnt = buf ? 1 : 0,
	    .done = done,
	    .opaque = r,
	    .extents = ext,
	    .extents_max = next,
	};

	r->calls = 0;
	assert_int_equal(bks_chain_submit(r->chain, &req), 0);
	for (int i = 0; r->calls == 0 && i < 10000; i++)
		assert_true(bks_loop_run_once(r->loop, 1000) >= 0);
	assert_int_equal(r->calls, 1);
	if (op == BKS_OP_BLOCK_STATUS && r->result == 0)
		return (int)req.nextents;
	return r->result;
}

/*
 * n writes of 4 KiB at once, the i-th at offs[i] filled with byte
 * 0x60 + i: several bitmap updates of one block in flight together.
 */
static void write_many(struct rig *r, const uint64_t *offs, int n)
{
	unsigned char *bufs = unit_alloc_aligned(4096 * (size_t)n);
	struct iovec iov[32];
	struct bks_req req[32];

	assert_true(n <= 32);
	assert_non_null(bufs);
	r->calls = 0;
	for (int i = 0; i < n; i++) {
		memset(bufs + 4096 * i, 0x60 + i, 4096);
		iov[i].iov_base = bufs + 4096 * i;
		iov[i].iov_len = 4096;
		req[i] = (struct bks_req){
		    .op = BKS_OP_WRITE,
		    .offset = offs[i],
		    .len = 4096,
		    .iov = &iov[i],
		    .iovcnt = 1,
		    .done = done,
		    .opaque = r,
		};
		assert_int_equal(bks_chain_submit(r->chain, &req[i]), 0);
	}
	for (int i = 0; r->calls < n && i < 10000; i++)
		assert_true(bks_loop_run_once(r->loop, 1000) >= 0);
	assert_int_equal(r->calls, n);
	assert_int_equal(r->result, 0);
	free(bufs);
}

static void fill(unsigned char *buf, size_t len, unsigned char v)
{
	memset(buf, v, len);
}

/* ---- setup -------------------------------------------------------------- */

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/var/tmp/test-img-vhd.XXXXXX");
	if (!mkdtemp(dir))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	run(NULL, 0, "rm -rf '%s'", dir);
	return 0;
}

static void need(const char *tool)
{
	char out[64];

	if (run(out, sizeof(out), "command -v %s", tool) != 0)
		skip();
}

/* ---- create and info ---------------------------------------------------- */

static void test_create_qemu_reads(void **state)
{
	char out[8192], path[PATH_MAX];
	struct img_info info;
	struct bks_error err = {0};
	int fd;

	(void)state;
	need("qemu-img");
	need("vhdiinfo");
	must_create("dyn.vhd", 4 * MiB, NULL, NULL);
	must_create("fix.vhd", 3000000, NULL, "subformat=fixed");
	must_create("small-block.vhd", 1 * MiB, NULL,
		    "subformat=dynamic,block_size=512K");

	pathf(path, "dyn.vhd");
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img info -f vpc --output=json '%s'", path),
			 0);
	assert_non_null(strstr(out, "\"virtual-size\": 4212736"));
	assert_int_equal(run(out, sizeof(out), "vhdiinfo '%s'", path), 0);
	assert_non_null(strstr(out, "Dynamic"));
	assert_non_null(strstr(out, "(4212736 bytes)"));
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(img_format_vhd.info(fd, path, &info, NULL, &err), 0);
	close(fd);
	assert_int_equal(info.virtual_size, 4212736);
	assert_string_equal(info.format, "vhd");

	pathf(path, "fix.vhd");
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img info -f vpc --output=json '%s'", path),
			 0);
	assert_non_null(strstr(out, "\"virtual-size\": 3028992"));
	assert_int_equal(run(out, sizeof(out), "vhdiinfo '%s'", path), 0);
	assert_non_null(strstr(out, "Fixed"));

	pathf(path, "small-block.vhd");
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img info -f vpc --output=json '%s'", path),
			 0);
	assert_non_null(strstr(out, "\"cluster-size\": 524288"));
}

static void test_create_refusals(void **state)
{
	struct bks_error err = {0};
	char path[PATH_MAX];

	(void)state;
	assert_int_equal(create("r1.vhd", MiB, NULL, "cluster_size=64K", &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "cluster_size"));
	assert_non_null(strstr(err.msg, "subformat, block_size"));
	assert_int_equal(create("r2.vhd", MiB, NULL, "block_size=3M", &err),
			 -EINVAL);
	assert_int_equal(create("r3.vhd", MiB, NULL, "subformat=sparse", &err),
			 -EINVAL);
	assert_int_equal(create("r4.vhd", 2041ull << 30, NULL, NULL, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "2040 GiB"));
	must_create("r5.vhd", MiB, NULL, NULL);
	assert_int_equal(create("r5.vhd", MiB, NULL, NULL, &err), -EEXIST);
	assert_int_equal(create("r6.vhd", 0, "r5.vhd", "subformat=fixed", &err),
			 -EINVAL);
	/* Nothing is left of a refused create. */
	pathf(path, "r6.vhd");
	assert_int_equal(access(path, F_OK), -1);
}

/* ---- differencing -------------------------------------------------------- */

/* What the guest sees after the writes below. */
static void expected(unsigned char *exp, uint64_t size)
{
	memset(exp, 0, size);
	memset(exp, 0x11, 4 * MiB);	    /* the parent */
	memset(exp + MiB, 0x22, 8192);	    /* child, block 0 */
	memset(exp + 3 * MiB, 0x33, 65536); /* child, block 1 */
	memset(exp + 4 * MiB, 0x44, 4096);  /* child, block 2 (tail) */
	for (int i = 0; i < 16; i++)	    /* child, block 1 again */
		memset(exp + 2 * MiB + (uint64_t)i * 65536, 0x60 + i, 4096);
}

static void test_differencing(void **state)
{
	const uint64_t size = 4212736;
	unsigned char *buf = unit_alloc_aligned(size);
	unsigned char *exp = malloc(size), *got = malloc(size);
	char out[8192], path[PATH_MAX], mnt[PATH_MAX], img[PATH_MAX + 16];
	struct bks_extent ext[16];
	struct bks_error err = {0};
	struct img_info info;
	struct rig r;
	FILE *f;
	int fd, n;

	(void)state;
	need("vhdiinfo");
	need("vhdimount");
	assert_non_null(buf);
	must_create("base.vhd", 4 * MiB, NULL, NULL);
	assert_int_equal(rig_open(&r, "base.vhd", false, &err), 0);
	fill(buf, 4 * MiB, 0x11);
	assert_int_equal(io(&r, BKS_OP_WRITE, 0, buf, 4 * MiB, NULL, 0), 0);
	rig_close(&r);

	must_create("child.vhd", 0, "base.vhd", NULL);
	pathf(path, "child.vhd");
	fd = open(path, O_RDONLY);
	assert_int_equal(img_format_vhd.info(fd, path, &info, NULL, &err), 0);
	close(fd);
	assert_string_equal(info.backing, "base.vhd");
	pathf(img, "base.vhd");
	assert_string_equal(info.backing_path, img);
	assert_int_equal(info.virtual_size, size);
	assert_int_equal(run(out, sizeof(out), "vhdiinfo '%s'", path), 0);
	assert_non_null(strstr(out, "Differential"));
	assert_non_null(strstr(out, "base.vhd"));

	/* Writes through the chain, 4 KiB-aligned (see below). */
	if (rig_open(&r, "child.vhd", false, &err) != 0)
		fail_msg("%s", err.msg);
	fill(buf, 8192, 0x22);
	assert_int_equal(io(&r, BKS_OP_WRITE, MiB, buf, 8192, NULL, 0), 0);
	fill(buf, 65536, 0x33);
	assert_int_equal(io(&r, BKS_OP_WRITE, 3 * MiB, buf, 65536, NULL, 0), 0);
	fill(buf, 4096, 0x44);
	assert_int_equal(io(&r, BKS_OP_WRITE, 4 * MiB, buf, 4096, NULL, 0), 0);
	/* Allocated now: 16 bitmap updates of block 1 in flight at once. */
	{
		uint64_t offs[16];

		for (int i = 0; i < 16; i++)
			offs[i] = 2 * MiB + (uint64_t)i * 65536;
		write_many(&r, offs, 16);
	}
	expected(exp, size);
	assert_int_equal(io(&r, BKS_OP_READ, 0, buf, size, NULL, 0), 0);
	assert_memory_equal(buf, exp, size);

	/* Block status: parent's data depth 2, the child's depth 1. */
	n = io(&r, BKS_OP_BLOCK_STATUS, 0, NULL, size, ext, 16);
	assert_true(n >= 1);
	assert_int_equal(ext[0].offset, 0);
	assert_int_equal(ext[0].length, MiB);
	assert_int_equal(ext[0].depth, 2);
	assert_int_equal(ext[0].flags, 0);
	n = io(&r, BKS_OP_BLOCK_STATUS, MiB, NULL, size - MiB, ext, 16);
	assert_true(n >= 1);
	assert_int_equal(ext[0].length, 8192);
	assert_int_equal(ext[0].depth, 1);
	/* The parent's unwritten tail: a hole of no image. */
	n = io(&r, BKS_OP_BLOCK_STATUS, 4 * MiB + 4096, NULL,
	       size - 4 * MiB - 4096, ext, 16);
	assert_int_equal(n, 1);
	assert_int_equal(ext[0].depth, 0);
	assert_int_equal(ext[0].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	rig_close(&r);

	/*
	 * libvhdi reads the same disk.  (Its 2021 release takes a sector
	 * bitmap byte by byte: from the first set bit of a byte on, it
	 * reads the byte's other sectors from the child too; the writes
	 * above are 4 KiB-aligned, whole bytes, as guests write.)
	 */
	pathf(mnt, "mnt");
	assert_int_equal(mkdir(mnt, 0700), 0);
	assert_int_equal(run(NULL, 0,
			     "cd '%s' && timeout 60 vhdimount child.vhd mnt "
			     ">/dev/null 2>&1 & for i in $(seq 100); do "
			     "[ -e '%s/vhdi2' ] && exit 0; sleep 0.1; done; "
			     "exit 1",
			     dir, mnt),
			 0);
	snprintf(img, sizeof(img), "%s/vhdi2", mnt);
	f = fopen(img, "rb");
	assert_non_null(f);
	assert_int_equal(fread(got, 1, size, f), size);
	fclose(f);
	run(NULL, 0, "fusermount3 -u '%s' || fusermount -u '%s'", mnt, mnt);
	assert_memory_equal(got, exp, size);

	free(buf);
	free(exp);
	free(got);
}

/* Rewrite the footer (both copies) of a dynamic image with poke(). */
static void poke_footer(const char *name, void (*poke)(struct vhd_footer *))
{
	unsigned char b[512];
	char path[PATH_MAX];
	struct vhd_footer f;
	struct bks_error err = {0};
	off_t end;
	int fd;

	pathf(path, name);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	end = lseek(fd, 0, SEEK_END);
	assert_int_equal(pread(fd, b, 512, end - 512), 512);
	assert_int_equal(vhd_footer_parse(b, &f, &err), 0);
	poke(&f);
	vhd_footer_build(b, &f);
	assert_int_equal(pwrite(fd, b, 512, end - 512), 512);
	assert_int_equal(pwrite(fd, b, 512, 0), 512);
	close(fd);
}

static void set_mtime(const char *name, uint64_t unix_secs)
{
	struct timespec ts[2] = {{0, UTIME_OMIT}, {(time_t)unix_secs, 0}};
	char path[PATH_MAX];

	pathf(path, name);
	assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
}

static void bump_timestamp(struct vhd_footer *f)
{
	f->timestamp++;
}

static void test_parent_refused(void **state)
{
	struct bks_error err = {0};
	char path[PATH_MAX];
	struct rig r;

	(void)state;
	must_create("p1.vhd", 2 * MiB, NULL, NULL);
	must_create("c1.vhd", 0, "p1.vhd", NULL);
	assert_int_equal(rig_open(&r, "c1.vhd", true, &err), 0);
	rig_close(&r);

	/* The same parent, its timestamp changed (and its file's mtime
	 * not the recorded time either: see below). */
	poke_footer("p1.vhd", bump_timestamp);
	set_mtime("p1.vhd", VHD_EPOCH_OFFSET + 3600);
	assert_int_not_equal(rig_open(&r, "c1.vhd", true, &err), 0);
	if (!strstr(err.msg, "timestamp") || !strstr(err.msg, "recreate"))
		fail_msg("message: %s", err.msg);

	/*
	 * tapdisk's convention: the recorded timestamp is the parent
	 * file's modification time.  Give the parent file that mtime: the
	 * child opens again.
	 */
	{
		struct vhd_footer cf;
		struct vhd_header ch;
		unsigned char hb[1024], fb[512];
		int fd;

		pathf(path, "c1.vhd");
		fd = open(path, O_RDONLY);
		assert_int_equal(pread(fd, fb, 512, 0), 512);
		assert_int_equal(vhd_footer_parse(fb, &cf, &err), 0);
		assert_int_equal(pread(fd, hb, 1024, 512), 1024);
		close(fd);
		assert_int_equal(vhd_header_parse(hb, &cf, 1 << 20, &ch, &err),
				 0);
		set_mtime("p1.vhd", ch.parent_timestamp + VHD_EPOCH_OFFSET);
		if (rig_open(&r, "c1.vhd", true, &err) != 0)
			fail_msg("mtime convention refused: %s", err.msg);
		rig_close(&r);
	}

	/* Another image under the parent's name. */
	pathf(path, "p1.vhd");
	assert_int_equal(unlink(path), 0);
	must_create("p1.vhd", 2 * MiB, NULL, NULL);
	assert_int_not_equal(rig_open(&r, "c1.vhd", true, &err), 0);
	if (!strstr(err.msg, "UUID") || !strstr(err.msg, "not its parent"))
		fail_msg("message: %s", err.msg);

	/* No parent at all: the locators tried are named. */
	assert_int_equal(unlink(path), 0);
	assert_int_not_equal(rig_open(&r, "c1.vhd", true, &err), 0);
	if (!strstr(err.msg, "no parent locator") || !strstr(err.msg, "W2ku"))
		fail_msg("message: %s", err.msg);
}

/* No locators at all: the parent's name beside the child is found. */
static void test_parent_by_name(void **state)
{
	unsigned char hb[1024], fb[512];
	char path[PATH_MAX];
	struct bks_error err = {0};
	struct vhd_footer f;
	struct vhd_header h;
	struct img_info info;
	struct rig r;
	int fd;

	(void)state;
	must_create("named-p.vhd", 2 * MiB, NULL, NULL);
	must_create("named-c.vhd", 0, "named-p.vhd", NULL);
	pathf(path, "named-c.vhd");
	fd = open(path, O_RDWR);
	assert_int_equal(pread(fd, fb, 512, 0), 512);
	assert_int_equal(vhd_footer_parse(fb, &f, &err), 0);
	assert_int_equal(pread(fd, hb, 1024, 512), 1024);
	assert_int_equal(vhd_header_parse(hb, &f, 1 << 20, &h, &err), 0);
	memset(h.loc, 0, sizeof(h.loc));
	vhd_header_build(hb, &h);
	assert_int_equal(pwrite(fd, hb, 1024, 512), 1024);
	assert_int_equal(img_format_vhd.info(fd, path, &info, NULL, &err), 0);
	close(fd);
	assert_string_equal(info.backing, "named-p.vhd");
	if (rig_open(&r, "named-c.vhd", true, &err) != 0)
		fail_msg("%s", err.msg);
	rig_close(&r);
}

/* ---- check --------------------------------------------------------------- */

static void check(const char *name, bool repair, struct img_check *c,
		  char *report, size_t size)
{
	char path[PATH_MAX];
	struct bks_error err = {0};
	FILE *rep = fmemopen(report, size, "w");
	int fd;

	pathf(path, name);
	fd = open(path, repair ? O_RDWR : O_RDONLY);
	assert_true(fd >= 0);
	assert_non_null(rep);
	if (img_format_vhd.check(fd, path, repair, rep, c, &err) != 0)
		fail_msg("check %s: %s", name, err.msg);
	fclose(rep);
	close(fd);
}

static void test_check_repair(void **state)
{
	unsigned char *buf = unit_alloc_aligned(4 * MiB);
	unsigned char b[512];
	char report[8192], path[PATH_MAX], out[256];
	struct bks_error err = {0};
	struct img_check c;
	struct stat st;
	off_t clean;
	struct rig r;
	int fd;

	(void)state;
	need("qemu-img");
	must_create("chk.vhd", 8 * MiB, NULL, NULL);
	assert_int_equal(rig_open(&r, "chk.vhd", false, &err), 0);
	fill(buf, 4 * MiB, 0x5a);
	assert_int_equal(io(&r, BKS_OP_WRITE, 2 * MiB, buf, 4 * MiB, NULL, 0),
			 0);
	rig_close(&r);
	pathf(path, "chk.vhd");
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img convert -f vpc -O raw '%s' '%s.raw'",
			     path, path),
			 0);

	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 0);
	assert_int_equal(c.leaks, 0);
	assert_int_equal(c.allocated, 2);
	assert_int_equal(c.total, 5);

	/* The new blocks' data starts on 4 KiB boundaries of the file. */
	fd = open(path, O_RDWR);
	assert_int_equal(pread(fd, b, 8, 1536), 8);
	assert_int_equal((bks_get_be32(b + 4) * 512ull + 512) % 4096, 0);
	assert_int_equal((bks_get_be32(b) * 512ull + 512) % 4096, 0);
	assert_int_equal(fstat(fd, &st), 0);
	clean = st.st_size;

	/* A stale footer copy: found, then repaired. */
	memset(b, 0, sizeof(b));
	assert_int_equal(pwrite(fd, b, 512, 0), 512);
	/* And a leaked tail: a block's worth after the last, footer moved
	 * (a crash after an allocation's first step). */
	assert_int_equal(fstat(fd, &st), 0);
	assert_int_equal(pread(fd, b, 512, st.st_size - 512), 512);
	assert_int_equal(pwrite(fd, b, 512, st.st_size - 512 + 512 + 2 * MiB),
			 512);
	close(fd);
	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 1);
	assert_int_equal(c.leaks, 1);
	assert_non_null(strstr(report, "footer copy"));
	assert_non_null(strstr(report, "Leaked space"));
	check("chk.vhd", true, &c, report, sizeof(report));
	assert_int_equal(c.corruptions_fixed, 1);
	assert_int_equal(c.leaks_fixed, 1);
	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 0);
	assert_int_equal(c.leaks, 0);
	assert_int_equal(stat(path, &st), 0);
	assert_int_equal(st.st_size, clean);
	/* The data is what it was. */
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img compare -f vpc -F raw '%s' '%s.raw'",
			     path, path),
			 0);

	/*
	 * A writer that overwrites the old footer with a new block's
	 * bitmap before writing the new footer (qemu), killed in between:
	 * the file ends with a bitmap.  The copy at 0 brings it back.
	 */
	fd = open(path, O_RDWR);
	assert_int_equal(fstat(fd, &st), 0);
	memset(b, 0xFF, sizeof(b));
	assert_int_equal(pwrite(fd, b, 512, st.st_size - 512), 512);
	close(fd);
	assert_int_not_equal(rig_open(&r, "chk.vhd", true, &err), 0);
	assert_non_null(strstr(err.msg, "footer: no \"conectix\" cookie"));
	assert_non_null(strstr(err.msg, "check --repair puts it back"));
	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 1);
	assert_non_null(strstr(report, "copy at offset 0 is valid"));
	check("chk.vhd", true, &c, report, sizeof(report));
	assert_int_equal(c.corruptions_fixed, 1);
	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 0);
	assert_int_equal(c.leaks, 0);
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img compare -f vpc -F raw '%s' '%s.raw'",
			     path, path),
			 0);

	/* A BAT entry beyond the file: check names it, open refuses. */
	fd = open(path, O_RDWR);
	bks_put_be32(b, 0x00ABCDEF);
	assert_int_equal(pwrite(fd, b, 4, 1536 + 4), 4);
	close(fd);
	check("chk.vhd", false, &c, report, sizeof(report));
	assert_int_equal(c.corruptions, 1);
	assert_non_null(strstr(report, "BAT entry 1"));
	assert_int_not_equal(rig_open(&r, "chk.vhd", true, &err), 0);
	if (!strstr(err.msg, "BAT entry 1") || !strstr(err.msg, "chk.vhd"))
		fail_msg("message: %s", err.msg);
	free(buf);
}

/*
 * A dynamic block whose bitmap has clear bits (other writers, e.g.
 * Hyper-V, set only the written sectors'): clear sectors read as zeroes
 * whatever the block's data holds; a write there sets their bits.
 */
static void test_dynamic_partial_bitmap(void **state)
{
	unsigned char *buf = unit_alloc_aligned(MiB);
	unsigned char bm[512];
	char path[PATH_MAX];
	struct bks_error err = {0};
	struct bks_extent ext[8];
	uint32_t e;
	struct rig r;
	int fd, n;

	(void)state;
	must_create("part.vhd", 4 * MiB, NULL, NULL);
	assert_int_equal(rig_open(&r, "part.vhd", false, &err), 0);
	fill(buf, MiB, 0x7e);
	assert_int_equal(io(&r, BKS_OP_WRITE, 0, buf, MiB, NULL, 0), 0);
	rig_close(&r);
	/* Clear the bits of sectors 8..15 and 100 of block 0. */
	pathf(path, "part.vhd");
	fd = open(path, O_RDWR);
	assert_int_equal(pread(fd, bm, 4, 1536), 4);
	e = bks_get_be32(bm);
	assert_int_equal(pread(fd, bm, 512, (off_t)e * 512), 512);
	assert_int_equal(bm[0], 0xFF);
	bm[1] = 0;
	bm[12] &= (unsigned char)~0x08; /* sector 100 */
	assert_int_equal(pwrite(fd, bm, 512, (off_t)e * 512), 512);
	close(fd);

	assert_int_equal(rig_open(&r, "part.vhd", false, &err), 0);
	assert_int_equal(io(&r, BKS_OP_READ, 0, buf, 64 * 512, NULL, 0), 0);
	for (int i = 0; i < 64 * 512; i++) {
		unsigned char want = (i >= 8 * 512 && i < 16 * 512) ? 0 : 0x7e;

		if (buf[i] != want)
			fail_msg("byte %d: 0x%02x, not 0x%02x", i, buf[i],
				 want);
	}
	assert_int_equal(io(&r, BKS_OP_READ, 100 * 512, buf, 512, NULL, 0), 0);
	assert_int_equal(unit_is_zero(buf, 512), 1);
	n = io(&r, BKS_OP_BLOCK_STATUS, 0, NULL, MiB, ext, 8);
	assert_true(n >= 3);
	assert_int_equal(ext[0].length, 8 * 512);
	assert_int_equal(ext[0].depth, 1);
	assert_int_equal(ext[1].length, 8 * 512);
	assert_int_equal(ext[1].flags, BKS_EXTENT_HOLE | BKS_EXTENT_ZERO);
	assert_int_equal(ext[1].depth, 0);
	/* Writing sectors 10..11 sets their bits only. */
	fill(buf, 1024, 0x3c);
	assert_int_equal(io(&r, BKS_OP_WRITE, 10 * 512, buf, 1024, NULL, 0), 0);
	rig_close(&r);
	fd = open(path, O_RDONLY);
	assert_int_equal(pread(fd, bm, 512, (off_t)e * 512), 512);
	close(fd);
	assert_int_equal(bm[1], 0x30);
	assert_int_equal(bm[12], 0xF7);
	free(buf);
}

/* The largest disk: 2040 GiB opens (a 4 MiB BAT), one more GiB does not. */
static void test_size_limit(void **state)
{
	char out[4096], path[PATH_MAX];
	struct bks_error err = {0};
	unsigned char *buf = unit_alloc_aligned(4096);
	struct rig r;

	(void)state;
	must_create("big.vhd", 2040ull << 30, NULL, NULL);
	pathf(path, "big.vhd");
	assert_int_equal(run(out, sizeof(out),
			     "qemu-img info -f vpc --output=json '%s'", path),
			 0);
	assert_non_null(strstr(out, "\"virtual-size\": 2190433320960"));
	assert_int_equal(rig_open(&r, "big.vhd", false, &err), 0);
	assert_int_equal(bks_chain_info(r.chain)->size, 2040ull << 30);
	fill(buf, 4096, 0x99);
	assert_int_equal(
	    io(&r, BKS_OP_WRITE, (2040ull << 30) - 4096, buf, 4096, NULL, 0),
	    0);
	assert_int_equal(
	    io(&r, BKS_OP_READ, (2040ull << 30) - 4096, buf, 4096, NULL, 0), 0);
	assert_int_equal(buf[0], 0x99);
	rig_close(&r);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(create("big2.vhd", 2041ull << 30, NULL, NULL, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "2040 GiB"));
	free(buf);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_create_qemu_reads),
	    cmocka_unit_test(test_create_refusals),
	    cmocka_unit_test(test_differencing),
	    cmocka_unit_test(test_parent_refused),
	    cmocka_unit_test(test_parent_by_name),
	    cmocka_unit_test(test_check_repair),
	    cmocka_unit_test(test_dynamic_partial_bitmap),
	    cmocka_unit_test(test_size_limit),
	};

	return cmocka_run_group_tests(tests, setup, teardown);
}
