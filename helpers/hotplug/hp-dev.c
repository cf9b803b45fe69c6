/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * dom0 block devices for the hotplug helper: see hp-dev.h.
 *
 * Loop fallback, attach:
 *   1. mkdtemp STATE_DIR/fuse-XXXXXX (the mountpoint).
 *   2. fork + execv nbdfuse (absolute path from a fixed list, never PATH)
 *      in its own session, stdin/stdout on /dev/null, stderr into
 *      MOUNTPOINT.log so that a failure can be explained.
 *   3. Wait for MOUNTPOINT/nbd.  nbdfuse has no readiness fd, so we poll
 *      /proc/self/mountinfo for POLLPRI (the mount table changed) and a
 *      pidfd of nbdfuse (it died), with a deadline; no sleep loop.
 *      nbdfuse connects (and learns the export size) before it mounts,
 *      so once the file is there it has the export's size.
 *   4. LOOP_CTL_GET_FREE + LOOP_CONFIGURE with LO_FLAGS_DIRECT_IO: one
 *      atomic ioctl, retried on EBUSY when another process configured the
 *      same free index first.  No LO_FLAGS_AUTOCLEAR: the device must
 *      outlive this process (the helper exits after add) and be detached
 *      only by an explicit, idempotent remove.
 *
 * Detach undoes it in reverse, each step tolerating "already gone", and
 * never touches what the record does not prove to be ours: the loop
 * device must still be backed by MOUNTPOINT/nbd, and the process
 * fuse_pid must still be nbdfuse serving MOUNTPOINT.
 */
#include <ctype.h>
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/fs.h>
#include <linux/loop.h>
#include <linux/nbd-netlink.h>
#include <linux/nbd.h>
#include <netlink/genl/ctrl.h>
#include <netlink/genl/genl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "hp-conf.h"
#include "hp-dev.h"

/* Where nbdfuse may live; PATH is never searched (we run as root). */
static const char *const nbdfuse_paths[] = {"/usr/bin/nbdfuse",
					    "/usr/local/bin/nbdfuse"};

/* How long nbdfuse gets to connect and mount. */
#define FUSE_READY_MS 10000
/* How long nbdfuse gets to exit after the unmount, then after SIGTERM. */
#define FUSE_EXIT_MS 5000
/* LOOP_CONFIGURE attempts lost to other processes before giving up. */
#define LOOP_RETRIES 64
/* Limits of dev_t (12-bit major, 20-bit minor) and of Linux pids. */
#define DEV_MAJOR_MAX 0xfffu
#define DEV_MINOR_MAX 0xfffffu
#define PID_MAX_LINUX 4194304
#define LOOP_MAJOR    7
#define NBD_MAJOR     43

/*
 * Whether "auto" picks the kernel NBD client when it is available (the
 * interface's intent).  On since the path ran on real Xen 4.17 with the
 * nbd module (make check-xen: xl create, block-attach/detach, local
 * attach); the development machines themselves have no nbd module, so
 * there auto finds none and picks the loop fallback.
 */
#define HP_DEV_AUTO_PREFERS_NBD 1

const char *hp_dev_mech_name(enum hp_dev_mech mech)
{
	switch (mech) {
	case HP_DEV_NBD:
		return "nbd";
	case HP_DEV_LOOP:
		return "loop";
	case HP_DEV_AUTO:
		break;
	}
	return "auto";
}

int hp_dev_mech_parse(const char *s, enum hp_dev_mech *out)
{
	if (strcmp(s, "auto") == 0)
		*out = HP_DEV_AUTO;
	else if (strcmp(s, "nbd") == 0)
		*out = HP_DEV_NBD;
	else if (strcmp(s, "loop") == 0)
		*out = HP_DEV_LOOP;
	else
		return -EINVAL;
	return 0;
}

int hp_dev_conf_parse(const char *text, const char *name, enum hp_dev_mech *out,
		      bool *found, struct bks_error *err)
{
	unsigned int lineno;
	const char *v;
	char val[16];
	size_t len;
	int ret;

	ret = hp_conf_find(text, name, "device", &v, &len, &lineno, found, err);
	if (ret < 0 || !*found)
		return ret;
	if (len >= sizeof(val))
		return bks_error_setmsg(err, EINVAL,
					"%s:%u: unknown device mechanism (want "
					"auto, nbd or loop)",
					name, lineno);
	memcpy(val, v, len);
	val[len] = '\0';
	if (hp_dev_mech_parse(val, out) < 0) {
		bks_sanitize_line(val);
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s:%u: unknown device mechanism \"%s\" "
		    "(want auto, nbd or loop)",
		    name, lineno, val);
	}
	return 0;
}

/* Where modprobe may live; PATH is never searched. */
static const char *const modprobe_paths[] = {"/usr/sbin/modprobe",
					     "/sbin/modprobe"};

/*
 * Is the kernel NBD client there, or can it be loaded?  `modprobe -q
 * nbd`, exec'd directly (no shell), output to /dev/null: a failure only
 * means "use loop".
 */
static bool nbd_available(void)
{
	const char *exe = NULL;
	int status, nullfd;
	pid_t pid;

	if (access("/sys/module/nbd", F_OK) == 0)
		return true;
	for (size_t i = 0; i < sizeof(modprobe_paths) / sizeof(*modprobe_paths);
	     i++) {
		if (access(modprobe_paths[i], X_OK) == 0) {
			exe = modprobe_paths[i];
			break;
		}
	}
	if (!exe)
		return false;
	nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nullfd < 0)
		return false;
	pid = fork();
	if (pid == 0) {
		char *argv[] = {(char *)exe, "-q", "nbd", NULL};

		if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0 ||
		    dup2(nullfd, 2) < 0)
			_exit(127);
		execv(exe, argv);
		_exit(127);
	}
	close(nullfd);
	if (pid < 0)
		return false;
	while (waitpid(pid, &status, 0) < 0) {
		if (errno != EINTR)
			return false;
	}
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	       access("/sys/module/nbd", F_OK) == 0;
}

int hp_dev_choose(enum hp_dev_mech *out, struct bks_error *err)
{
	const char *env = getenv("BLKSTACK_DEVICE");
	const char *conf;
	enum hp_dev_mech mech = HP_DEV_AUTO;
	char *text = NULL;
	bool found;
	int ret;

	if (env) {
		if (hp_dev_mech_parse(env, &mech) < 0) {
			char shown[32];

			snprintf(shown, sizeof(shown), "%s", env);
			bks_sanitize_line(shown);
			return bks_error_setmsg(
			    err, EINVAL,
			    "BLKSTACK_DEVICE=\"%s\": unknown "
			    "device mechanism (want auto, "
			    "nbd or loop)",
			    shown);
		}
	} else {
		ret = hp_conf_read(&text, &conf, err);
		if (ret == 0)
			ret = hp_dev_conf_parse(text, conf, &mech, &found, err);
		free(text);
		if (ret < 0)
			return ret;
	}
	if (mech == HP_DEV_AUTO)
		mech = HP_DEV_AUTO_PREFERS_NBD && nbd_available() ? HP_DEV_NBD
								  : HP_DEV_LOOP;
	*out = mech;
	return 0;
}

/* ---- the record ---------------------------------------------------------- */

/* Is s a path we may write into the record (no whitespace, no controls)? */
static bool record_safe(const char *s)
{
	for (; *s; s++) {
		if ((unsigned char)*s <= ' ' || *s == 0x7f)
			return false;
	}
	return true;
}

/* "PID:STARTTIME", both decimal. */
static bool worker_token_ok(const char *v, const char *ve)
{
	const char *colon = memchr(v, ':', (size_t)(ve - v));
	bool digits = colon && colon > v && colon + 1 < ve && ve - v < 48;

	for (const char *c = v; digits && c < ve; c++)
		digits = c == colon || (*c >= '0' && *c <= '9');
	return digits;
}

