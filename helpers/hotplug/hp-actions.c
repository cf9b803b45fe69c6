/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The hotplug actions that run a worker and a dom0 block device:
 * prepare, add, remove, localattach, localdetach, unprepare (v2), and v1's
 * add and remove composed from them.  docs/libxl-hotplug-interface.txt
 * says what each promises; this file says how.
 *
 * Where things are:
 *   records    HOTPLUG_PATH (v2) or XENBUS_PATH (v1): our xenstore nodes
 *              blkstack-worker, blkstack-stage, blkstack-dev,
 *              blkstack-local-dev.
 *   stage      for the loop fallback, prepare starts nbdfuse (the slow
 *              part of a device) and records it as blkstack-stage; add
 *              then only configures a loop device on it, so the blackout
 *              step is a few xenstore operations and one ioctl.  remove
 *              frees the loop device, unprepare the stage.
 *   worker     RUNDIR/NAME, started and stopped with the control client
 *              library (helpers/common/worker-run.h: blkstack-worker is
 *              spawned directly, its errno and message come back);
 *              alive by the one rule of worker-live.h.  NAME comes from
 *              the records path, so every action of one device finds
 *              the same worker without reading it back.
 *   lock       RUNDIR/NAME.lock, flock()ed for the whole action: calls
 *              for one device are serialised, calls for others are not.
 *
 * Only the actions that set something up (prepare, add, localattach)
 * clear a stale hotplug-error: the undo actions leave it, since libxl runs
 * remove right after a failed add and the reason must survive it.
 *
 * Every value read back from xenstore is parsed strictly before use, and
 * nothing is ever handed to a shell: blkstack-worker is spawned with an
 * argument vector.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/rbd-target.h"
#include "dec.h"
#include "hp-dev.h"
#include "hp-error.h"
#include "hp-policy.h"
#include "hp-share.h"
#include "hp-vbd3.h"
#include "hp.h"
#include "lockfile.h"
#include "rundir.h"
#include "sibling.h"
#include "worker-live.h"
#include "worker-name.h"
#include "worker-run.h"

/* Where an installed blkstack-worker is, when it is not beside us. */
#ifndef BKS_SBINDIR
#define BKS_SBINDIR "/usr/local/sbin"
#endif

/* Record nodes, below the records directory. */
#define NODE_WORKER    "blkstack-worker"
#define NODE_DEV       "blkstack-dev"
#define NODE_LOCAL_DEV "blkstack-local-dev"
#define NODE_STAGE     "blkstack-stage"
#define NODE_BACKEND   "blkstack-backend" /* v2: the backend add served */
/* The VM prepare's rbd: layers claim for; (v2, optional) the toolstack's. */
#define NODE_VM	   "blkstack-vm"
#define NODE_TS_VM "vm"

/* What the device-related actions work on. */
struct target {
	char name[WORKER_NAME_MAX + 1]; /* the worker */
	char rundir[PATH_MAX];
	char dir[PATH_MAX]; /* rundir/name */
};

/* HOTPLUG_PATH in v2, XENBUS_PATH (the backend directory) in v1. */
static const char *records_dir(const struct hp *hp)
{
	return hp->env.iface == HP_IFACE_V2 ? hp->env.hotplug_path
					    : hp->env.xenbus_path;
}

/* BACKEND_PATH in v2 (add, remove), XENBUS_PATH in v1. */
static const char *backend_dir(const struct hp *hp)
{
	return hp->env.iface == HP_IFACE_V2 ? hp->env.backend_path
					    : hp->env.xenbus_path;
}

/*
 * A vbd3 backend directory (libxl's backendtype=tap, libxl 4.19 and later;
 * docs/libxl-hotplug-interface.txt section 11): "backend/vbd3/" where a
 * vbd backend has "backend/vbd/", relative or after "/local/domain/N/".
 * Its disk has a worker and no dom0 device: the worker serves the ring,
 * which blkstack-xenbus hands it.
 */
static bool backend_is_vbd3(const struct hp *hp)
{
	const char *p = backend_dir(hp);

	if (!p)
		return false;
	if (strncmp(p, "/local/domain/", 14) == 0) {
		p += 14;
		if (*p < '0' || *p > '9')
			return false;
		while (*p >= '0' && *p <= '9')
			p++;
		if (*p++ != '/')
			return false;
	}
	return strncmp(p, "backend/vbd3/", 13) == 0;
}

/* 64-bit FNV-1a, for names of over-long paths. */
static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 0x100000001b3ull;
	}
	return h;
}

/*
 * The worker's name: the records path with '/' as '-' (a validated
 * xenstore path has only [A-Za-z0-9_@/-]; '@' becomes '_'), or "hp-" and
 * a hash when that is longer than a worker name may be.
 */
static void derive_name(const char *path, char *name, size_t size)
{
	size_t n = 0;
	const char *p = path[0] == '/' ? path + 1 : path;

	if (strlen(p) > WORKER_NAME_MAX || size < WORKER_NAME_MAX + 1) {
		snprintf(name, size, "hp-%016llx",
			 (unsigned long long)fnv1a(path));
		return;
	}
	for (; *p; p++)
		name[n++] = *p == '/' ? '-' : *p == '@' ? '_' : *p;
	name[n] = '\0';
}

/*
 * Take RUNDIR/NAME.lock.  The file may be unlinked by an unprepare that
 * held it; so after locking, check that the path still names the file we
 * locked, and start again if not.
 */
static int take_lock(struct hp *hp, const struct target *t)
{
	char path[PATH_MAX + 16];
	struct stat a;
	int fd, rc;

	if (mkdir(t->rundir, 0755) < 0 && errno != EEXIST)
		return bks_error_set(&hp->err, errno, "mkdir %s", t->rundir);
	/*
	 * Everything of every disk lives here, and root creates files in it:
	 * it must be a real directory that only we can write to.
	 */
	if (lstat(t->rundir, &a) < 0)
		return bks_error_set(&hp->err, errno, "stat %s", t->rundir);
	if (!S_ISDIR(a.st_mode))
		return bks_error_setmsg(&hp->err, ENOTDIR,
					"run directory %s is not a directory "
					"(a symlink?): refusing to use it",
					t->rundir);
	if (a.st_uid != geteuid() || (a.st_mode & 022))
		return bks_error_setmsg(&hp->err, EPERM,
					"run directory %s is owned by uid %u "
					"with mode %04o: it must be ours (uid "
					"%u) and writable by nobody else",
					t->rundir, (unsigned)a.st_uid,
					(unsigned)(a.st_mode & 07777),
					(unsigned)geteuid());
	if (snprintf(path, sizeof(path), "%s/%s.lock", t->rundir, t->name) >=
	    (int)sizeof(path))
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"%s/%s.lock: too long", t->rundir,
					t->name);
	rc = lockfile_take(path, LOCKFILE_CREATE, &fd, &hp->err);
	if (rc < 0)
		return rc;
	hp->lock_fd = fd;
	return 0;
}

