/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Unit tests: the control client library of helpers/common/ (ctl-client.h,
 * worker-run.h, worker-list.h, worker-live.h) and the process utilities
 * beside it (lockfile.h, child.h), against real blkstack-workers started
 * in a private run directory: errors carry the worker's errno, and a
 * worker is alive iff a process holds its lock -- not a stale pid file,
 * not a zombie, not a recycled pid.
 *
 * The worker is build/bin/blkstack-worker, found from argv[0]
 * (build/tests/unit/test-ctl-client): under valgrind /proc/self/exe is
 * valgrind's, so sibling_path() cannot be used here.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "ctl-client.h"
#include "lockfile.h"
#include "worker-list.h"
#include "worker-live.h"
#include "worker-run.h"

static char worker_exe[PATH_MAX];
static const char *self_exe; /* argv[0]: this test, run again as a helper */

/* A private run directory per test. */
struct fixture {
	char rundir[64];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f)
		return -1;
	snprintf(f->rundir, sizeof(f->rundir), "/tmp/bks-ctl-XXXXXX");
	if (!mkdtemp(f->rundir)) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int rm_one(const char *path, const struct stat *sb, int flag,
		  struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(path) < 0 ? -1 : 0;
}

/* Kill what a test left running, and remove the run directory. */
static int teardown(void **state)
{
	struct fixture *f = *state;
	struct dirent *de;
	DIR *d = opendir(f->rundir);

	while (d && (de = readdir(d))) {
		char path[PATH_MAX], buf[32] = "";
		FILE *fp;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s/pid", f->rundir,
			 de->d_name);
		fp = fopen(path, "r");
		if (!fp)
			continue;
		if (fgets(buf, sizeof(buf), fp) && atoi(buf) > 0)
			kill(atoi(buf), SIGKILL);
		fclose(fp);
	}
	if (d)
		closedir(d);
	/* Reap whatever we started and is gone. */
	while (waitpid(-1, NULL, WNOHANG) > 0)
		;
	nftw(f->rundir, rm_one, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

/*
 * In a forked child: become a process that sleeps until killed.  By exec:
 * under valgrind, a forked test process would be leak-checked at exit.
 */
static void __attribute__((noreturn)) child_sleep(void)
{
	execl("/bin/sleep", "sleep", "600", (char *)NULL);
	_exit(1);
}

static int start(struct fixture *f, const char *name, const char *chain,
		 pid_t *pid, struct bks_error *err)
{
	struct worker_spec s = {.exe = worker_exe,
				.rundir = f->rundir,
				.name = name,
				.chain = chain};

	return worker_start(&s, pid, err);
}

static void wdir(const struct fixture *f, const char *name, char *buf,
		 size_t size)
{
	snprintf(buf, size, "%s/%s", f->rundir, name);
}

static int count_cb(const struct worker_status *st, void *arg)
{
	struct worker_status *last = arg;

	*last = *st;
	return 0;
}

static void test_errno_names(void **state)
{
	(void)state;
	assert_int_equal(ctl_errno_from_name("ENOENT"), ENOENT);
	assert_int_equal(ctl_errno_from_name("EBUSY"), EBUSY);
	assert_int_equal(ctl_errno_from_name("ESHUTDOWN"), ESHUTDOWN);
	assert_int_equal(ctl_errno_from_name("ENOTANERRNO"), 0);
	assert_int_equal(ctl_errno_from_name(""), 0);
}

/* Start, commands with errors carrying errno, list, stop, stop again. */
static void test_lifecycle(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	struct ctl_client cl;
	struct worker_proc p;
	struct worker_status st;
	struct worker_stopped how;
	char dir[128], s[64];
	pid_t pid;

	assert_int_equal(start(f, "u1", "ram:16M", &pid, &err), 0);
	assert_true(pid > 0);
	wdir(f, "u1", dir, sizeof(dir));
	assert_int_equal(worker_live(dir, &p, &err), 0);
	assert_int_equal(p.pid, pid);
	assert_int_equal(p.file_pid, pid);
	assert_true(p.start > 0);

	assert_int_equal(ctl_client_open(&cl, f->rundir, "u1", 5000, &err), 0);
	assert_int_equal(ctl_client_call(&cl, "info", &err), 0);
	assert_string_equal(ctl_reply_str(&cl, 0, "name", s, sizeof(s)), "u1");
	assert_true(ctl_reply_u64(&cl, 0, "size") == 16u << 20);
	assert_int_equal((int)ctl_reply_u64(&cl, 0, "pid"), pid);
	/* The worker's errno and message, without its "u1: ". */
	assert_int_equal(ctl_client_call(&cl, "frob", &err), -ENOSYS);
	assert_string_equal(err.msg, "unknown command 'frob'");
	assert_int_equal(err.code, ENOSYS);
	assert_int_equal(ctl_client_call(&cl, "info now", &err), -EINVAL);
	assert_string_equal(err.msg, "info takes no arguments");
	assert_int_equal(ctl_client_call(&cl, "dirty", &err), -EOPNOTSUPP);
	assert_string_equal(err.msg, "dirty: the chain has no log: layer");
	assert_int_equal(ctl_client_call(&cl, "a b c d e f g", &err), -E2BIG);
	/* The connection goes on after errors. */
	assert_int_equal(ctl_client_call(&cl, "stats", &err), 0);
	ctl_client_close(&cl);
	ctl_client_close(&cl);

	assert_int_equal(ctl_command(f->rundir, "u1", "pause", 5000, &err), 0);
	assert_int_equal(ctl_command(f->rundir, "u1", "unpause", 5000, &err),
			 0);
	assert_int_equal(
	    ctl_command(f->rundir, "u1", "clear-dirty", 5000, &err),
	    -EOPNOTSUPP);
	assert_string_equal(err.msg,
			    "worker u1: clear-dirty: the chain has no log: "
			    "layer");

	memset(&st, 0, sizeof(st));
	assert_int_equal(worker_list(f->rundir, 5000, count_cb, &st, &err), 0);
	assert_string_equal(st.name, "u1");
	assert_true(st.live);
	assert_string_equal(st.state, "running");
	assert_string_equal(st.chain, "ram:16M");
	assert_int_equal(st.pid, pid);

	assert_int_equal(worker_stop(f->rundir, "u1", 10000, &how, &err), 0);
	assert_int_equal(how.how, WORKER_STOPPED);
	assert_int_equal(how.pid, pid);
	assert_int_equal(access(dir, F_OK), -1);
	/* It was our child: it exited with 0. */
	{
		int status = -1;

		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	}
	assert_int_equal(worker_stop(f->rundir, "u1", 10000, &how, &err), 0);
	assert_int_equal(how.how, WORKER_ABSENT);
	assert_string_equal(how.note, "no worker u1");
	assert_int_equal(ctl_command(f->rundir, "u1", "info", 1000, &err),
			 -ENOENT);
	assert_non_null(strstr(err.msg, "worker u1: not running (no "));
}

/* A worker that fails to start: its errno and message, nothing left. */
static void test_start_errors(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	char dir[128], chain[256], saved[sizeof(worker_exe)];
	pid_t pid;
	int rc;

	snprintf(chain, sizeof(chain), "aio:%s/missing.img", f->rundir);
	assert_int_equal(start(f, "bad", chain, &pid, &err), -ENOENT);
	assert_int_equal(err.code, ENOENT);
	assert_non_null(strstr(err.msg, "worker bad: "));
	assert_non_null(strstr(err.msg, "missing.img: No such file or "
					"directory"));
	wdir(f, "bad", dir, sizeof(dir));
	assert_int_equal(access(dir, F_OK), -1);

	assert_int_equal(start(f, "bad", "log:||ram:1M", &pid, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "empty layer"));
	assert_int_equal(access(dir, F_OK), -1);

	/* Not through a shell: a name with a space is just a wrong path. */
	memcpy(saved, worker_exe, sizeof(saved));
	strncat(worker_exe, " x", sizeof(worker_exe) - strlen(worker_exe) - 1);
	rc = start(f, "bad", "ram:1M", &pid, &err);
	memcpy(worker_exe, saved, sizeof(saved));
	assert_int_equal(rc, -ENOENT);
	assert_non_null(strstr(err.msg, "worker bad: start "));
}

/* Already running: seen by liveness, and by the worker's own lock. */
static void test_already_running(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	char dir[128], path[160];
	struct worker_proc p;
	pid_t pid, pid2;

	assert_int_equal(start(f, "u2", "ram:1M", &pid, &err), 0);
	assert_int_equal(start(f, "u2", "ram:1M", &pid2, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "already running"));
	/*
	 * Without its pid file the worker is not found alive (that is the
	 * rule: the pid file names the holder), but the lock still keeps a
	 * second one out: the new worker says so, with EBUSY, over the
	 * readiness pipe; and the running worker's files stay.
	 */
	wdir(f, "u2", dir, sizeof(dir));
	snprintf(path, sizeof(path), "%s/pid", dir);
	assert_int_equal(unlink(path), 0);
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	assert_non_null(strstr(err.msg, "(no pid file)"));
	assert_int_equal(start(f, "u2", "ram:1M", &pid2, &err), -EBUSY);
	assert_non_null(strstr(err.msg, "worker u2: worker u2 is already "
					"running"));
	assert_int_equal(ctl_command(f->rundir, "u2", "unpause", 5000, &err),
			 0);
	/* And removing its files is refused while it holds the lock. */
	assert_int_equal(worker_remove_files(f->rundir, "u2", &err), -EBUSY);
	kill(pid, SIGKILL);
	assert_int_equal(child_reap(pid, 5000, NULL), 0);
}

/* A killed worker: a zombie, then reaped, then a stale directory. */
static void test_dead_worker(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	struct ctl_client cl;
	struct worker_proc p;
	struct worker_status st;
	struct worker_stopped how;
	char dir[128], msg[128];
	pid_t pid;
	int status = 0;

	assert_int_equal(start(f, "u3", "ram:1M", &pid, &err), 0);
	wdir(f, "u3", dir, sizeof(dir));
	assert_int_equal(kill(pid, SIGKILL), 0);
	/* Our child, not reaped yet: a zombie, which is dead. */
	for (int i = 0; i < 500; i++) {
		char path[64], buf[256] = "";
		FILE *fp;

		snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
		fp = fopen(path, "r");
		if (!fp)
			break;
		if (!fgets(buf, sizeof(buf), fp))
			buf[0] = '\0';
		fclose(fp);
		if (strstr(buf, ") Z "))
			break;
		usleep(10000);
	}
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	assert_int_equal(p.file_pid, pid);
	snprintf(msg, sizeof(msg), "(pid %d is gone)", (int)pid);
	assert_non_null(strstr(err.msg, msg));
	assert_int_equal(child_reap(pid, 5000, &status), 0);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);

	memset(&st, 0, sizeof(st));
	assert_int_equal(worker_list(f->rundir, 5000, count_cb, &st, &err), 0);
	assert_false(st.live);
	assert_string_equal(st.state, "dead");
	snprintf(msg, sizeof(msg), "stale pid %d", (int)pid);
	assert_string_equal(st.why, msg);
	assert_int_equal(ctl_client_open(&cl, f->rundir, "u3", 1000, &err),
			 -ECONNREFUSED);
	ctl_client_close(&cl);

	assert_int_equal(worker_stop(f->rundir, "u3", 5000, &how, &err), 0);
	assert_int_equal(how.how, WORKER_WAS_STALE);
	snprintf(msg, sizeof(msg),
		 "worker u3: stale (pid %d is dead); removed its files",
		 (int)pid);
	assert_string_equal(how.note, msg);
	assert_int_equal(access(dir, F_OK), -1);
}