int hp_dev_format(const struct hp_dev *dev, char *buf, size_t size)
{
	int n;

	if ((dev->mech != HP_DEV_LOOP && dev->mech != HP_DEV_NBD) ||
	    !record_safe(dev->path) || !record_safe(dev->fuse_dir) ||
	    dev->fuse_pid < 0)
		return -EINVAL;
	if (dev->worker[0] &&
	    !worker_token_ok(dev->worker, dev->worker + strlen(dev->worker)))
		return -EINVAL;
	n = snprintf(buf, size,
		     "mech=%s path=%s major=%u minor=%u staged=%d fuse_pid=%d "
		     "fuse_dir=%s%s%s",
		     hp_dev_mech_name(dev->mech), dev->path, dev->major,
		     dev->minor, dev->staged ? 1 : 0, dev->fuse_pid,
		     dev->fuse_dir, dev->worker[0] ? " worker=" : "",
		     dev->worker);
	if (n < 0 || (size_t)n >= size)
		return -ENAMETOOLONG;
	return n;
}

/*
 * Take "key=" at *p and return its value's extent [*v, *ve): up to the
 * next single space, or the end for the last key.
 */
static bool take_field(const char **p, const char *key, bool last,
		       const char **v, const char **ve)
{
	size_t klen = strlen(key);

	if (strncmp(*p, key, klen) != 0 || (*p)[klen] != '=')
		return false;
	*v = *p + klen + 1;
	*ve = last ? *v + strlen(*v) : strchrnul(*v, ' ');
	if (!last && **ve != ' ')
		return false;
	*p = last ? *ve : *ve + 1;
	return true;
}

/* Decimal, no sign, no leading zeros (but "0"), at most max. */
static bool parse_uint(const char *v, const char *ve, unsigned long max,
		       unsigned long *out)
{
	unsigned long n = 0;

	if (v == ve || ve - v > 10 || (*v == '0' && ve - v > 1))
		return false;
	for (; v < ve; v++) {
		if (*v < '0' || *v > '9')
			return false;
		n = n * 10 + (unsigned long)(*v - '0');
	}
	if (n > max)
		return false;
	*out = n;
	return true;
}

/* Does [v, ve) look like prefix followed by a decimal index? */
static bool dev_path_ok(const char *v, const char *ve, const char *prefix)
{
	unsigned long idx;
	size_t plen = strlen(prefix);

	return (size_t)(ve - v) > plen && strncmp(v, prefix, plen) == 0 &&
	       parse_uint(v + plen, ve, 1u << 20, &idx);
}

/* One plain path component of [A-Za-z0-9._-], not starting with '.'. */
static bool component_ok(const char *v, const char *ve)
{
	if (v == ve || *v == '.' || ve - v > NAME_MAX)
		return false;
	for (; v < ve; v++) {
		if (!isalnum((unsigned char)*v) && *v != '.' && *v != '_' &&
		    *v != '-')
			return false;
	}
	return true;
}

int hp_dev_parse(const char *line, const char *state_dir, struct hp_dev *dev,
		 struct bks_error *err)
{
	const char *p = line, *v, *ve, *what = "mech";
	size_t slen = strlen(state_dir);
	bool has_worker;
	unsigned long n;
	struct hp_dev d;

	memset(&d, 0, sizeof(d));
	if (!take_field(&p, what = "mech", false, &v, &ve))
		goto bad;
	if ((size_t)(ve - v) == 4 && memcmp(v, "loop", 4) == 0)
		d.mech = HP_DEV_LOOP;
	else if ((size_t)(ve - v) == 3 && memcmp(v, "nbd", 3) == 0)
		d.mech = HP_DEV_NBD;
	else
		goto bad;

	if (!take_field(&p, what = "path", false, &v, &ve))
		goto bad;
	if (v != ve) {
		if (!dev_path_ok(v, ve,
				 d.mech == HP_DEV_LOOP ? "/dev/loop"
						       : "/dev/nbd") ||
		    (size_t)(ve - v) >= sizeof(d.path))
			goto bad;
		memcpy(d.path, v, (size_t)(ve - v));
	}

	if (!take_field(&p, what = "major", false, &v, &ve) ||
	    !parse_uint(v, ve, DEV_MAJOR_MAX, &n))
		goto bad;
	d.major = (unsigned int)n;
	if (!take_field(&p, what = "minor", false, &v, &ve) ||
	    !parse_uint(v, ve, DEV_MINOR_MAX, &n))
		goto bad;
	d.minor = (unsigned int)n;
	/* A device number goes with a device path, of the right major. */
	what = "major";
	if (d.path[0]) {
		if (d.major != (d.mech == HP_DEV_LOOP ? LOOP_MAJOR : NBD_MAJOR))
			goto bad;
	} else if (d.major || d.minor) {
		goto bad;
	}

	if (!take_field(&p, what = "staged", false, &v, &ve) ||
	    !parse_uint(v, ve, 1, &n))
		goto bad;
	d.staged = n == 1;

	if (!take_field(&p, what = "fuse_pid", false, &v, &ve) ||
	    !parse_uint(v, ve, PID_MAX_LINUX, &n))
		goto bad;
	d.fuse_pid = (int)n;

	has_worker = strstr(p, " worker=") != NULL;
	if (!take_field(&p, what = "fuse_dir", !has_worker, &v, &ve))
		goto bad;
	if (v != ve) {
		/* STATE_DIR/one-component, nothing else. */
		if (slen == 0 || (size_t)(ve - v) <= slen + 1 ||
		    strncmp(v, state_dir, slen) != 0 || v[slen] != '/' ||
		    !component_ok(v + slen + 1, ve) ||
		    (size_t)(ve - v) >= sizeof(d.fuse_dir))
			goto bad;
		memcpy(d.fuse_dir, v, (size_t)(ve - v));
	}
	if (has_worker) {
		if (!take_field(&p, what = "worker", true, &v, &ve) ||
		    !worker_token_ok(v, ve))
			goto bad;
		memcpy(d.worker, v, (size_t)(ve - v));
	}
	what = "fuse_pid";
	if (d.mech == HP_DEV_NBD && (d.fuse_pid || d.fuse_dir[0]))
		goto bad;
	/* A staged device is a loop device on a stage's nbdfuse. */
	what = "staged";
	if (d.staged && (d.mech != HP_DEV_LOOP || !d.path[0] || !d.fuse_pid ||
			 !d.fuse_dir[0]))
		goto bad;
	*dev = d;
	return 0;
bad:
	return bks_error_setmsg(err, EINVAL,
				"invalid device record (at field %s)", what);
}

/* ---- small helpers ------------------------------------------------------- */

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait until pidfd is readable (the process exited) or ms pass: 1/0. */
static int pidfd_wait(int pidfd, int ms)
{
	struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
	int64_t deadline = now_ms() + ms;
	int n;

	for (;;) {
		int64_t left = deadline - now_ms();

		n = poll(&pfd, 1, left > 0 ? (int)left : 0);
		if (n < 0 && errno == EINTR)
			continue;
		return n > 0;
	}
}

/* Reap pid if it is our child (it is not when detach runs elsewhere). */
static void reap(pid_t pid)
{
	while (waitpid(pid, NULL, WNOHANG) < 0 && errno == EINTR)
		;
}

