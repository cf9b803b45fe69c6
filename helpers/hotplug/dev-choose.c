/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Which mechanism makes the dom0 device: $BLKSTACK_DEVICE, else the
 * "device" key of /etc/blkstack.conf, else auto, which takes the kernel
 * NBD client where its module is (or loads), else the worker's own FUSE
 * file where it outlives a worker's crash, else the loop fallback.  See
 * hp_dev_choose() in hp-dev.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "conf.h"
#include "hp-dev.h"
#include "worker-run.h"

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
	case HP_DEV_FUSE:
		return "fuse";
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
	else if (strcmp(s, "fuse") == 0)
		*out = HP_DEV_FUSE;
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

	ret = conf_find(text, name, "device", &v, &len, &lineno, found, err);
	if (ret < 0 || !*found)
		return ret;
	if (len >= sizeof(val))
		return bks_error_setmsg(err, EINVAL,
					"%s:%u: unknown device mechanism (want "
					"auto, nbd, fuse or loop)",
					name, lineno);
	memcpy(val, v, len);
	val[len] = '\0';
	if (hp_dev_mech_parse(val, out) < 0) {
		bks_sanitize_line(val);
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s:%u: unknown device mechanism \"%s\" "
		    "(want auto, nbd, fuse or loop)",
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
	if (child_wait(pid, &status) < 0)
		return false;
	return WIFEXITED(status) && WEXITSTATUS(status) == 0 &&
	       access("/sys/module/nbd", F_OK) == 0;
}

bool hp_dev_fuse_resilient(const char *release, bool supervised)
{
	unsigned long maj, min;
	char *end;

	if (!supervised)
		return false;
	maj = strtoul(release, &end, 10);
	if (end == release || *end != '.')
		return false;
	min = strtoul(end + 1, &end, 10);
	/* FUSE_HAS_RESEND (FUSE_NOTIFY_RESEND) is in Linux 6.9. */
	return maj > 6 || (maj == 6 && min >= 9);
}

/* Does the worker's FUSE file outlive a crash here (hp_dev_choose())? */
static bool fuse_resilient(void)
{
	struct bks_error ignore;
	struct utsname u;
	bool supervised;

	if (uname(&u) < 0 || worker_conf_supervise(&supervised, &ignore) < 0)
		return false;
	return hp_dev_fuse_resilient(u.release, supervised);
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
			    "nbd, fuse or loop)",
			    shown);
		}
	} else {
		ret = conf_read(&text, &conf, err);
		if (ret == 0)
			ret = hp_dev_conf_parse(text, conf, &mech, &found, err);
		free(text);
		if (ret < 0)
			return ret;
	}
	if (mech == HP_DEV_AUTO)
		mech = HP_DEV_AUTO_PREFERS_NBD && nbd_available() ? HP_DEV_NBD
		       : fuse_resilient()			  ? HP_DEV_FUSE
								  : HP_DEV_LOOP;
	*out = mech;
	return 0;
}