/*
 * Hand-made directories: the pid file names a live process that does
 * not hold the lock (a recycled pid), then one that does.
 */
static void test_recycled_pid(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	struct worker_proc p;
	struct worker_stopped how;
	char dir[128], path[160], line[32], msg[128];
	int fd, lock_fd;
	pid_t other;

	wdir(f, "r1", dir, sizeof(dir));
	assert_int_equal(mkdir(dir, 0700), 0);
	/* No lock, no pid file. */
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	assert_non_null(strstr(err.msg, "(no pid file)"));
	assert_string_equal(p.why, "no pid file");
	snprintf(path, sizeof(path), "%s/pid", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "garbage\n", 8), 8);
	close(fd);
	assert_int_equal(worker_live(dir, &p, &err), -EINVAL);

	/* A live process that is not the worker: a sleeping child. */
	other = fork();
	assert_true(other >= 0);
	if (other == 0)
		child_sleep();
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	snprintf(line, sizeof(line), "%d\n", (int)other);
	assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	close(fd);
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	assert_non_null(strstr(err.msg, "(no lock)"));
	snprintf(path, sizeof(path), "%s/lock", dir);
	lock_fd = open(path, O_RDWR | O_CREAT, 0600);
	assert_true(lock_fd >= 0);
	close(lock_fd);
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	snprintf(msg, sizeof(msg), "pid %d does not hold its lock", (int)other);
	assert_string_equal(p.why, msg);
	assert_non_null(strstr(err.msg, msg));
	assert_int_equal(p.file_pid, other);
	kill(other, SIGKILL);
	assert_int_equal(child_reap(other, 5000, NULL), 0);

	/* Now the pid file names us, and we hold the lock: alive. */
	snprintf(path, sizeof(path), "%s/pid", dir);
	fd = open(path, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	snprintf(line, sizeof(line), "%d\n", (int)getpid());
	assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	close(fd);
	snprintf(path, sizeof(path), "%s/lock", dir);
	assert_int_equal(lockfile_take(path, 0, &lock_fd, &err), 0);
	assert_int_equal(worker_live(dir, &p, &err), 0);
	assert_int_equal(p.pid, getpid());
	fd = worker_pidfd(&p);
	assert_true(fd >= 0 || fd == -ENOSYS);
	if (fd >= 0) {
		assert_int_equal(pidfd_wait(fd, 0), -ETIMEDOUT);
		close(fd);
	}
	/* A start time that is not this process's: not the same process. */
	p.start++;
	fd = worker_pidfd(&p);
	assert_true(fd == -ESRCH || fd == -ENOSYS);
	/* Alive, but no control socket: left alone. */
	assert_int_equal(worker_stop(f->rundir, "r1", 1000, &how, &err),
			 -ENOENT);
	assert_non_null(strstr(err.msg, "worker r1: unreachable (pid "));
	assert_non_null(strstr(err.msg, "not touching it"));
	assert_int_equal(access(dir, F_OK), 0);
	close(lock_fd);
	/* Let go of it: dead, and stop removes it. */
	assert_int_equal(worker_stop(f->rundir, "r1", 1000, &how, &err), 0);
	assert_int_equal(how.how, WORKER_WAS_STALE);
	assert_int_equal(access(dir, F_OK), -1);
}

