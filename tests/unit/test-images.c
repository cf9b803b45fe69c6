/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: what the path sinks (aio:, sync:) refuse to open, through
 * bks_chain_open() and so bks_image_open() (libblkstack/image-file.c):
 *
 *   - anything but a regular file or a block device (a FIFO, a character
 *     device, a directory, a socket, a symbolic link to a FIFO), named for
 *     what it is, never as an O_DIRECT problem, and without blocking: a
 *     FIFO with no writer must not hang the opener;
 *   - an empty image, and one whose size is not a multiple of 512 bytes
 *     (which used to be rounded down or accepted as 0 bytes);
 *   - a relative path, even when it names an image in the current
 *     directory;
 *   - a missing file behind a 4000-byte path: the message keeps both the
 *     operation and the errno text.
 *
 * Each case is opened read-write and read-only, with both drivers.  Files
 * live in a private directory under $BKS_TEST_TMPDIR or /var/tmp (a disk
 * file system: aio: needs O_DIRECT), removed at the end.
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
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "blkstack/chain.h"

/*
 * A bound on every open: one that blocks (the old behaviour on a FIFO
 * with no writer) is killed by SIGALRM, which fails the test binary
 * instead of hanging it.  Generous, for valgrind.
 */
#define OPEN_BOUND_S 60

struct fx {
	char dir[PATH_MAX];
	struct bks_loop *loop;
};

static const char *const sinks[] = {"aio", "sync"};

static int setup(void **state)
{
	const char *base = getenv("BKS_TEST_TMPDIR");
	struct bks_error err = {0};
	struct fx *fx = calloc(1, sizeof(*fx));

	if (!fx)
		return -1;
	if (!base || !*base)
		base = "/var/tmp";
	snprintf(fx->dir, sizeof(fx->dir), "%s/blkstack-images-XXXXXX", base);
	if (!mkdtemp(fx->dir) || bks_loop_new(&fx->loop, &err) < 0) {
		free(fx);
		return -1;
	}
	*state = fx;
	return 0;
}

/* Remove every name in fx->dir (no subdirectories but "dir"), then it. */
static int teardown(void **state)
{
	static const char *const names[] = {
	    "fifo", "sock", "link-fifo", "dangling", "empty",
	    "odd",  "one",  "rel.img",	 "good.img",
	};
	struct fx *fx = *state;
	char path[PATH_MAX + 32];

	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s", fx->dir, names[i]);
		unlink(path);
	}
	snprintf(path, sizeof(path), "%s/dir", fx->dir);
	rmdir(path);
	rmdir(fx->dir);
	bks_loop_free(fx->loop);
	free(fx);
	return 0;
}

static void name(const struct fx *fx, const char *base, char *path, size_t size)
{
	snprintf(path, size, "%s/%s", fx->dir, base);
}

/* A file of bytes bytes. */
static void make_file(const struct fx *fx, const char *base, off_t bytes)
{
	char path[PATH_MAX + 32];
	int fd;

	name(fx, base, path, sizeof(path));
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, bytes), 0);
	close(fd);
}

/*
 * Open chain (read-only or not): it must fail with rc, and its message
 * hold want1 and want2 (if not NULL) and not avoid (if not NULL).
 */
static void refused(struct fx *fx, const char *chain, bool ro, int rc,
		    const char *want1, const char *want2, const char *avoid)
{
	struct bks_error err = {0};
	struct bks_chain *c = NULL;
	int got;

	alarm(OPEN_BOUND_S);
	got = bks_chain_open(&c, chain, fx->loop, ro, &err);
	alarm(0);
	if (got == 0)
		bks_chain_close(c);
	if (got != rc)
		fail_msg("'%s' (%s): %d, expected %d (%s)", chain,
			 ro ? "ro" : "rw", got, rc, err.msg);
	assert_null(c);
	if ((want1 && !strstr(err.msg, want1)) ||
	    (want2 && !strstr(err.msg, want2)) ||
	    (avoid && strstr(err.msg, avoid)))
		fail_msg("'%s' (%s): message '%s': wanted '%s' and '%s', "
			 "not '%s'",
			 chain, ro ? "ro" : "rw", err.msg, want1,
			 want2 ? want2 : "", avoid ? avoid : "");
}

/* Each sink, read-write and read-only, on path: refused as expected. */
static void refused_by_all(struct fx *fx, const char *path, int rc,
			   const char *want1, const char *want2,
			   const char *avoid)
{
	char chain[PATH_MAX + 64];

	for (size_t i = 0; i < sizeof(sinks) / sizeof(sinks[0]); i++) {
		for (int ro = 0; ro < 2; ro++) {
			snprintf(chain, sizeof(chain), "%s:%s", sinks[i], path);
			refused(fx, chain, ro, rc, want1, want2, avoid);
			/* Under a filter: the layer is named. */
			snprintf(chain, sizeof(chain), "log:|%s:%s", sinks[i],
				 path);
			refused(fx, chain, ro, rc, want1, want2, avoid);
		}
	}
}

/* "PATH is WHAT, not a regular file or block device". */
static void refused_type(struct fx *fx, const char *path, const char *what)
{
	char want[PATH_MAX + 128];

	snprintf(want, sizeof(want),
		 "%s is %s, not a regular file or block device", path, what);
	refused_by_all(fx, path, -EINVAL, want, "layer ", "O_DIRECT");
}