/* The loop device file name's index: "/dev/loop12" -> 12. */
static const char *dev_base(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/*
 * Is /dev/loopN backed by file?  1 yes, 0 no (free, or somebody else's),
 * -errno if we cannot tell.
 */
static int loop_backed_by(const char *path, const char *file,
			  struct bks_error *err)
{
	char sys[128], *text = NULL;
	size_t len;
	int ret;

	snprintf(sys, sizeof(sys), "/sys/block/%s/loop/backing_file",
		 dev_base(path));
	ret = hp_read_file(sys, &text, PATH_MAX + 32, err);
	if (ret == -ENOENT) {
		/* No loop/ directory: the device is not configured. */
		bks_error_clear(err);
		return 0;
	}
	if (ret < 0)
		return ret;
	len = strlen(text);
	if (len && text[len - 1] == '\n')
		text[--len] = '\0';
	ret = strcmp(text, file) == 0;
	free(text);
	return ret;
}

/* ---- nbdfuse ------------------------------------------------------------- */

static const char *nbdfuse_path(void)
{
	for (size_t i = 0; i < sizeof(nbdfuse_paths) / sizeof(*nbdfuse_paths);
	     i++) {
		if (access(nbdfuse_paths[i], X_OK) == 0)
			return nbdfuse_paths[i];
	}
	return NULL;
}

/* Append up to 200 bytes of nbdfuse's log (its last words) to err. */
static void add_fuse_log(struct bks_error *err, const char *log)
{
	char buf[201];
	size_t len;
	ssize_t n;
	int fd;

	if (!err)
		return;
	fd = open(log, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0)
		return;
	buf[n] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	bks_sanitize_line(buf);
	len = strlen(err->msg);
	snprintf(err->msg + len, sizeof(err->msg) - len, " (nbdfuse: %s)", buf);
}

/*
 * Start nbdfuse on dev->fuse_dir and wait for its file.  Sets
 * dev->fuse_pid as soon as there is a process, so that the caller's
 * undo (hp_dev_detach) finds it.
 */
static int fuse_start(const char *nbd_sock, bool ro, struct hp_dev *dev,
		      const char *file, const char *log, struct bks_error *err)
{
	const char *exe = nbdfuse_path();
	int nullfd = -1, logfd = -1, mfd = -1, pidfd = -1, ret;
	char *argv[6];
	int argc = 0;
	int64_t deadline;
	pid_t pid;

	if (!exe)
		return bks_error_setmsg(err, ENOENT,
					"nbdfuse not found in /usr/bin or "
					"/usr/local/bin (Debian: libnbd-bin)");
	/* Options go before the mountpoint (fuse_check relies on it too). */
	argv[argc++] = (char *)exe;
	if (ro)
		argv[argc++] = "--readonly";
	argv[argc++] = dev->fuse_dir;
	argv[argc++] = "--unix";
	argv[argc++] = (char *)nbd_sock;
	argv[argc] = NULL;

	nullfd = open("/dev/null", O_RDWR | O_CLOEXEC);
	if (nullfd < 0) {
		ret = bks_error_set(err, errno, "open /dev/null");
		goto out;
	}
	/* New beside the new mountpoint: nothing may stand there already. */
	logfd = open(log, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
		     0600);
	if (logfd < 0) {
		ret = bks_error_set(err, errno, "create %s", log);
		goto out;
	}
	/* Opened before the fork so that the mount cannot slip past us. */
	mfd = open("/proc/self/mountinfo", O_RDONLY | O_CLOEXEC);
	if (mfd < 0) {
		ret = bks_error_set(err, errno, "open /proc/self/mountinfo");
		goto out;
	}

	pid = fork();
	if (pid < 0) {
		ret = bks_error_set(err, errno, "fork for nbdfuse");
		goto out;
	}
	if (pid == 0) {
		sigset_t all;

		/*
		 * Its own session: nbdfuse outlives us, and must not get the
		 * toolstack's signals or hold its terminal.  Only fds 0-2
		 * survive: an inherited pipe of the toolstack's kept open by
		 * nbdfuse would make it wait for us forever.
		 */
		sigemptyset(&all);
		sigprocmask(SIG_SETMASK, &all, NULL);
		setsid();
		if (dup2(nullfd, 0) < 0 || dup2(nullfd, 1) < 0 ||
		    dup2(logfd, 2) < 0)
			_exit(127);
		close_range(3, ~0u, 0);
		execv(exe, argv);
		_exit(127);
	}
	dev->fuse_pid = pid;

	pidfd = pidfd_open(pid, 0);
	if (pidfd < 0) {
		ret = bks_error_set(err, errno, "pidfd_open nbdfuse %d", pid);
		goto out;
	}
	deadline = now_ms() + FUSE_READY_MS;
	for (;;) {
		struct pollfd pfd[2] = {{.fd = mfd, .events = POLLPRI},
					{.fd = pidfd, .events = POLLIN}};
		struct stat st;
		int64_t left;
		int n;

		/*
		 * Before the mount, fuse_dir is an empty directory; after
		 * it, stat is answered by nbdfuse itself.
		 */
		if (stat(file, &st) == 0) {
			if (!S_ISREG(st.st_mode)) {
				ret = bks_error_setmsg(
				    err, EIO, "nbdfuse: %s is not a file",
				    file);
				goto out;
			}
			ret = 0;
			goto out;
		}
		if (errno != ENOENT) {
			ret = bks_error_set(err, errno, "stat %s", file);
			add_fuse_log(err, log);
			goto out;
		}
		left = deadline - now_ms();
		if (left <= 0) {
			ret = bks_error_setmsg(err, ETIMEDOUT,
					       "nbdfuse on %s: no %s after %d "
					       "ms",
					       nbd_sock, file, FUSE_READY_MS);
			add_fuse_log(err, log);
			goto out;
		}
		n = poll(pfd, 2, (int)left);
		if (n < 0 && errno != EINTR) {
			ret = bks_error_set(err, errno, "poll for nbdfuse");
			goto out;
		}
		if (n > 0 && (pfd[1].revents & POLLIN)) {
			/* Whatever it mounted, nobody serves it now. */
			ret = bks_error_setmsg(err, EIO,
					       "nbdfuse on %s exited before "
					       "serving %s",
					       nbd_sock, file);
			add_fuse_log(err, log);
			reap(pid);
			dev->fuse_pid = 0;
			goto out;
		}
	}
out:
	if (pidfd >= 0)
		close(pidfd);
	if (mfd >= 0)
		close(mfd);
	if (logfd >= 0)
		close(logfd);
	if (nullfd >= 0)
		close(nullfd);
	return ret;
}

/*
 * Is the nbdfuse the record names still running and still ours (one of
 * our nbdfuse paths, serving fuse_dir)?  If so *ours is true and *pidfd
 * refers to it, so that a recycled pid can never be signalled.
 */
static int fuse_check(const struct hp_dev *dev, int *pidfd, bool *ours)
{
	char proc[64], *cmd = NULL, *arg;
	bool exe_ok = false;
	int fd;

	*ours = false;
	*pidfd = -1;
	if (dev->fuse_pid <= 0 || !dev->fuse_dir[0])
		return 0;
	/* The pidfd first: whatever we then read is this process's. */
	fd = pidfd_open(dev->fuse_pid, 0);
	if (fd < 0)
		return errno == ESRCH ? 0 : -errno;
	snprintf(proc, sizeof(proc), "/proc/%d/cmdline", dev->fuse_pid);
	if (hp_read_file(proc, &cmd, 2 * PATH_MAX + 64, NULL) < 0)
		goto not_ours;
	/* cmdline is NUL-separated; read_small_file stopped at the end. */
	for (size_t i = 0; i < sizeof(nbdfuse_paths) / sizeof(*nbdfuse_paths);
	     i++) {
		if (strcmp(cmd, nbdfuse_paths[i]) == 0)
			exe_ok = true;
	}
	/* argv[1] is the mountpoint, or "--readonly" and then it. */
	arg = cmd + strlen(cmd) + 1;
	if (strcmp(arg, "--readonly") == 0)
		arg += strlen(arg) + 1;
	if (!exe_ok || strcmp(arg, dev->fuse_dir) != 0)
		goto not_ours;
	/* Still the same process after we read its command line? */
	if (pidfd_wait(fd, 0))
		goto not_ours;
	free(cmd);
	*ours = true;
	*pidfd = fd;
	return 0;
not_ours:
	free(cmd);
	close(fd);
	return 0;
}

/* ---- loop ---------------------------------------------------------------- */

static int loop_attach(const char *file, bool ro, struct hp_dev *dev,
		       struct bks_error *err)
{
	int ctl = -1, backing = -1, lfd = -1, ret;
	struct loop_config cfg;
	struct stat st;
	int i;

	ctl = open("/dev/loop-control", O_RDWR | O_CLOEXEC);
	if (ctl < 0) {
		ret = bks_error_set(err, errno, "open /dev/loop-control");
		goto out;
	}
	backing = open(file, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
	if (backing < 0) {
		ret = bks_error_set(err, errno, "open %s", file);
		goto out;
	}
	memset(&cfg, 0, sizeof(cfg));
	cfg.fd = (unsigned int)backing;
	cfg.info.lo_flags = LO_FLAGS_DIRECT_IO | (ro ? LO_FLAGS_READ_ONLY : 0);
	/* Informational only (64 bytes, may be cut): sysfs has the path. */
	memcpy(cfg.info.lo_file_name, file,
	       strnlen(file, sizeof(cfg.info.lo_file_name) - 1));

	for (i = 0; i < LOOP_RETRIES; i++) {
		int idx = ioctl(ctl, LOOP_CTL_GET_FREE);

		if (idx < 0) {
			ret = bks_error_set(err, errno,
					    "LOOP_CTL_GET_FREE on "
					    "/dev/loop-control");
			goto out;
		}
		snprintf(dev->path, sizeof(dev->path), "/dev/loop%d", idx);
		lfd = open(dev->path, (ro ? O_RDONLY : O_RDWR) | O_CLOEXEC);
		if (lfd < 0) {
			ret = bks_error_set(err, errno, "open %s", dev->path);
			dev->path[0] = '\0';
			goto out;
		}
		if (ioctl(lfd, LOOP_CONFIGURE, &cfg) == 0)
			break;
		ret = -errno;
		close(lfd);
		lfd = -1;
		/* EBUSY: another process configured it between the calls. */
		if (ret != -EBUSY) {
			bks_error_set(err, -ret, "LOOP_CONFIGURE %s on %s",
				      dev->path, file);
			dev->path[0] = '\0';
			goto out;
		}
	}
	if (lfd < 0) {
		ret = bks_error_setmsg(err, EBUSY,
				       "no free loop device after %d tries",
				       LOOP_RETRIES);
		dev->path[0] = '\0';
		goto out;
	}
	if (fstat(lfd, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		/* Leave no device behind: the caller has no number for it. */
		ioctl(lfd, LOOP_CLR_FD, 0);
		dev->path[0] = '\0';
		goto out;
	}
	dev->major = major(st.st_rdev);
	dev->minor = minor(st.st_rdev);
	ret = 0;
out:
	if (lfd >= 0)
		close(lfd);
	if (backing >= 0)
		close(backing);
	if (ctl >= 0)
		close(ctl);
	return ret;
}

/*
 * Flush and free the loop device, if it is still the one backed by file.
 * *flush_rc gets the flush's result (0 or -errno, err untouched: the
 * caller decides whether it matters).
 */
static int loop_detach(const struct hp_dev *dev, const char *file,
		       int *flush_rc, struct bks_error *err)
{
	struct stat st;
	int fd, ret;

	*flush_rc = 0;
	if (!dev->path[0])
		return 0;
	fd = open(dev->path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT || errno == ENXIO)
			return 0;
		return bks_error_set(err, errno, "open %s", dev->path);
	}
	/* Not the node the record names, or backed by another file: stale. */
	if (fstat(fd, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		goto out;
	}
	if (!S_ISBLK(st.st_mode) ||
	    st.st_rdev != makedev(dev->major, dev->minor)) {
		ret = 0;
		goto out;
	}
	ret = loop_backed_by(dev->path, file, err);
	if (ret <= 0)
		goto out;
	if (fsync(fd) < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
		*flush_rc = -errno;
	/*
	 * Cleared when our fd closes; if someone else (udev's probe) has it
	 * open, the kernel defers the clear to their close instead.
	 */
	if (ioctl(fd, LOOP_CLR_FD, 0) < 0 && errno != ENXIO) {
		ret = bks_error_set(err, errno, "LOOP_CLR_FD %s", dev->path);
		goto out;
	}
	ret = 0;
out:
	close(fd);
	return ret;
}

/* ---- kernel NBD ---------------------------------------------------------- */

/*
 * The NBD handshake (fixed newstyle, NBD_OPT_GO on the default export),
 * done here because the kernel takes the socket in the transmission
 * phase.  Constants from the NBD protocol (doc/proto.md).
 */
#define NBD_HS_MAGIC		   0x4e42444d41474943ull /* "NBDMAGIC" */
#define NBD_HS_OPT_MAGIC	   0x49484156454f5054ull /* "IHAVEOPT" */
#define NBD_HS_REP_MAGIC	   0x0003e889045565a9ull
#define NBD_HS_FLAG_FIXED_NEWSTYLE (1u << 0)
#define NBD_HS_FLAG_NO_ZEROES	   (1u << 1)
#define NBD_HS_OPT_GO		   7u
#define NBD_HS_REP_ACK		   1u
#define NBD_HS_REP_INFO		   3u
#define NBD_HS_REP_FLAG_ERROR	   (1u << 31)
#define NBD_HS_INFO_EXPORT	   0u
#define NBD_HS_INFO_BLOCK_SIZE	   3u
/* Longest option reply we accept (error strings are at most 4096). */
#define NBD_HS_REP_MAX 8192u
/* How long the handshake may take. */
#define NBD_HS_TIMEOUT_S 10
/* How long detach's flush may take (libxl kills the script after 40 s). */
#define NBD_FLUSH_TIMEOUT_S 15

static int nbd_detach(const struct hp_dev *dev, struct bks_error *err);

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* MSG_NOSIGNAL: a server that hangs up must not kill us with SIGPIPE. */
static int send_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Set (or with 0, clear) the socket's send and receive timeouts. */
static int sock_timeouts(int fd, int secs)
{
	struct timeval tv = {.tv_sec = secs};

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

int hp_dev_nbd_handshake(const char *nbd_sock, int *out_fd,
			 struct hp_dev_export *ex, struct bks_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	unsigned char hdr[20], req[4 + 16 + 4 + 2 + 2], *p, *rep = NULL;
	bool have_export = false;
	int fd, ret;

	*out_fd = -1;
	memset(ex, 0, sizeof(*ex));
	if (strlen(nbd_sock) >= sizeof(sa.sun_path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"NBD socket path too long: %s",
					nbd_sock);
	memcpy(sa.sun_path, nbd_sock, strlen(nbd_sock));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return bks_error_set(err, errno, "socket for %s", nbd_sock);
	/* A wedged worker must not hang the hotplug action. */
	ret = sock_timeouts(fd, NBD_HS_TIMEOUT_S);
	if (ret < 0) {
		bks_error_set(err, -ret, "set timeouts on %s", nbd_sock);
		goto out;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = bks_error_set(err, errno, "connect %s", nbd_sock);
		goto out;
	}

	/* S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
	ret = read_full(fd, hdr, 18);
	if (ret < 0) {
		bks_error_set(err, -ret, "NBD handshake on %s: read greeting",
			      nbd_sock);
		goto out;
	}
	if (bks_get_be64(hdr) != NBD_HS_MAGIC ||
	    bks_get_be64(hdr + 8) != NBD_HS_OPT_MAGIC ||
	    !(bks_get_be16(hdr + 16) & NBD_HS_FLAG_FIXED_NEWSTYLE)) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD handshake on %s: not a fixed "
				       "newstyle NBD server",
				       nbd_sock);
		goto out;
	}

	/*
	 * C: client flags (fixed newstyle, and no zeroes if offered), then
	 * NBD_OPT_GO on the default export "" with one information request,
	 * the block size constraints.
	 */
	p = bks_put_be32(req,
			 NBD_HS_FLAG_FIXED_NEWSTYLE |
			     (bks_get_be16(hdr + 16) & NBD_HS_FLAG_NO_ZEROES));
	p = bks_put_be64(p, NBD_HS_OPT_MAGIC);
	p = bks_put_be32(p, NBD_HS_OPT_GO);
	p = bks_put_be32(p, 4 + 2 + 2); /* name length, requests, one request */
	p = bks_put_be32(p, 0);		/* the name: empty */
	p = bks_put_be16(p, 1);
	p = bks_put_be16(p, NBD_HS_INFO_BLOCK_SIZE);
	ret = send_full(fd, req, (size_t)(p - req));
	if (ret < 0) {
		bks_error_set(err, -ret, "NBD handshake on %s: send NBD_OPT_GO",
			      nbd_sock);
		goto out;
	}

	rep = malloc(NBD_HS_REP_MAX + 1);
	if (!rep) {
		ret =
		    bks_error_set(err, ENOMEM, "NBD handshake on %s", nbd_sock);
		goto out;
	}
	for (;;) {
		uint32_t type, len;

		/* S: magic, option, reply type, length, data. */
		ret = read_full(fd, hdr, 20);
		if (ret < 0) {
			bks_error_set(err, -ret,
				      "NBD handshake on %s: read reply",
				      nbd_sock);
			goto out;
		}
		type = bks_get_be32(hdr + 12);
		len = bks_get_be32(hdr + 16);
		if (bks_get_be64(hdr) != NBD_HS_REP_MAGIC ||
		    bks_get_be32(hdr + 8) != NBD_HS_OPT_GO ||
		    len > NBD_HS_REP_MAX) {
			ret = bks_error_setmsg(err, EPROTO,
					       "NBD handshake on %s: bad "
					       "option reply",
					       nbd_sock);
			goto out;
		}
		ret = read_full(fd, rep, len);
		if (ret < 0) {
			bks_error_set(err, -ret,
				      "NBD handshake on %s: read reply data",
				      nbd_sock);
			goto out;
		}
		if (type & NBD_HS_REP_FLAG_ERROR) {
			rep[len] = '\0';
			bks_sanitize_line((char *)rep);
			ret = bks_error_setmsg(err, EIO,
					       "NBD handshake on %s: server "
					       "refused NBD_OPT_GO (error "
					       "%#x): %.200s",
					       nbd_sock, type, (char *)rep);
			goto out;
		}
		if (type == NBD_HS_REP_ACK)
			break;
		if (type != NBD_HS_REP_INFO || len < 2)
			continue; /* unknown replies may be skipped */
		if (bks_get_be16(rep) == NBD_HS_INFO_EXPORT && len == 12) {
			ex->size = bks_get_be64(rep + 2);
			ex->flags = bks_get_be16(rep + 10);
			have_export = true;
		} else if (bks_get_be16(rep) == NBD_HS_INFO_BLOCK_SIZE &&
			   len == 14) {
			ex->min_block = bks_get_be32(rep + 2);
		}
	}
	if (!have_export) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD handshake on %s: no export "
				       "information before the ACK",
				       nbd_sock);
		goto out;
	}
	/* The kernel would read with the socket's timeouts: clear them. */
	ret = sock_timeouts(fd, 0);
	if (ret < 0) {
		bks_error_set(err, -ret, "clear timeouts on %s", nbd_sock);
		goto out;
	}
	*out_fd = fd;
	fd = -1;
	ret = 0;
out:
	free(rep);
	if (fd >= 0)
		close(fd);
	return ret;
}

/* A generic netlink socket and the "nbd" family's id. */
static int nbd_nl_open(struct nl_sock **out, int *family, struct bks_error *err)
{
	struct nl_sock *sk;
	int ret;

	*out = NULL;
	sk = nl_socket_alloc();
	if (!sk)
		return bks_error_set(err, ENOMEM, "netlink socket");
	ret = genl_connect(sk);
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "generic netlink connect: %s",
				       nl_geterror(ret));
		goto fail;
	}
	*family = genl_ctrl_resolve(sk, NBD_GENL_FAMILY_NAME);
	if (*family < 0) {
		ret = bks_error_setmsg(err, ENODEV,
				       "generic netlink family \"%s\": %s (is "
				       "the nbd kernel module loaded?)",
				       NBD_GENL_FAMILY_NAME,
				       nl_geterror(*family));
		goto fail;
	}
	*out = sk;
	return 0;
fail:
	nl_socket_free(sk);
	return ret;
}

/* NL_CB_VALID for NBD_CMD_CONNECT: the reply carries NBD_ATTR_INDEX. */
static int nbd_connect_reply_cb(struct nl_msg *msg, void *arg)
{
	struct genlmsghdr *gh = nlmsg_data(nlmsg_hdr(msg));
	struct nlattr *attrs[NBD_ATTR_MAX + 1];
	int64_t *index = arg;

	if (nla_parse(attrs, NBD_ATTR_MAX, genlmsg_attrdata(gh, 0),
		      genlmsg_attrlen(gh, 0), NULL) == 0 &&
	    attrs[NBD_ATTR_INDEX])
		*index = nla_get_u32(attrs[NBD_ATTR_INDEX]);
	return NL_OK;
}

static int nbd_attach(const char *nbd_sock, bool ro, struct hp_dev *dev,
		      struct bks_error *err)
{
	struct nlattr *socks, *item;
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	struct hp_dev_export ex;
	char backend[PATH_MAX + 16];
	int64_t index = -1;
	uint64_t bs = 512, flags;
	struct stat st;
	int family, fd = -1, ret;

	ret = hp_dev_nbd_handshake(nbd_sock, &fd, &ex, err);
	if (ret < 0)
		return ret;
	/* The kernel's logical block: 512..4096, a power of two. */
	if (ex.min_block > bs)
		bs = ex.min_block;
	if (bs > 4096 || (bs & (bs - 1))) {
		ret = bks_error_setmsg(err, EINVAL,
				       "NBD export on %s: minimum block size "
				       "%" PRIu64 " is not usable",
				       nbd_sock, bs);
		goto out;
	}
	flags = ex.flags | (ro ? NBD_FLAG_READ_ONLY : 0);

	ret = nbd_nl_open(&sk, &family, err);
	if (ret < 0)
		goto out;
	msg = nlmsg_alloc();
	if (!msg) {
		ret = bks_error_set(err, ENOMEM, "netlink message");
		goto out;
	}
	snprintf(backend, sizeof(backend), HP_DEV_NBD_BACKEND_PREFIX "%s",
		 nbd_sock);
	/*
	 * No NBD_ATTR_INDEX: the kernel picks a free device (or makes one)
	 * and says which in its reply.  TIMEOUT 0: no request timeout, since
	 * a paused worker holds requests for as long as a migration takes;
	 * the price is that requests in flight when a worker dies stay in
	 * flight (the kernel logs "Possible stuck request") until detach's
	 * disconnect fails them (nbd_detach never flushes behind them).
	 * DEAD_CONN_TIMEOUT 0: nothing reconnects a dead worker today, so
	 * new I/O fails at once rather than waits.  The backend identifier
	 * (/sys/block/nbdN/backend) lets detach recognise its device.
	 */
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0,
			 NBD_CMD_CONNECT, 0) ||
	    nla_put_u64(msg, NBD_ATTR_SIZE_BYTES, ex.size) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_BLOCK_SIZE_BYTES, bs) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_SERVER_FLAGS, flags) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_TIMEOUT, 0) < 0 ||
	    nla_put_u64(msg, NBD_ATTR_DEAD_CONN_TIMEOUT, 0) < 0 ||
	    nla_put_string(msg, NBD_ATTR_BACKEND_IDENTIFIER, backend) < 0 ||
	    !(socks = nla_nest_start(msg, NBD_ATTR_SOCKETS)) ||
	    !(item = nla_nest_start(msg, NBD_SOCK_ITEM)) ||
	    nla_put_u32(msg, NBD_SOCK_FD, (uint32_t)fd) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_CONNECT: message too large");
		goto out;
	}
	nla_nest_end(msg, item);
	nla_nest_end(msg, socks);
	nl_socket_modify_cb(sk, NL_CB_VALID, NL_CB_CUSTOM, nbd_connect_reply_cb,
			    &index);
	/* Sends, then takes the reply (the callback) and the ACK or error. */
	ret = nl_send_sync(sk, msg);
	msg = NULL; /* nl_send_sync frees it */
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "NBD_CMD_CONNECT for %s: %s",
				       nbd_sock, nl_geterror(ret));
		goto out;
	}
	if (index < 0) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD_CMD_CONNECT for %s: no device "
				       "index in the reply",
				       nbd_sock);
		goto out;
	}
	snprintf(dev->path, sizeof(dev->path), "/dev/nbd%" PRId64, index);
	if (stat(dev->path, &st) < 0) {
		ret = bks_error_set(err, errno, "stat %s", dev->path);
		goto out;
	}
	if (!S_ISBLK(st.st_mode)) {
		ret = bks_error_setmsg(err, ENOTBLK, "%s: not a block device",
				       dev->path);
		goto out;
	}
	dev->major = major(st.st_rdev);
	dev->minor = minor(st.st_rdev);
	ret = 0;