/* Drop the lock file (unprepare: the device is gone).  Still held. */
static void remove_lock(const struct target *t)
{
	char path[PATH_MAX + 16];

	/* take_lock() checked that it fits. */
	if (snprintf(path, sizeof(path), "%s/%s.lock", t->rundir, t->name) <
	    (int)sizeof(path))
		unlink(path);
}

static int target_init(struct hp *hp, struct target *t)
{
	int rc;

	derive_name(records_dir(hp), t->name, sizeof(t->name));
	rc = rundir_choose(NULL, t->rundir, sizeof(t->rundir), &hp->err);
	if (rc < 0)
		return rc;
	if (snprintf(t->dir, sizeof(t->dir), "%s/%s", t->rundir, t->name) >=
	    (int)sizeof(t->dir))
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"%s/%s: too long", t->rundir, t->name);
	return take_lock(hp, t);
}

/* ---- running the worker ------------------------------------------------- */

/*
 * Start the disk's worker on chain (worker-run.h), serving its own FUSE
 * file too with fuse (the fuse device mechanism), --read-only with
 * read_only.  Returns 0, or the worker's -errno with hp->err saying
 * "worker NAME: REASON".
 */
static int start_worker(struct hp *hp, const struct target *t,
			const char *chain, bool fuse, bool read_only)
{
	char exe[PATH_MAX], xs_error[HP_PATH_BUF];
	struct worker_spec spec = {.exe = exe,
				   .rundir = t->rundir,
				   .name = t->name,
				   .chain = chain,
				   .read_only = read_only,
				   .fuse = fuse};
	const char *dir = NULL;
	pid_t pid;
	int rc;

	/*
	 * Where the supervisor says it gave up (hp-error.c's node, which
	 * libxl reads): the backend's hotplug-error, else ours (v2) or
	 * XENBUS_PATH's (v1; libxl's is relative, and xenstore resolves it
	 * for the supervisor as it does for us).
	 */
	if (hp->env.iface == HP_IFACE_V2)
		dir = hp->env.backend_path && !hp->backend_foreign
			  ? hp->env.backend_path
			  : hp->env.hotplug_path;
	else if (!hp->backend_foreign && hp->env.xenbus_path)
		dir = hp->env.xenbus_path;
	if (dir && hp_child_path(xs_error, sizeof(xs_error), dir,
				 "hotplug-error", &hp->err) == 0)
		spec.xs_error_path = xs_error;
	bks_error_clear(&hp->err);

	/* blkstack-worker beside us (a build tree), else the installed one. */
	rc = sibling_path(exe, sizeof(exe), "blkstack-worker", BKS_SBINDIR,
			  &hp->err);
	return rc < 0 ? rc : worker_start(&spec, &pid, &hp->err);
}

/* Stop the disk's worker, if any, and remove its files (idempotent). */
static int stop_worker(const struct target *t, struct bks_error *err)
{
	struct worker_stopped how;

	return worker_stop(t->rundir, t->name, WORKER_EXIT_TIMEOUT_MS, &how,
			   err);
}

/* ---- xenstore records ---------------------------------------------------- */

/* Read records/node: 0 and *out (caller frees), -ENOENT, or -errno. */
static int read_record(struct hp *hp, const char *node, char **out)
{
	char path[HP_PATH_BUF];
	int rc;

	*out = NULL;
	rc = hp_child_path(path, sizeof(path), records_dir(hp), node, &hp->err);
	if (rc < 0)
		return rc;
	rc = hp_xs_read(hp->xs, XBT_NULL, path, out, &hp->err);
	return rc;
}

struct writes {
	struct hp *hp;
	const char *dir[8], *node[8], *value[8]; /* value NULL: remove */
	int n;
	bool clear_error;
};

static void add_write(struct writes *w, const char *dir, const char *node,
		      const char *value)
{
	w->dir[w->n] = dir;
	w->node[w->n] = node;
	w->value[w->n] = value;
	w->n++;
}

static int writes_txn(struct xs_handle *xs, xs_transaction_t t, void *arg,
		      struct bks_error *err)
{
	struct writes *w = arg;
	char path[HP_PATH_BUF];
	int rc;

	/* Never create the toolstack's directories. */
	rc = hp_xs_exists(xs, t, records_dir(w->hp), err);
	if (rc == 0)
		rc = bks_error_setmsg(err, ENOENT,
				      "%s does not exist in xenstore",
				      records_dir(w->hp));
	if (rc < 0)
		return rc;
	for (int i = 0; i < w->n; i++) {
		rc = hp_child_path(path, sizeof(path), w->dir[i], w->node[i],
				   err);
		if (rc == 0)
			rc = w->value[i]
				 ? hp_xs_write(xs, t, path, w->value[i], err)
				 : hp_xs_rm(xs, t, path, err);
		if (rc < 0)
			return rc;
	}
	return w->clear_error ? hp_clear_stale_error(w->hp, t) : 0;
}

/* Apply the writes in one transaction. */
static int commit(struct hp *hp, struct writes *w)
{
	w->hp = hp;
	return hp_xs_transaction(hp->xs, writes_txn, w, &hp->err);
}

/* ---- device records --------------------------------------------------------
 */

/* The disk's worker is alive: a process holds its lock (worker-live.h). */
static bool worker_running(const struct target *t)
{
	struct bks_error ignore;
	struct worker_proc p;

	return worker_live(t->dir, &p, &ignore) == 0;
}

/* The worker's NBD socket path. */
static int nbd_sock_path(struct hp *hp, const struct target *t, char *sock,
			 size_t size)
{
	if (snprintf(sock, size, "%s/nbd.sock", t->dir) >= (int)size)
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"%s/nbd.sock: too long", t->dir);
	return 0;
}

/* The disk's running worker (worker_live), or an error that says so. */
static int find_worker(struct hp *hp, const struct target *t, pid_t *pid,
		       unsigned long long *start)
{
	struct worker_proc p;
	int rc = worker_live(t->dir, &p, &hp->err);

	*pid = p.pid;
	*start = p.start;
	if (rc < 0)
		bks_error_prepend(&hp->err,
				  "worker %s is not serving (was prepare run? "
				  "did the worker die?): ",
				  t->name);
	return rc;
}