static void test_fifo_never_blocks(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 32], link[PATH_MAX + 32];

	name(fx, "fifo", path, sizeof(path));
	assert_int_equal(mkfifo(path, 0600), 0);
	/* No writer: an open(O_RDONLY) of it would wait for one forever. */
	refused_type(fx, path, "a FIFO");
	/* Through a symbolic link: what it points to is what counts. */
	name(fx, "link-fifo", link, sizeof(link));
	assert_int_equal(symlink(path, link), 0);
	refused_type(fx, link, "a FIFO");
}

static void test_other_types(void **state)
{
	struct fx *fx = *state;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char path[PATH_MAX + 32];
	int sock;

	refused_type(fx, "/dev/null", "a character device");
	name(fx, "dir", path, sizeof(path));
	assert_int_equal(mkdir(path, 0700), 0);
	refused_type(fx, path, "a directory");
	refused_type(fx, "/", "a directory");
	name(fx, "sock", path, sizeof(path));
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(sock >= 0);
	assert_int_equal(bind(sock, (struct sockaddr *)&sa, sizeof(sa)), 0);
	refused_type(fx, path, "a socket");
	close(sock);
}

static void test_missing(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 32], want[PATH_MAX + 64];

	name(fx, "dangling", path, sizeof(path));
	assert_int_equal(symlink("/nonexistent/blkstack.img", path), 0);
	snprintf(want, sizeof(want), "open %s: No such file or directory",
		 path);
	refused_by_all(fx, path, -ENOENT, want, "layer ", NULL);
}

static void test_empty_image(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 32], want[PATH_MAX + 64];

	make_file(fx, "empty", 0);
	name(fx, "empty", path, sizeof(path));
	snprintf(want, sizeof(want), "%s is empty (0 bytes)", path);
	refused_by_all(fx, path, -EINVAL, want, "layer ", NULL);
}

/* Sizes that are not a multiple of 512 are refused, never rounded. */
static void test_unaligned_image(void **state)
{
	struct fx *fx = *state;
	char path[PATH_MAX + 32], want[PATH_MAX + 128];
	struct bks_error err = {0};
	struct bks_chain *c = NULL;

	make_file(fx, "odd", 1000);
	name(fx, "odd", path, sizeof(path));
	snprintf(want, sizeof(want),
		 "%s: size 1000 bytes is not a multiple of 512 bytes", path);
	refused_by_all(fx, path, -EINVAL, want, "truncate -s 1024", NULL);
	/* Smaller than one block: once accepted as a 0-byte disk. */
	make_file(fx, "one", 100);
	name(fx, "one", path, sizeof(path));
	refused_by_all(fx, path, -EINVAL,
		       "size 100 bytes is not a multiple of 512 bytes",
		       "truncate -s 512", NULL);
	/* One block exactly opens, with its whole size, in both. */
	make_file(fx, "good.img", 512);
	name(fx, "good.img", path, sizeof(path));
	for (size_t i = 0; i < sizeof(sinks) / sizeof(sinks[0]); i++) {
		char chain[PATH_MAX + 64];

		snprintf(chain, sizeof(chain), "%s:%s", sinks[i], path);
		if (bks_chain_open(&c, chain, fx->loop, false, &err) < 0)
			fail_msg("'%s': %s", chain, err.msg);
		assert_int_equal(bks_chain_info(c)->size, 512);
		bks_chain_close(c);
	}
}

/* A relative path is refused even when it names a good image here. */
static void test_relative_path(void **state)
{
	static const char *const chains[] = {
	    "aio:rel.img",
	    "sync:rel.img",
	    "log:|sync:./rel.img",
	};
	struct fx *fx = *state;
	int cwd = open(".", O_PATH | O_CLOEXEC | O_DIRECTORY);

	assert_true(cwd >= 0);
	make_file(fx, "rel.img", 4096);
	assert_int_equal(chdir(fx->dir), 0);
	for (size_t i = 0; i < sizeof(chains) / sizeof(chains[0]); i++) {
		refused(fx, chains[i], false, -EINVAL,
			"must be an absolute path", "rel.img'", NULL);
		refused(fx, chains[i], true, -EINVAL,
			"must be an absolute path", NULL, NULL);
	}
	assert_int_equal(fchdir(cwd), 0);
	close(cwd);
}

/*
 * A missing image behind a 4000-byte path: the message is shortened in
 * the middle and keeps the layer, the operation and the errno text.
 */
static void test_long_path_message(void **state)
{
	static const char tail[] = "pp/x.img: No such file or directory";
	static char chain[4200];
	struct fx *fx = *state;
	struct bks_error err = {0};
	struct bks_chain *c = NULL;
	size_t n;

	n = (size_t)snprintf(chain, sizeof(chain),
			     "sync:/nonexistent-blkstack");
	while (n < 4000) {
		chain[n] = n % 200 == 0 ? '/' : 'p';
		n++;
	}
	memcpy(chain + n, "/x.img", 7);
	assert_int_equal(bks_chain_open(&c, chain, fx->loop, true, &err),
			 -ENOENT);
	assert_int_equal(
	    strncmp(err.msg, "layer 1 (sync): open /nonexistent-blkstack", 42),
	    0);
	assert_non_null(strstr(err.msg, "..."));
	n = strlen(err.msg);
	assert_true(n > strlen(tail));
	assert_string_equal(err.msg + n - strlen(tail), tail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_fifo_never_blocks, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_other_types, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_missing, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_empty_image, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_unaligned_image, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_relative_path, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_long_path_message, setup,
					    teardown),
	};

	return cmocka_run_group_tests_name("images", tests, NULL, NULL);
}