/*
 * test-ctl-client --hold-then-die LOCK: what a multi-threaded worker
 * killed leaves for a moment: its main thread a zombie while another
 * thread, still exiting, holds the lock.  The thread ends the process
 * 500 ms after the main thread is gone.
 */
static void *hold_thread(void *arg)
{
	(void)arg;
	usleep(500000);
	_exit(0);
}

static int hold_then_die(const char *lock)
{
	pthread_t t;
	int fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);

	if (fd < 0 || flock(fd, LOCK_EX) < 0 ||
	    pthread_create(&t, NULL, hold_thread, NULL) != 0)
		return 1;
	pthread_exit(NULL);
}

/* A dead worker's last thread still holds the lock: dead means free. */
static void test_dying_threads(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	struct worker_proc p;
	char dir[128], path[160], line[32];
	int fd, lock_fd = -1, zombie = 0;
	pid_t pid;

	wdir(f, "d1", dir, sizeof(dir));
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/lock", dir);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl(self_exe, self_exe, "--hold-then-die", path,
		      (char *)NULL);
		_exit(1);
	}
	/* Its main thread gone, its other thread not yet. */
	for (int i = 0; i < 400 && !zombie; i++) {
		char sp[64], buf[256] = "";
		FILE *fp;

		snprintf(sp, sizeof(sp), "/proc/%d/stat", (int)pid);
		fp = fopen(sp, "r");
		if (fp && fgets(buf, sizeof(buf), fp))
			zombie = strstr(buf, ") Z ") != NULL;
		if (fp)
			fclose(fp);
		if (!zombie)
			usleep(5000);
	}
	assert_true(zombie);
	snprintf(path, sizeof(path), "%s/pid", dir);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	snprintf(line, sizeof(line), "%d\n", (int)pid);
	assert_int_equal(write(fd, line, strlen(line)), (ssize_t)strlen(line));
	close(fd);
	assert_int_equal(worker_live(dir, &p, &err), -ESRCH);
	/* Told dead only once the lock is free: a new worker may start. */
	snprintf(path, sizeof(path), "%s/lock", dir);
	assert_int_equal(lockfile_take(path, LOCKFILE_NONBLOCK, &lock_fd, &err),
			 0);
	close(lock_fd);
	assert_int_equal(child_reap(pid, 5000, NULL), 0);
}