out:
	if (ret < 0 && dev->path[0]) {
		struct bks_error undo_err;

		/* Connected but unusable: disconnect what the kernel made. */
		dev->major = NBD_MAJOR;
		nbd_detach(dev, &undo_err);
		dev->path[0] = '\0';
	}
	nlmsg_free(msg);
	nl_socket_free(sk);
	/* The kernel holds its own reference to the socket. */
	if (fd >= 0)
		close(fd);
	return ret;
}

/*
 * Flush and disconnect /dev/nbdN if it is connected and ours: its
 * backend identifier is blkstack's (kernels without
 * /sys/block/nbdN/backend cannot tell, and then a connected device is
 * taken as ours), and the node is the record's major:minor.
 */
int hp_dev_sock_probe(const char *sock)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc = 0;

	if (strlen(sock) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}

/*
 * Does the server named by a /sys/block/nbdN/backend line
 * ("blkstack:SOCK\n") still accept connections?  Only a refusal or a
 * missing socket counts as gone; anything unclear counts as alive.
 */
static bool nbd_server_alive(char *backend)
{
	int rc;

	backend[strcspn(backend, "\n")] = '\0';
	rc = hp_dev_sock_probe(backend + strlen(HP_DEV_NBD_BACKEND_PREFIX));
	return rc != -ECONNREFUSED && rc != -ENOENT;
}