/* The worker is alive (find_worker); sock gets its NBD socket's path. */
static int check_worker(struct hp *hp, const struct target *t, char *sock,
			size_t size)
{
	struct sockaddr_un sa;
	unsigned long long start;
	pid_t pid;
	int rc = nbd_sock_path(hp, t, sock, size);

	if (rc < 0)
		return rc;
	if (strlen(sock) >= sizeof(sa.sun_path))
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"%s: too long for a socket", sock);
	return find_worker(hp, t, &pid, &start);
}

/*
 * Who a device record names as its worker (worker_identity: the
 * supervisor's "PID:STARTTIME" if there is one, so that a device outlives
 * the worker's restarts, else the worker's).
 */
static int worker_token(struct hp *hp, const struct target *t, char *tok,
			size_t size)
{
	int rc = worker_identity(t->dir, tok, size, &hp->err);

	if (rc < 0)
		bks_error_prepend(&hp->err,
				  "worker %s is not serving (was prepare run? "
				  "did the worker die?): ",
				  t->name);
	return rc;
}

/*
 * The record at node, parsed: 1, 0 if there is none, or -errno if it
 * cannot be read or is bad (hp->err untouched either way).
 */
static int load_dev_record(struct hp *hp, const struct target *t,
			   const char *node, struct hp_dev *dev)
{
	struct bks_error saved = hp->err;
	char *line = NULL;
	int rc;

	rc = read_record(hp, node, &line);
	if (rc == 0)
		rc = hp_dev_parse(line, t->dir, dev, &hp->err);
	free(line);
	hp->err = saved;
	return rc == 0 ? 1 : rc == -ENOENT ? 0 : rc;
}

/* The record at node, parsed: false if absent or bad (hp->err untouched). */
static bool read_dev_record(struct hp *hp, const struct target *t,
			    const char *node, struct hp_dev *dev)
{
	return load_dev_record(hp, t, node, dev) == 1;
}

/*
 * Detach the device recorded at node, and forget it.  Nothing: success.
 * With worker_dead (the device was made for a worker that died), a failed
 * flush is expected, since nothing can take it: it is said on stderr and
 * the record goes anyway (the teardown went on; whatever it could not
 * free is swept as unrecorded later).
 */
static int detach_recorded(struct hp *hp, const struct target *t,
			   const char *node, bool worker_dead)
{
	struct writes w = {0};
	struct hp_dev dev;
	char *line = NULL;
	int rc;

	rc = read_record(hp, node, &line);
	if (rc == -ENOENT) {
		bks_error_clear(&hp->err);
		return 0;
	}
	if (rc < 0)
		return rc;
	rc = hp_dev_parse(line, t->dir, &dev, &hp->err);
	if (rc == 0)
		rc = hp_dev_detach(&dev, &hp->err);
	free(line);
	if (rc < 0 && worker_dead) {
		fprintf(stderr,
			"blkstack: %s: %s of a dead worker: %s; forgotten\n",
			hp->action->name, node, hp->err.msg);
		bks_error_clear(&hp->err);
		rc = 0;
	}
	if (rc < 0)
		return rc;
	add_write(&w, records_dir(hp), node, NULL);
	return commit(hp, &w);
}

/*
 * Free what a killed run of an action left in the disk's state without a
 * record (an nbdfuse, a loop or kernel NBD device): since every action of
 * one disk holds its lock, whatever no record names is nobody's.  Run by
 * every action that makes or undoes a device, after its own records are
 * settled.
 */
static int sweep_leftovers(struct hp *hp, const struct target *t)
{
	static const char *const nodes[] = {NODE_STAGE, NODE_DEV,
					    NODE_LOCAL_DEV};
	struct hp_dev recs[3];
	const struct hp_dev *keep[3];
	unsigned int found = 0;
	char sock[PATH_MAX];
	int rc;

	rc = nbd_sock_path(hp, t, sock, sizeof(sock));
	if (rc < 0)
		return rc;
	for (size_t i = 0; i < 3; i++)
		keep[i] = read_dev_record(hp, t, nodes[i], &recs[i]) ? &recs[i]
								     : NULL;
	rc = hp_dev_sweep_unrecorded(t->dir, sock, keep, 3, &found, &hp->err);
	if (found)
		fprintf(stderr,
			"blkstack: %s: freed %u unrecorded device(s) of "
			"%s that an earlier run left\n",
			hp->action->name, found, t->name);
	return rc;
}

/* ---- prepare ------------------------------------------------------------- */

/*
 * Decide the dom0 mechanism and stage its slow part (hp_dev_stage), unless
 * a usable stage is recorded already; with new_worker none is (a loop
 * stage's nbdfuse was connected to the old worker's socket).  The
 * mechanism is chosen here (or by the caller, mech not HP_DEV_AUTO: it
 * started the worker for it), where a modprobe may run, so that add
 * (inside a migration's blackout) only uses it.  A worker that does not
 * serve its FUSE file (started earlier, without --fuse) gets loop in
 * place of fuse.  line gets the record to write; *made tells whether a
 * new stage was started, which the caller must undo if it cannot record
 * it.
 */
static int stage_device(struct hp *hp, const struct target *t, bool new_worker,
			enum hp_dev_mech mech, struct hp_dev *stage, bool *made,
			char *line, size_t size)
{
	char sock[PATH_MAX];
	int rc;

	*made = false;
	line[0] = '\0';
	if (!new_worker && read_dev_record(hp, t, NODE_STAGE, stage) &&
	    (stage->mech == HP_DEV_NBD || hp_dev_staged_ok(stage))) {
		hp_dev_format(stage, line, size);
		return 0;
	}
	/*
	 * A stage that died (or a bad record): clean up after it.  With a new
	 * worker, do_prepare() freed the old one's devices already, before
	 * the new one started.
	 */
	rc = detach_recorded(hp, t, NODE_STAGE, new_worker);
	if (rc == 0 && mech == HP_DEV_AUTO)
		rc = hp_dev_choose(&mech, &hp->err);
	if (rc == 0)
		rc = check_worker(hp, t, sock, sizeof(sock));
	if (rc == 0)
		rc = hp_dev_stage(sock, t->dir, mech, stage, &hp->err);
	if (rc == -ENOENT && mech == HP_DEV_FUSE) {
		fprintf(stderr, "blkstack: %s: %s: %s; using loop instead\n",
			hp->action->name, t->name, hp->err.msg);
		bks_error_clear(&hp->err);
		rc = hp_dev_stage(sock, t->dir, HP_DEV_LOOP, stage, &hp->err);
	}
	if (rc < 0)
		return rc;
	*made = stage->mech == HP_DEV_LOOP;
	if (hp_dev_format(stage, line, size) < 0)
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"stage record too long");
	return 0;
}