static void test_lockfile(void **state)
{
	struct fixture *f = *state;
	struct bks_error err = {0};
	char path[128];
	int a = -1, b = -1;

	snprintf(path, sizeof(path), "%s/x.lock", f->rundir);
	assert_int_equal(lockfile_take(path, LOCKFILE_NONBLOCK, &a, &err),
			 -ENOENT);
	assert_int_equal(a, -1);
	assert_int_equal(lockfile_take(path, LOCKFILE_CREATE, &a, &err), 0);
	assert_true(a >= 0);
	/* flock is per open file: a second open conflicts, even here. */
	assert_int_equal(lockfile_take(path, LOCKFILE_NONBLOCK, &b, &err),
			 -EWOULDBLOCK);
	assert_non_null(strstr(err.msg, "locked by another process"));
	/* Removed by its holder: the next taker gets a fresh file. */
	assert_int_equal(unlink(path), 0);
	assert_int_equal(
	    lockfile_take(path, LOCKFILE_CREATE | LOCKFILE_NONBLOCK, &b, &err),
	    0);
	close(a);
	close(b);
}

static void test_child_reap(void **state)
{
	char how[64];
	int status = 0;
	pid_t pid;
	(void)state;

	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_sleep();
	/* It does not exit by itself: killed at the deadline. */
	assert_int_equal(child_reap(pid, 50, &status), 0);
	child_describe(status, how, sizeof(how));
	assert_string_equal(how, "killed by signal 9 (Killed)");
	assert_int_equal(child_reap(pid, 50, &status), -ECHILD);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		execl("/bin/sh", "sh", "-c", "exit 3", (char *)NULL);
		_exit(1);
	}
	assert_int_equal(child_reap(pid, 5000, &status), 0);
	child_describe(status, how, sizeof(how));
	assert_string_equal(how, "exited with status 3");

	/* Without waiting: still running, then gone. */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		child_sleep();
	assert_int_equal(child_try_reap(pid, &status), 0);
	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(child_wait(pid, &status), 0);
	assert_true(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL);
	assert_int_equal(child_try_reap(pid, &status), -ECHILD);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_errno_names),
	    cmocka_unit_test_setup_teardown(test_lifecycle, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_start_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_already_running, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_dead_worker, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_recycled_pid, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_dying_threads, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_lockfile, setup, teardown),
	    cmocka_unit_test(test_child_reap),
	};
	char *slash;

	if (argc == 3 && strcmp(argv[1], "--hold-then-die") == 0)
		return hold_then_die(argv[2]);
	self_exe = argv[0];
	/* build/tests/unit/test-ctl-client -> build/bin/blkstack-worker */
	snprintf(worker_exe, sizeof(worker_exe), "%s", argv[0]);
	slash = strrchr(worker_exe, '/');
	if (slash)
		*slash = '\0';
	else
		snprintf(worker_exe, sizeof(worker_exe), ".");
	strncat(worker_exe, "/../../bin/blkstack-worker",
		sizeof(worker_exe) - strlen(worker_exe) - 1);
	/*
	 * Bare workers (supervise = no): these tests are about the worker
	 * as our child, its zombie and its stale files; the supervisor has
	 * tests/bats/supervise.bats.
	 */
	{
		char conf[] = "/tmp/test-ctl-client-conf.XXXXXX";
		int fd = mkstemp(conf), rc;

		if (fd < 0 || write(fd, "supervise = no\n", 15) != 15) {
			perror("test-ctl-client: configuration file");
			return 1;
		}
		close(fd);
		setenv("BLKSTACK_CONF", conf, 1);
		rc = cmocka_run_group_tests(tests, NULL, NULL);
		unlink(conf);
		return rc;
	}
}