/*
 * fsync + BLKFLSBUF of fd in a child, waited for at most
 * NBD_FLUSH_TIMEOUT_S: a flush stuck behind a dead connection sleeps
 * uninterruptibly, and the helper must still get to the disconnect that
 * ends it.  Returns the flush's result, or -ETIMEDOUT with *child set
 * (the caller reaps it after the disconnect).
 */
static int flush_bounded(int fd, pid_t *child)
{
	int pidfd, status, ret;
	pid_t pid;

	*child = 0;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (fsync(fd) < 0 || ioctl(fd, BLKFLSBUF, 0) < 0)
			_exit(errno & 0xff ? errno & 0xff : EIO);
		_exit(0);
	}
	pidfd = pidfd_open(pid, 0);
	if (pidfd >= 0) {
		bool done = pidfd_wait(pidfd, NBD_FLUSH_TIMEOUT_S * 1000);

		close(pidfd);
		if (!done) {
			*child = pid;
			return -ETIMEDOUT;
		}
	}
	while ((ret = waitpid(pid, &status, 0)) < 0 && errno == EINTR)
		;
	if (ret < 0)
		return -errno;
	if (WIFEXITED(status))
		return -WEXITSTATUS(status);
	return -EIO;
}

static int nbd_detach(const struct hp_dev *dev, struct bks_error *err)
{
	char sys[128], *backend = NULL;
	struct nl_sock *sk = NULL;
	struct nl_msg *msg = NULL;
	unsigned long index;
	int family, fd = -1, flush_rc = 0, ret;
	pid_t flusher = 0;
	bool dead = false;
	struct stat st;

	if (!dev->path[0])
		return 0;
	index = strtoul(dev->path + strlen("/dev/nbd"), NULL, 10);
	snprintf(sys, sizeof(sys), "/sys/block/nbd%lu/pid", index);
	if (access(sys, F_OK) < 0)
		return 0; /* no such device, or not connected */
	snprintf(sys, sizeof(sys), "/sys/block/nbd%lu/backend", index);
	ret = hp_read_file(sys, &backend, PATH_MAX + 32, err);
	if (ret == 0 && strncmp(backend, HP_DEV_NBD_BACKEND_PREFIX,
				strlen(HP_DEV_NBD_BACKEND_PREFIX)) != 0)
		goto out; /* somebody else's (ret is 0) */
	if (ret < 0 && ret != -ENOENT)
		goto out;
	bks_error_clear(err);

	fd = open(dev->path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0 && fstat(fd, &st) == 0 &&
	    st.st_rdev != makedev(dev->major, dev->minor)) {
		ret = 0; /* the node is not the record's device */
		goto out;
	}
	/*
	 * With no request timeout (see nbd_attach), requests the kernel sent
	 * to a worker that then died stay in flight until the disconnect
	 * below fails them, and a flush would wait behind them for ever, in
	 * an unkillable sleep.  So no flush when the worker is gone, and a
	 * flush that does not finish in time is left to the disconnect.
	 */
	if (fd >= 0 && backend && !nbd_server_alive(backend)) {
		flush_rc = -EIO;
		dead = true;
	} else if (fd >= 0) {
		flush_rc = flush_bounded(fd, &flusher);
	}

	ret = nbd_nl_open(&sk, &family, err);
	if (ret < 0)
		goto out;
	msg = nlmsg_alloc();
	if (!msg) {
		ret = bks_error_set(err, ENOMEM, "netlink message");
		goto out;
	}
	if (!genlmsg_put(msg, NL_AUTO_PORT, NL_AUTO_SEQ, family, 0, 0,
			 NBD_CMD_DISCONNECT, 0) ||
	    nla_put_u32(msg, NBD_ATTR_INDEX, (uint32_t)index) < 0) {
		ret = bks_error_setmsg(err, EMSGSIZE,
				       "NBD_CMD_DISCONNECT: message too "
				       "large");
		goto out;
	}
	ret = nl_send_sync(sk, msg);
	msg = NULL;
	if (ret < 0) {
		ret = bks_error_setmsg(err, EIO, "NBD_CMD_DISCONNECT %s: %s",
				       dev->path, nl_geterror(ret));
		goto out;
	}
	ret = 0;
	if (dead)
		ret = bks_error_setmsg(
		    err, EIO,
		    "flush %s: its worker is gone (%s "
		    "refuses connections); requests in "
		    "flight failed",
		    dev->path, backend + strlen(HP_DEV_NBD_BACKEND_PREFIX));
	else if (flush_rc == -ETIMEDOUT)
		ret =
		    bks_error_setmsg(err, EIO,
				     "flush %s: no answer in %d s; "
				     "disconnected, requests in flight failed",
				     dev->path, NBD_FLUSH_TIMEOUT_S);
	else if (flush_rc < 0)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
out:
	nlmsg_free(msg);
	nl_socket_free(sk);
	if (fd >= 0)
		close(fd);
	if (flusher > 0) {
		/* The disconnect failed whatever it waited for: it ends. */
		while (waitpid(flusher, NULL, 0) < 0 && errno == EINTR)
			;
	}
	free(backend);
	return ret;
}