/*
 * dom0's policy (hp-policy.h) on what the worker opened: checked after it
 * started, on its descriptors, so that the check is about the files
 * themselves and not about names that may have changed.
 */
static int check_images(struct hp *hp, const struct target *t)
{
	struct hp_policy policy;
	struct hp_usage *u = NULL;
	unsigned long long start;
	pid_t pid;
	int rc;

	rc = hp_policy_load(&policy, &hp->err);
	if (rc < 0)
		return rc;
	u = calloc(1, sizeof(*u));
	if (!u) {
		rc = bks_error_set(&hp->err, ENOMEM, "prepare");
		goto out;
	}
	rc = find_worker(hp, t, &pid, &start);
	if (rc == 0)
		rc = hp_worker_images(pid, t->dir, true, u, &hp->err);
	if (rc == 0)
		rc = hp_policy_check(&policy, pid, u, t->rundir, &hp->err);
out:
	free(u);
	hp_policy_free(&policy);
	return rc;
}

static int rbd_claim_chain(struct hp *hp, char **chain, char *vm, size_t size);
static int backend_mode(struct hp *hp, bool strict, bool *ro);

/*
 * prepare of a vbd3 disk (v1 only: vbd3 says so in XENBUS_PATH): its
 * worker on the chain params gives (hp-vbd3.h), without a FUSE file, a
 * stage or any dom0 device, since the worker serves the ring itself;
 * --read-only for a disk of mode "r" (any mode but "r" and "w" is
 * refused before anything starts).  Called by do_prepare() with the
 * chain parsed; frees nothing of it.
 */
static int prepare_vbd3(struct hp *hp, const struct target *t,
			const char *chain, const char *vm)
{
	struct writes w = {.clear_error = true};
	bool new_worker = false, ro;
	int rc;

	rc = backend_mode(hp, true, &ro);
	if (rc < 0)
		goto out;
	if (!worker_running(t)) {
		rc = start_worker(hp, t, chain, false, ro);
		if (rc < 0)
			goto out;
		new_worker = true;
	}
	rc = check_images(hp, t);
	if (rc < 0)
		goto out;
	add_write(&w, records_dir(hp), NODE_WORKER, t->name);
	add_write(&w, records_dir(hp), NODE_VM, vm[0] ? vm : NULL);
	rc = commit(hp, &w);
out:
	if (rc < 0 && new_worker) {
		struct bks_error ignore;

		stop_worker(t, &ignore);
	}
	return rc;
}

static int do_prepare(struct hp *hp, const struct target *t)
{
	struct bks_chain_spec spec;
	struct writes w = {.clear_error = true};
	char *chain = NULL, line[PATH_MAX + 256], vm[BKS_RBD_VM_MAX + 1];
	enum hp_dev_mech mech = HP_DEV_AUTO;
	struct hp_dev stage;
	bool made = false, new_worker = false, vbd3 = backend_is_vbd3(hp);
	int rc;

	rc = read_record(hp, "params", &chain);
	if (rc < 0) {
		bks_error_prepend(&hp->err, "the disk target: ");
		goto out;
	}
	if (vbd3) {
		char *params = chain;

		rc = hp_vbd3_chain(params, &chain, &hp->err);
		free(params);
		if (rc < 0)
			goto out;
	}
	/* A bad chain is refused here, with its position, not later. */
	rc = bks_chain_parse(chain, strlen(chain), &spec, &hp->err);
	if (rc < 0)
		goto out;
	bks_chain_spec_free(&spec);
	/* rbd: layers claim their image for the guest's VM (cross-host). */
	rc = rbd_claim_chain(hp, &chain, vm, sizeof(vm));
	if (rc < 0)
		goto out;
	if (vbd3) {
		rc = prepare_vbd3(hp, t, chain, vm);
		goto out;
	}
	if (!worker_running(t)) {
		/*
		 * The devices made for a worker that died are dead: they go
		 * before a new worker mounts its FUSE file over the old one's
		 * (a loop device on a file of a detached mount names it
		 * "/disk", which nothing could then match to this disk).
		 */
		rc = detach_recorded(hp, t, NODE_DEV, true);
		if (rc == 0)
			rc = detach_recorded(hp, t, NODE_LOCAL_DEV, true);
		/* Then: fuse is a file the worker serves from its start. */
		if (rc == 0)
			rc = hp_dev_choose(&mech, &hp->err);
		if (rc == 0)
			rc = start_worker(hp, t, chain, mech == HP_DEV_FUSE,
					  false);
		if (rc < 0)
			goto out;
		new_worker = true;
	}
	rc = check_images(hp, t);
	if (rc == 0)
		rc = sweep_leftovers(hp, t);
	if (rc == 0)
		rc = stage_device(hp, t, new_worker, mech, &stage, &made, line,
				  sizeof(line));
	if (rc < 0)
		goto out;
	add_write(&w, records_dir(hp), NODE_WORKER, t->name);
	add_write(&w, records_dir(hp), NODE_STAGE, line);
	add_write(&w, records_dir(hp), NODE_VM, vm[0] ? vm : NULL);
	rc = commit(hp, &w);
out:
	if (rc < 0 && made) {
		/* Unrecorded, nobody else could ever stop it. */
		struct bks_error ignore;

		hp_dev_detach(&stage, &ignore);
	}
	if (rc < 0 && new_worker) {
		/* prepare undoes itself: a worker it started goes too. */
		struct bks_error ignore;

		stop_worker(t, &ignore);
	}
	free(chain);
	return rc;
}

int hp_act_prepare(struct hp *hp)
{
	struct target t;
	int rc = target_init(hp, &t);

	return rc < 0 ? rc : do_prepare(hp, &t);
}

/* ---- devices: add, localattach, and their undo --------------------------- */

/*
 * Attach a device for node (NODE_DEV or NODE_LOCAL_DEV) with the mechanism
 * prepare recorded, or reuse the recorded device if it is still bound to
 * this worker.  With use_stage, a loop device goes on prepare's stage when
 * that is still usable (else a whole attach, as without).  Fills dev and
 * line; *made tells whether the device is new (else it was reused).
 * Nothing here forks or probes the host: add runs in the blackout.
 */