/* ---- attach and detach --------------------------------------------------- */

int hp_dev_detach(const struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8], log[PATH_MAX + 8];
	int pidfd = -1, flush_rc = 0, check_rc, ret = 0;
	bool ours;

	if (dev->mech == HP_DEV_NBD)
		return nbd_detach(dev, err);
	if (dev->mech != HP_DEV_LOOP)
		return bks_error_setmsg(err, EINVAL,
					"detach: no mechanism in the record");
	if (!dev->fuse_dir[0]) {
		/* Nothing was made: fuse_dir is the first thing attach sets. */
		return 0;
	}
	snprintf(file, sizeof(file), "%s/nbd", dev->fuse_dir);
	snprintf(log, sizeof(log), "%s.log", dev->fuse_dir);

	/*
	 * Look at nbdfuse before the teardown stops it.  If we cannot (no
	 * pidfd_open: old kernel, valgrind), go on: the unmount below makes
	 * nbdfuse exit by itself; only the wait and the kill are lost.
	 */
	check_rc = fuse_check(dev, &pidfd, &ours);
	if (check_rc < 0)
		check_rc = bks_error_set(
		    err, -check_rc, "pidfd_open nbdfuse %d", dev->fuse_pid);

	ret = loop_detach(dev, file, &flush_rc, err);
	if (ret < 0)
		goto out;
	if (dev->staged) {
		/* nbdfuse is the stage's; its death only excuses the flush. */
		if (flush_rc < 0 && ours)
			ret = bks_error_set(err, -flush_rc, "flush %s",
					    dev->path);
		else
			ret = check_rc;
		goto out;
	}

	/*
	 * Lazy unmount: works whoever still holds the file (a deferred loop
	 * clear), and nbdfuse exits when the last reference goes.  EINVAL:
	 * not mounted (any more).
	 */
	if (umount2(dev->fuse_dir, MNT_DETACH | UMOUNT_NOFOLLOW) < 0 &&
	    errno != EINVAL && errno != ENOENT) {
		ret = bks_error_set(err, errno, "unmount %s", dev->fuse_dir);
		goto out;
	}

	if (ours) {
		if (!pidfd_wait(pidfd, FUSE_EXIT_MS)) {
			pidfd_send_signal(pidfd, SIGTERM, NULL, 0);
			if (!pidfd_wait(pidfd, FUSE_EXIT_MS)) {
				pidfd_send_signal(pidfd, SIGKILL, NULL, 0);
				pidfd_wait(pidfd, FUSE_EXIT_MS);
			}
		}
		reap(dev->fuse_pid);
	}

	if (rmdir(dev->fuse_dir) < 0 && errno != ENOENT) {
		ret = bks_error_set(err, errno, "rmdir %s", dev->fuse_dir);
		goto out;
	}
	if (unlink(log) < 0 && errno != ENOENT) {
		ret = bks_error_set(err, errno, "unlink %s", log);
		goto out;
	}
	/* A dead nbdfuse cannot take a flush; that is the "gone" case. */
	if (flush_rc < 0 && ours)
		ret = bks_error_set(err, -flush_rc, "flush %s", dev->path);
	else
		ret = check_rc;