static int attach(struct hp *hp, const struct target *t, const char *node,
		  bool use_stage, bool ro, struct hp_dev *dev, bool *made,
		  char *line, size_t size)
{
	char sock[PATH_MAX], tok[sizeof(dev->worker)];
	struct hp_dev stage;
	bool have;
	int rc;

	*made = false;
	rc = check_worker(hp, t, sock, sizeof(sock));
	if (rc == 0)
		rc = worker_token(hp, t, tok, sizeof(tok));
	if (rc < 0)
		return rc;
	if (!read_dev_record(hp, t, NODE_STAGE, &stage))
		return bks_error_setmsg(&hp->err, ENOENT,
					"no device mechanism recorded for %s "
					"(%s/%s): was prepare run?",
					t->name, records_dir(hp), NODE_STAGE);
	rc = load_dev_record(hp, t, node, dev);
	have = rc == 1;
	if (have && !strcmp(dev->worker, tok) && hp_dev_bound(dev, sock)) {
		/* Attached by an earlier run of this action, and still good. */
		hp_dev_format(dev, line, size);
		return 0;
	}
	/* A record of a device that is gone or stale: clean up after it. */
	rc = rc == 0 ? 0
		     : detach_recorded(hp, t, node,
				       have && strcmp(dev->worker, tok));
	if (rc == 0)
		rc = sweep_leftovers(hp, t);
	if (rc < 0)
		return rc;
	if (use_stage &&
	    (stage.mech == HP_DEV_LOOP || stage.mech == HP_DEV_FUSE) &&
	    hp_dev_staged_ok(&stage))
		rc = hp_dev_attach_staged(&stage, ro, dev, &hp->err);
	else
		rc = hp_dev_attach(sock, t->dir, ro, stage.mech, dev, &hp->err);
	if (rc < 0)
		return rc;
	*made = true;
	snprintf(dev->worker, sizeof(dev->worker), "%s", tok);
	if (hp_dev_format(dev, line, size) < 0) {
		hp_dev_detach(dev, &hp->err);
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"device record too long");
	}
	return 0;
}

/*
 * The disk's mode, from the backend's mode node: *ro for a read-only
 * disk.  A vbd disk's is read as it always was: "r" or "ro" (anything
 * starting with 'r' but "rw") read-only, anything else, or none, or a
 * failed read, read-write; 0.  With strict (a vbd3 disk, whose worker
 * starts --read-only or not by it, and whose ring blkstack-xenbus
 * refuses to connect with another mode) it is "r" or "w", or none ("w",
 * as blkstack-xenbus reads it); anything else is -EINVAL, a failed read
 * -errno, with hp->err set.
 */
static int backend_mode(struct hp *hp, bool strict, bool *ro)
{
	char path[HP_PATH_BUF], *mode = NULL;
	struct bks_error ignore;
	int rc;

	*ro = false;
	rc = hp_child_path(path, sizeof(path), backend_dir(hp), "mode",
			   strict ? &hp->err : &ignore);
	if (rc == 0)
		rc = hp_xs_read(hp->xs, XBT_NULL, path, &mode,
				strict ? &hp->err : &ignore);
	if (!strict) {
		*ro = rc == 0 && mode[0] == 'r' && mode[1] != 'w';
		rc = 0;
		goto out;
	}
	if (rc == -ENOENT) {
		bks_error_clear(&hp->err);
		rc = 0;
		goto out;
	}
	if (rc < 0)
		goto out;
	if (strcmp(mode, "r") == 0 || strcmp(mode, "w") == 0) {
		*ro = mode[0] == 'r';
		goto out;
	}
	bks_sanitize_line(mode); /* untrusted: quoted on one line */
	rc = bks_error_setmsg(&hp->err, EINVAL,
			      "%s/mode '%.32s' is not r (read-only) or w "
			      "(read-write)",
			      backend_dir(hp), mode);
out:
	free(mode);
	return rc;
}

/* ---- sharing: one image, one VM (hp-share.h) ------------------------------
 */

/* The guest's domid from the backend's frontend-id, or -1. */
static long frontend_domid(struct hp *hp)
{
	char path[HP_PATH_BUF], *v = NULL, *end;
	struct bks_error ignore;
	long d = -1;

	if (hp_child_path(path, sizeof(path), backend_dir(hp), "frontend-id",
			  &ignore) < 0 ||
	    hp_xs_read(hp->xs, XBT_NULL, path, &v, &ignore) < 0)
		return -1;
	errno = 0;
	d = strtol(v, &end, 10);
	if (errno || *end || end == v || d < 0 || d >= 0x7ff0)
		d = -1;
	free(v);
	return d;
}

/*
 * /local/domain/DOMID/vm into vm ("" if there is none, or it is not a
 * plain xenstore path): what tells the two domains of one VM apart from
 * two VMs.
 */
static void domain_vm(struct hp *hp, long domid, char *vm, size_t size)
{
	char path[64], *v = NULL;
	struct bks_error ignore;

	vm[0] = '\0';
	if (domid < 0)
		return;
	snprintf(path, sizeof(path), "/local/domain/%ld/vm", domid);
	if (hp_xs_read(hp->xs, XBT_NULL, path, &v, &ignore) < 0)
		return;
	if (v[0] == '/' && strlen(v) < size &&
	    hp_xs_path_check(v, HP_PATH_ABSOLUTE, "vm", &ignore) == 0)
		snprintf(vm, size, "%s", v);
	free(v);
}

/*
 * What this disk uses, from its running worker: the images it holds
 * open, for which guest, VM and backend.  The worker must be running
 * (prepare started it).
 */
static int disk_usage(struct hp *hp, const struct target *t, bool rw,
		      struct hp_usage *u)
{
	unsigned long long start;
	pid_t pid;
	int rc;

	u->domid = frontend_domid(hp);
	domain_vm(hp, u->domid, u->vm, sizeof(u->vm));
	snprintf(u->backend, sizeof(u->backend), "%s", backend_dir(hp));
	rc = find_worker(hp, t, &pid, &start);
	return rc < 0 ? rc : hp_worker_images(pid, t->dir, rw, u, &hp->err);
}

/* ---- sharing across hosts: rbd: claims (drivers/rbd.c, "Claims") --------
 *
 * The worker of a disk with an rbd: sink claims the image for the guest's
 * VM at open (prepare), through the sink's vm= option, which only this
 * code sets: params naming vm= is refused.  The VM comes from the domain
 * in v1 (XENBUS_PATH's frontend-id, /local/domain/N/vm), and in v2, where
 * prepare may not know the domain, from HOTPLUG_PATH/vm when the
 * toolstack wrote it (blkstack's addition to the interface).  prepare
 * records what it claimed for (blkstack-vm), and add, which knows the
 * domain, refuses a disk whose claim is not its domain's VM.
 */

/* Our record node, or *out NULL if there is none: 0 or -errno. */
static int read_optional(struct hp *hp, const char *node, char **out)
{
	int rc = read_record(hp, node, out);

	if (rc == -ENOENT) {
		bks_error_clear(&hp->err);
		*out = NULL;
		rc = 0;
	}
	return rc;
}

/* The guest's VM as prepare can know it, into vm ("" if unknown). */
static int prepare_vm(struct hp *hp, char *vm, size_t size)
{
	char *v = NULL;
	int rc;

	vm[0] = '\0';
	if (hp->env.iface != HP_IFACE_V2) {
		domain_vm(hp, frontend_domid(hp), vm, size);
		return 0;
	}
	rc = read_optional(hp, NODE_TS_VM, &v);
	if (rc == 0 && v &&
	    (strlen(v) >= size ||
	     hp_xs_path_check(v, HP_PATH_ABSOLUTE, "HOTPLUG_PATH/vm",
			      &hp->err) < 0))
		rc = bks_error_setmsg(&hp->err, EINVAL,
				      "%s/%s is not a VM path (/vm/UUID)",
				      records_dir(hp), NODE_TS_VM);
	if (rc == 0 && v)
		snprintf(vm, size, "%s", v);
	free(v);
	return rc;
}

/*
 * Add ",vm=VM" to every rbd: layer of *chain that opens an image (not a
 * snapshot), VM as prepare_vm() finds it (into vm, "" if none: the
 * layers then claim the image exclusively).  *chain is replaced when
 * changed.  Returns 0, or -EINVAL with hp->err set (params names vm=, or
 * the VM path is not one rbd: takes).
 */
static int rbd_claim_chain(struct hp *hp, char **chain, char *vm, size_t size)
{
	struct bks_chain_spec spec = {0};
	struct bks_rbd_target *rt = NULL;
	size_t len = strlen(*chain), cap;
	char *buf = NULL;
	bool changed = false, any = false;
	int rc, n;

	vm[0] = '\0';
	rc = bks_chain_parse(*chain, len, &spec, &hp->err);
	for (unsigned int i = 0; rc == 0 && i < spec.n; i++)
		any |= !strcmp(spec.layers[i].desc->name, "rbd");
	if (rc < 0 || !any)
		goto out;
	rt = malloc(sizeof(*rt));
	if (!rt) {
		rc = bks_error_set(&hp->err, ENOMEM, "prepare");
		goto out;
	}
	rc = prepare_vm(hp, vm, size);
	for (unsigned int i = 0; rc == 0 && i < spec.n; i++) {
		struct bks_layer_spec *l = &spec.layers[i];
		char *args;

		if (strcmp(l->desc->name, "rbd"))
			continue;
		rc = bks_rbd_target_parse(l->args, rt, &hp->err);
		if (rc == 0 && rt->vm[0])
			rc = bks_error_setmsg(&hp->err, EINVAL,
					      "the disk target names vm= for "
					      "rbd:%s: the VM is the domain's, "
					      "blkstack-hotplug sets it",
					      rt->name);
		if (rc < 0 || rt->snap[0] || !vm[0])
			continue;
		if (asprintf(&args, "%s,vm=%s", l->args, vm) < 0) {
			rc = bks_error_set(&hp->err, ENOMEM, "prepare");
			break;
		}
		free(l->args);
		l->args = args;
		changed = true;
	}
	if (rc < 0 || !changed)
		goto out;
	cap = 2 * len + 4 * BKS_CHAIN_MAX_LAYERS * (size + 8) + 64;
	buf = malloc(cap);
	if (!buf) {
		rc = bks_error_set(&hp->err, ENOMEM, "prepare");
		goto out;
	}
	n = bks_chain_format(&spec, buf, cap);
	bks_chain_spec_free(&spec);
	if (n < 0)
		rc = bks_error_setmsg(&hp->err, -n, "too long with vm=");
	else
		rc = bks_chain_parse(buf, (size_t)n, &spec, &hp->err);
	if (rc < 0) {
		bks_error_prepend(&hp->err, "the guest's VM path %s: ", vm);
		goto out;
	}
	free(*chain);
	*chain = buf;
	buf = NULL;
out:
	bks_chain_spec_free(&spec);
	free(buf);
	free(rt);
	return rc;
}

/*
 * add: what prepare claimed rbd: images for (blkstack-vm) must be the
 * domain's VM.  0, or -EPERM with hp->err set.
 */
static int check_claim_vm(struct hp *hp, const struct hp_usage *u)
{
	char *rec = NULL;
	int rc;

	rc = read_optional(hp, NODE_VM, &rec);
	if (rc == 0 && rec && strcmp(rec, u->vm))
		rc = bks_error_setmsg(&hp->err, EPERM,
				      "prepare claimed this disk's rbd: images "
				      "for VM %.128s (%s/%s), but its domain "
				      "%ld is VM %s; refusing",
				      rec, records_dir(hp), NODE_TS_VM,
				      u->domid, u->vm[0] ? u->vm : "(none)");
	free(rec);
	return rc;
}

/* Decimal domid or devid at [s, e) (dec.h: no sign, no leading zero),
 * at most max. */
static bool id_ok(const char *s, const char *e, unsigned long max,
		  unsigned long *out)
{
	unsigned long long n = 0;
	bool ok = dec_parse_uint_n(s, (size_t)(e - s), max, &n) == 0;

	*out = (unsigned long)n;
	return ok;
}

/* Read dir/node and compare it with want: 0, or -EINVAL with err set. */
static int expect_node(struct hp *hp, const char *dir, const char *node,
		       const char *want)
{
	char path[HP_PATH_BUF], *v = NULL;
	int rc;

	rc = hp_child_path(path, sizeof(path), dir, node, &hp->err);
	if (rc == 0)
		rc = hp_xs_read(hp->xs, XBT_NULL, path, &v, &hp->err);
	if (rc == 0 && strcmp(v, want))
		rc = bks_error_setmsg(&hp->err, EINVAL,
				      "%s is '%.64s', not '%s': not this "
				      "disk's backend",
				      path, v, want);
	free(v);
	return rc;
}

/*
 * The backend directory of add and remove (BACKEND_PATH in v2,
 * XENBUS_PATH in v1) must be a vbd backend as libxl makes it, of the disk
 * it names: ".../backend/vbd/DOMID/DEVID" (or, for a vbd3 disk,
 * ".../backend/vbd3/DOMID/DEVID"; v2: "/local/domain/N/" in
 * front; v1: relative, or the same absolute form), existing, whose
 * frontend-id is DOMID and whose frontend is
 * /local/domain/DOMID/device/vbd/DEVID; and in v2 the one this disk's
 * first add served (blkstack-backend), if any.  Where that fails the
 * directory is somebody else's, and failure reports stay out of it.
 * Returns 0, or -EINVAL / -ENOENT with err set.
 */