out:
	if (pidfd >= 0)
		close(pidfd);
	return ret;
}

/*
 * nbdfuse for nbd_sock on a new STATE_DIR/fuse-XXXXXX, filling the fuse
 * fields of dev (mech already set) and file (the export as a file).  On
 * failure, undoes what it did and leaves dev's fuse fields empty.
 */
static int fuse_setup(const char *nbd_sock, const char *state_dir, bool ro,
		      struct hp_dev *dev, char *file, size_t size,
		      struct bks_error *err)
{
	char log[PATH_MAX + 8];
	struct bks_error undo_err;
	int ret;

	if (!record_safe(state_dir) ||
	    strlen(state_dir) + sizeof("/fuse-XXXXXX") > sizeof(dev->fuse_dir))
		return bks_error_setmsg(err, EINVAL,
					"state directory %s: too long or "
					"contains whitespace",
					state_dir);
	snprintf(dev->fuse_dir, sizeof(dev->fuse_dir), "%s/fuse-XXXXXX",
		 state_dir);
	if (!mkdtemp(dev->fuse_dir)) {
		ret = bks_error_set(err, errno, "mkdtemp %s", dev->fuse_dir);
		dev->fuse_dir[0] = '\0';
		return ret;
	}
	snprintf(file, size, "%s/nbd", dev->fuse_dir);
	snprintf(log, sizeof(log), "%s.log", dev->fuse_dir);
	ret = fuse_start(nbd_sock, ro, dev, file, log, err);
	if (ret < 0) {
		hp_dev_detach(dev, &undo_err);
		dev->fuse_pid = 0;
		dev->fuse_dir[0] = '\0';
	}
	return ret;
}

static int loop_attach_all(const char *nbd_sock, const char *state_dir, bool ro,
			   struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8];
	struct bks_error undo_err;
	int ret;

	ret = fuse_setup(nbd_sock, state_dir, ro, dev, file, sizeof(file), err);
	if (ret < 0)
		return ret;
	ret = loop_attach(file, ro, dev, err);
	if (ret < 0) {
		/* Undo; the first error is the one worth reporting. */
		hp_dev_detach(dev, &undo_err);
		memset(dev, 0, sizeof(*dev));
		dev->mech = HP_DEV_LOOP;
	}
	return ret;
}

int hp_dev_stage(const char *nbd_sock, const char *state_dir,
		 enum hp_dev_mech mech, struct hp_dev *stage,
		 struct bks_error *err)
{
	char file[PATH_MAX + 8];

	memset(stage, 0, sizeof(*stage));
	stage->mech = mech;
	switch (mech) {
	case HP_DEV_NBD:
		return 0;
	case HP_DEV_LOOP:
		return fuse_setup(nbd_sock, state_dir, false, stage, file,
				  sizeof(file), err);
	case HP_DEV_AUTO:
		break;
	}
	return bks_error_setmsg(err, EINVAL, "stage: unknown mechanism %d",
				(int)mech);
}

bool hp_dev_staged_ok(const struct hp_dev *stage)
{
	char file[PATH_MAX + 8];
	struct stat st;
	int pidfd;
	bool ours;

	if (stage->mech != HP_DEV_LOOP || stage->staged || stage->path[0] ||
	    fuse_check(stage, &pidfd, &ours) < 0 || !ours)
		return false;
	close(pidfd);
	snprintf(file, sizeof(file), "%s/nbd", stage->fuse_dir);
	return stat(file, &st) == 0 && S_ISREG(st.st_mode);
}

int hp_dev_attach_staged(const struct hp_dev *stage, bool ro,
			 struct hp_dev *dev, struct bks_error *err)
{
	char file[PATH_MAX + 8];
	int ret;

	*dev = *stage;
	dev->staged = true;
	snprintf(file, sizeof(file), "%s/nbd", stage->fuse_dir);
	ret = loop_attach(file, ro, dev, err);
	if (ret < 0) {
		/* loop_attach leaves no device behind on failure. */
		memset(dev, 0, sizeof(*dev));
		dev->mech = HP_DEV_LOOP;
	}
	return ret;
}

/* ---- sweep --------------------------------------------------------------- */

/* The loop device backed by file, if any: fills dev's path and numbers. */
static void sweep_find_loop(const char *file, struct hp_dev *dev)
{
	struct dirent *de;
	DIR *d = opendir("/sys/block");

	if (!d)
		return;
	while ((de = readdir(d))) {
		char path[sizeof(dev->path)];
		struct bks_error ignore;
		struct stat st;

		if (strncmp(de->d_name, "loop", 4) != 0 ||
		    snprintf(path, sizeof(path), "/dev/%s", de->d_name) >=
			(int)sizeof(path) ||
		    loop_backed_by(path, file, &ignore) != 1 ||
		    stat(path, &st) < 0 || !S_ISBLK(st.st_mode))
			continue;
		strcpy(dev->path, path);
		dev->major = major(st.st_rdev);
		dev->minor = minor(st.st_rdev);
		break;
	}
	closedir(d);
}

/* The nbdfuse serving mountpoint dir, if any (fuse_check() confirms). */
static void sweep_find_fuse(struct hp_dev *dev)
{
	struct dirent *de;
	DIR *d = opendir("/proc");

	if (!d)
		return;
	while ((de = readdir(d))) {
		char *end;
		long pid = strtol(de->d_name, &end, 10);
		bool ours = false;
		int pidfd;

		if (*end || pid <= 0 || pid > PID_MAX_LINUX)
			continue;
		dev->fuse_pid = (int)pid;
		if (fuse_check(dev, &pidfd, &ours) == 0 && ours) {
			close(pidfd);
			break;
		}
		dev->fuse_pid = 0;
	}
	closedir(d);
}

/* Does any record in keep name this fuse_dir / this device node? */
static bool kept_dir(const char *dir, const struct hp_dev *const *keep,
		     size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (keep[i] && !strcmp(keep[i]->fuse_dir, dir))
			return true;
	}
	return false;
}

static bool kept_dev(const char *path, const struct hp_dev *const *keep,
		     size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (keep[i] && keep[i]->path[0] && !strcmp(keep[i]->path, path))
			return true;
	}
	return false;
}

/* Keep the first failure in *ret / *err. */
static void sweep_one(const struct hp_dev *dev, int *ret, struct bks_error *err,
		      unsigned int *found)
{
	struct bks_error one;
	int rc = hp_dev_detach(dev, &one);

	if (rc < 0 && *ret == 0) {
		*ret = rc;
		*err = one;
	}
	(*found)++;
}