static int check_backend(struct hp *hp)
{
	const char *be = backend_dir(hp), *p = be, *dom, *dev;
	const char *kind =
	    backend_is_vbd3(hp) ? "backend/vbd3/" : "backend/vbd/";
	char want[96], *rec = NULL;
	unsigned long domid, devid, bdom;
	int rc;

	if (be[0] == '/') {
		if (strncmp(p, "/local/domain/", 14))
			goto bad;
		p += 14;
		dom = strchr(p, '/');
		if (!dom || !id_ok(p, dom, 0x7fef, &bdom))
			goto bad;
		p = dom + 1;
	} else if (hp->env.iface == HP_IFACE_V2) {
		goto bad;
	}
	if (strncmp(p, kind, strlen(kind)))
		goto bad;
	dom = p + strlen(kind);
	dev = strchr(dom, '/');
	if (!dev || !id_ok(dom, dev, 0x7fef, &domid) ||
	    !id_ok(dev + 1, dev + 1 + strlen(dev + 1), 0xfffffff, &devid))
		goto bad;
	rc = hp_xs_exists(hp->xs, XBT_NULL, be, &hp->err);
	if (rc == 0)
		rc = bks_error_setmsg(&hp->err, ENOENT,
				      "backend directory %s does not exist "
				      "(the toolstack makes it before add)",
				      be);
	if (rc < 0)
		goto foreign;
	snprintf(want, sizeof(want), "%lu", domid);
	rc = expect_node(hp, be, "frontend-id", want);
	if (rc < 0)
		goto foreign;
	snprintf(want, sizeof(want), "/local/domain/%lu/device/vbd/%lu", domid,
		 devid);
	rc = expect_node(hp, be, "frontend", want);
	if (rc < 0)
		goto foreign;
	if (hp->env.iface != HP_IFACE_V2)
		return 0;
	rc = read_record(hp, NODE_BACKEND, &rec);
	if (rc == -ENOENT) {
		bks_error_clear(&hp->err);
		return 0;
	}
	if (rc == 0 && strcmp(rec, be))
		rc =
		    bks_error_setmsg(&hp->err, EINVAL,
				     "this disk's backend is %.200s (its first "
				     "add served it), not %s",
				     rec, be);
	free(rec);
	if (rc == 0)
		return 0;
foreign:
	hp->backend_foreign = true;
	return rc;
bad:
	hp->backend_foreign = true;
	return bks_error_setmsg(&hp->err, EINVAL,
				"%s is not a %.*s backend directory "
				"(.../%sDOMID/DEVID)",
				be, (int)strlen(kind) - 9, kind + 8, kind);
}

/*
 * What every add checks before it makes anything: the backend directory
 * (check_backend), the disk's images against every other disk's on this
 * host and the VM's claim, then the sharing claim, checked and recorded
 * at once, host-wide.  Returns 0 (claimed: hp_share_release() undoes
 * it), or -errno with hp->err set (backend_foreign where the directory or
 * the disk is somebody else's).
 */
static int claim_disk(struct hp *hp, const struct target *t, bool rw)
{
	struct hp_usage *mine = NULL;
	int rc;

	mine = calloc(1, sizeof(*mine));
	if (!mine) {
		rc = bks_error_set(&hp->err, ENOMEM, "add");
		goto out;
	}
	rc = check_backend(hp);
	if (rc < 0)
		goto out;
	rc = disk_usage(hp, t, rw, mine);
	if (rc == 0)
		rc = check_claim_vm(hp, mine);
	if (rc < 0)
		goto out;
	rc = hp_share_claim(t->rundir, t->name, mine, &hp->err);
	if (rc == -EEXIST)
		hp->backend_foreign = true;
out:
	free(mine);
	return rc;
}

static int do_add(struct hp *hp, const struct target *t)
{
	char line[PATH_MAX + 256], physdev[32];
	struct writes w = {.clear_error = true};
	const char *backend = backend_dir(hp);
	bool claimed = false, made = false, ro;
	struct hp_dev dev = {0};
	int rc;

	backend_mode(hp, false, &ro);
	rc = claim_disk(hp, t, !ro);
	if (rc < 0)
		goto out;
	claimed = true;
	rc = attach(hp, t, NODE_DEV, true, ro, &dev, &made, line, sizeof(line));
	if (rc < 0)
		goto out;
	/* As blkback parses it: "%x:%x". */
	snprintf(physdev, sizeof(physdev), "%x:%x", dev.major, dev.minor);
	add_write(&w, records_dir(hp), NODE_DEV, line);
	add_write(&w, backend, "physical-device-path", dev.path);
	if (hp->env.iface == HP_IFACE_V2) {
		add_write(&w, backend, "params", dev.path);
		add_write(&w, hp->env.hotplug_path, "pdev", dev.path);
		add_write(&w, records_dir(hp), NODE_BACKEND, backend);
	} else {
		add_write(&w, backend, "hotplug-status", "connected");
	}
	/* Last, since blkback opens the device as soon as it sees it. */
	add_write(&w, backend, "physical-device", physdev);
	/* One transaction, and nothing after it can fail. */
	rc = commit(hp, &w);
out:
	/*
	 * Undo only what this run made: a device an earlier add made (and
	 * blkback may hold) stays, and so does its claim.
	 */
	if (rc < 0 && made) {
		struct bks_error ignore;

		hp_dev_detach(&dev, &ignore);
	}
	if (rc < 0 && claimed &&
	    (made || load_dev_record(hp, t, NODE_DEV, &dev) == 0))
		hp_share_release(t->rundir, t->name);
	return rc;
}

/*
 * add of a vbd3 disk (v1): the checks and the sharing claim of a vbd add,
 * then physical-device-path, the worker's control socket (where libxl's
 * block-tap writes its tapdisk's socket), and hotplug-status "connected"
 * last, in one transaction: blkstack-xenbus hands the ring to the worker
 * once it sees that.  No physical-device, ever: blkback would take the
 * disk.  A failure undoes nothing itself (v1_add() removes it all).
 */
static int do_add_vbd3(struct hp *hp, const struct target *t)
{
	char sock[PATH_MAX + 16];
	struct writes w = {.clear_error = true};
	const char *backend = backend_dir(hp);
	bool ro;
	int rc;

	/* The mode prepare_vbd3() checked and started the worker by. */
	rc = backend_mode(hp, true, &ro);
	if (rc == 0)
		rc = claim_disk(hp, t, !ro);
	if (rc < 0)
		return rc;
	if (snprintf(sock, sizeof(sock), "%s/" WORKER_FILE_CTL, t->dir) >=
	    (int)sizeof(sock))
		return bks_error_setmsg(&hp->err, ENAMETOOLONG,
					"%s/" WORKER_FILE_CTL ": too long",
					t->dir);
	add_write(&w, backend, "physical-device-path", sock);
	/* Last: blkstack-xenbus connects the ring when it sees it. */
	add_write(&w, backend, "hotplug-status", "connected");
	return commit(hp, &w);
}