/* fuse-* mountpoints (and logs) in state_dir that no record names. */
static int sweep_fuse_dirs(const char *state_dir,
			   const struct hp_dev *const *keep, size_t n,
			   unsigned int *found, struct bks_error *err)
{
	struct dirent *de;
	DIR *d;
	int ret = 0;

	d = opendir(state_dir);
	if (!d) {
		if (errno == ENOENT)
			return 0;
		return bks_error_set(err, errno, "open %s", state_dir);
	}
	while ((de = readdir(d))) {
		char file[PATH_MAX + 8];
		struct hp_dev dev;
		struct stat st;

		memset(&dev, 0, sizeof(dev));
		dev.mech = HP_DEV_LOOP;
		if (strncmp(de->d_name, "fuse-", 5) != 0 ||
		    !component_ok(de->d_name,
				  de->d_name + strlen(de->d_name)) ||
		    snprintf(dev.fuse_dir, sizeof(dev.fuse_dir), "%s/%s",
			     state_dir,
			     de->d_name) >= (int)sizeof(dev.fuse_dir))
			continue;
		/*
		 * A directory (mounted or not), or a log without one.
		 * ENOTCONN: still mounted, but its nbdfuse died.
		 */
		if (lstat(dev.fuse_dir, &st) < 0) {
			if (errno != ENOTCONN)
				continue;
		} else if (!S_ISDIR(st.st_mode)) {
			size_t len = strlen(dev.fuse_dir);

			if (S_ISREG(st.st_mode) && len > 4 &&
			    strcmp(dev.fuse_dir + len - 4, ".log") == 0) {
				dev.fuse_dir[len - 4] = '\0';
				if (lstat(dev.fuse_dir, &st) < 0 &&
				    errno == ENOENT) {
					dev.fuse_dir[len - 4] = '.';
					unlink(dev.fuse_dir);
				}
			}
			continue;
		}
		if (kept_dir(dev.fuse_dir, keep, n))
			continue;
		snprintf(file, sizeof(file), "%s/nbd", dev.fuse_dir);
		sweep_find_loop(file, &dev);
		sweep_find_fuse(&dev);
		sweep_one(&dev, &ret, err, found);
	}
	closedir(d);
	return ret;
}

/*
 * Loop devices on a state_dir/fuse-*\/nbd file, and kernel NBD devices
 * serving nbd_sock, that no record names.  A loop device is freed alone
 * (as a staged one: its nbdfuse, if any, is a record's).
 */
static int sweep_devices(const char *state_dir, const char *nbd_sock,
			 const struct hp_dev *const *keep, size_t n,
			 unsigned int *found, struct bks_error *err)
{
	size_t slen = strlen(state_dir);
	struct dirent *de;
	int ret = 0;
	DIR *d = opendir("/sys/block");

	if (!d)
		return 0;
	while ((de = readdir(d))) {
		char sys[128], *text = NULL;
		struct bks_error ignore;
		struct hp_dev dev;
		struct stat st;
		bool loop = !strncmp(de->d_name, "loop", 4);
		bool nbd = !strncmp(de->d_name, "nbd", 3);
		size_t len;

		if ((!loop && !nbd) || strlen(de->d_name) > 32)
			continue;
		memset(&dev, 0, sizeof(dev));
		snprintf(dev.path, sizeof(dev.path), "/dev/%s", de->d_name);
		if (kept_dev(dev.path, keep, n))
			continue;
		snprintf(sys, sizeof(sys), "/sys/block/%s/%s", de->d_name,
			 loop ? "loop/backing_file" : "backend");
		if (hp_read_file(sys, &text, PATH_MAX + 32, &ignore) < 0)
			continue; /* not configured, or not ours to know */
		len = strlen(text);
		if (len && text[len - 1] == '\n')
			text[--len] = '\0';
		if (loop) {
			/* STATE_DIR/fuse-XXXXXX/nbd */
			char *slash =
			    strchr(text + (len > slen ? slen + 1 : 0), '/');

			if (len <= slen || strncmp(text, state_dir, slen) ||
			    text[slen] != '/' ||
			    strncmp(text + slen + 1, "fuse-", 5) || !slash ||
			    strcmp(slash, "/nbd") ||
			    (size_t)(slash - text) >= sizeof(dev.fuse_dir)) {
				free(text);
				continue;
			}
			dev.mech = HP_DEV_LOOP;
			dev.staged = true;
			memcpy(dev.fuse_dir, text, (size_t)(slash - text));
		} else {
			if (strncmp(text, HP_DEV_NBD_BACKEND_PREFIX,
				    strlen(HP_DEV_NBD_BACKEND_PREFIX)) ||
			    strcmp(text + strlen(HP_DEV_NBD_BACKEND_PREFIX),
				   nbd_sock)) {
				free(text);
				continue;
			}
			dev.mech = HP_DEV_NBD;
		}
		free(text);
		if (stat(dev.path, &st) < 0 || !S_ISBLK(st.st_mode))
			continue;
		dev.major = major(st.st_rdev);
		dev.minor = minor(st.st_rdev);
		sweep_one(&dev, &ret, err, found);
	}
	closedir(d);
	return ret;
}

int hp_dev_sweep_unrecorded(const char *state_dir, const char *nbd_sock,
			    const struct hp_dev *const *keep, size_t n,
			    unsigned int *found, struct bks_error *err)
{
	struct bks_error second;
	int ret, rc;

	*found = 0;
	ret = sweep_fuse_dirs(state_dir, keep, n, found, err);
	rc = sweep_devices(state_dir, nbd_sock, keep, n, found,
			   ret < 0 ? &second : err);
	return ret < 0 ? ret : rc;
}

bool hp_dev_bound(const struct hp_dev *dev, const char *nbd_sock)
{
	char sys[128], file[PATH_MAX + 8], *text = NULL;
	struct bks_error ignore;
	struct stat st;
	bool ok = false;
	int pidfd;

	if (!dev->path[0] || stat(dev->path, &st) < 0 || !S_ISBLK(st.st_mode) ||
	    major(st.st_rdev) != dev->major || minor(st.st_rdev) != dev->minor)
		return false;
	if (dev->mech == HP_DEV_LOOP) {
		snprintf(file, sizeof(file), "%s/nbd", dev->fuse_dir);
		if (!dev->fuse_dir[0] ||
		    loop_backed_by(dev->path, file, &ignore) != 1 ||
		    fuse_check(dev, &pidfd, &ok) < 0 || !ok)
			return false;
		close(pidfd);
		return true;
	}
	snprintf(sys, sizeof(sys), "/sys/block/%s/pid", dev_base(dev->path));
	if (dev->mech != HP_DEV_NBD || access(sys, F_OK) < 0)
		return false;
	snprintf(sys, sizeof(sys), "/sys/block/%s/backend",
		 dev_base(dev->path));
	if (hp_read_file(sys, &text, PATH_MAX + 32, &ignore) < 0)
		return true; /* a kernel without it: connected is all we know */
	text[strcspn(text, "\n")] = '\0';
	ok = !strncmp(text, HP_DEV_NBD_BACKEND_PREFIX,
		      strlen(HP_DEV_NBD_BACKEND_PREFIX)) &&
	     !strcmp(text + strlen(HP_DEV_NBD_BACKEND_PREFIX), nbd_sock);
	free(text);
	return ok;
}

int hp_dev_attach(const char *nbd_sock, const char *state_dir, bool ro,
		  enum hp_dev_mech mech, struct hp_dev *dev,
		  struct bks_error *err)
{
	int ret;

	memset(dev, 0, sizeof(*dev));
	if (mech == HP_DEV_AUTO) {
		ret = hp_dev_choose(&mech, err);
		if (ret < 0)
			return ret;
	}
	dev->mech = mech;
	switch (mech) {
	case HP_DEV_LOOP:
		return loop_attach_all(nbd_sock, state_dir, ro, dev, err);
	case HP_DEV_NBD:
		ret = nbd_attach(nbd_sock, ro, dev, err);
		if (ret < 0) {
			memset(dev, 0, sizeof(*dev));
			dev->mech = HP_DEV_NBD;
		}
		return ret;
	case HP_DEV_AUTO:
		break;
	}
	return bks_error_setmsg(err, EINVAL, "attach: unknown mechanism %d",
				(int)mech);
}