/*
 * Keep the first failure: *first_rc and *first get rc and hp->err if
 * nothing failed before.  So unprepare can release everything it can and
 * still report what went wrong first.
 */
static void keep_first(struct hp *hp, int rc, int *first_rc,
		       struct bks_error *first)
{
	if (rc < 0 && *first_rc == 0) {
		*first_rc = rc;
		*first = hp->err;
	}
}

static int do_unprepare(struct hp *hp, const struct target *t)
{
	static const char *const nodes[] = {NODE_DEV, NODE_LOCAL_DEV,
					    NODE_STAGE};
	struct writes w = {0};
	struct bks_error first;
	int rc, first_rc = 0;

	/*
	 * remove and localdetach should have run; do their work if not.
	 * HOTPLUG_PATH goes after unprepare whatever it reports, so a
	 * failure does not stop the rest (a rerun retries what failed: the
	 * failed records stay).
	 */
	for (size_t i = 0; i < sizeof(nodes) / sizeof(*nodes); i++)
		keep_first(hp, detach_recorded(hp, t, nodes[i], false),
			   &first_rc, &first);
	/* Devices of attaches killed before they were recorded. */
	keep_first(hp, sweep_leftovers(hp, t), &first_rc, &first);
	hp_share_release(t->rundir, t->name);
	keep_first(hp, stop_worker(t, &hp->err), &first_rc, &first);
	if (first_rc < 0) {
		hp->err = first;
		return first_rc;
	}
	add_write(&w, records_dir(hp), NODE_WORKER, NULL);
	add_write(&w, records_dir(hp), NODE_VM, NULL);
	/* v1 vbd3: the socket add wrote is gone with the worker. */
	if (hp->env.iface == HP_IFACE_V1 && backend_is_vbd3(hp))
		add_write(&w, backend_dir(hp), "physical-device-path", NULL);
	if (hp->env.iface == HP_IFACE_V2)
		add_write(&w, records_dir(hp), NODE_BACKEND, NULL);
	rc = commit(hp, &w);
	if (rc == -ENOENT) {
		/*
		 * The records directory is gone already (libxl removed the
		 * backend directory in v1, or HOTPLUG_PATH in v2): nothing is
		 * left to forget, and the host side is released above.
		 */
		bks_error_clear(&hp->err);
		rc = 0;
	}
	if (rc == 0)
		remove_lock(t);
	return rc;
}

/* v1 remove: remove, then unprepare even if remove failed. */
static int v1_remove(struct hp *hp, const struct target *t)
{
	struct bks_error first;
	int rc, rc2;

	rc = detach_recorded(hp, t, NODE_DEV, false);
	if (rc == 0)
		hp_share_release(t->rundir, t->name);
	first = hp->err;
	rc2 = do_unprepare(hp, t);
	if (rc < 0) {
		hp->err = first;
		return rc;
	}
	return rc2;
}

/*
 * v1 add: prepare, then add.  libxl does not run remove after a failed
 * add from xl block-attach, so a failure undoes everything here.
 */
static int v1_add(struct hp *hp, const struct target *t)
{
	struct bks_error saved;
	int rc;

	rc = do_prepare(hp, t);
	if (rc == 0)
		rc = backend_is_vbd3(hp) ? do_add_vbd3(hp, t) : do_add(hp, t);
	if (rc < 0) {
		saved = hp->err;
		v1_remove(hp, t);
		hp->err = saved;
	}
	return rc;
}

int hp_act_add(struct hp *hp)
{
	struct target t;
	int rc;

	/* v2's prepare cannot know the backend type: v1 only (libxl's). */
	if (hp->env.iface == HP_IFACE_V2 && backend_is_vbd3(hp))
		return bks_error_setmsg(
		    &hp->err, EOPNOTSUPP,
		    "%s is a vbd3 backend (backendtype=tap): blkstack serves "
		    "vbd3 disks through the v1 interface only (libxl's); give "
		    "this disk the default backend type (vbd, served by "
		    "blkback)",
		    backend_dir(hp));
	rc = target_init(hp, &t);
	if (rc < 0)
		return rc;
	return hp->env.iface == HP_IFACE_V1 ? v1_add(hp, &t) : do_add(hp, &t);
}

int hp_act_remove(struct hp *hp)
{
	struct target t;
	struct writes w = {0};
	int rc;

	/* v2 add refused it: nothing was made (unprepare stops the worker). */
	if (hp->env.iface == HP_IFACE_V2 && backend_is_vbd3(hp))
		return 0;
	rc = target_init(hp, &t);
	if (rc < 0)
		return rc;
	if (hp->env.iface == HP_IFACE_V1)
		return v1_remove(hp, &t);
	/* Only to keep a failure report out of a foreign backend. */
	if (check_backend(hp) < 0)
		bks_error_clear(&hp->err);
	rc = detach_recorded(hp, &t, NODE_DEV, false);
	if (rc == 0)
		hp_share_release(t.rundir, t.name);
	add_write(&w, records_dir(hp), NODE_BACKEND, NULL);
	/* A device a killed add made but did not record. */
	if (rc == 0)
		rc = sweep_leftovers(hp, &t);
	return rc < 0 ? rc : commit(hp, &w);
}

int hp_act_localattach(struct hp *hp)
{
	char line[PATH_MAX + 256];
	struct writes w = {.clear_error = true};
	struct hp_dev dev;
	struct target t;
	bool made;
	int rc = target_init(hp, &t);

	if (rc < 0)
		return rc;
	rc = attach(hp, &t, NODE_LOCAL_DEV, false, false, &dev, &made, line,
		    sizeof(line));
	if (rc < 0)
		return rc;
	add_write(&w, records_dir(hp), NODE_LOCAL_DEV, line);
	add_write(&w, hp->env.hotplug_path, "pdev", dev.path);
	rc = commit(hp, &w);
	if (rc < 0 && made) {
		struct bks_error ignore;

		hp_dev_detach(&dev, &ignore);
	}
	return rc;
}

int hp_act_localdetach(struct hp *hp)
{
	struct writes w = {0};
	struct target t;
	int rc = target_init(hp, &t);

	if (rc < 0)
		return rc;
	rc = detach_recorded(hp, &t, NODE_LOCAL_DEV, false);
	if (rc == 0)
		rc = sweep_leftovers(hp, &t);
	return rc < 0 ? rc : commit(hp, &w);
}

int hp_act_unprepare(struct hp *hp)
{
	struct target t;
	int rc = target_init(hp, &t);

	return rc < 0 ? rc : do_unprepare(hp, &t);
}
