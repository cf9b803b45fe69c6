/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xs-toolstack: run a hotplug script as libxl's device_hotplug() does.
 *
 * fork + execve with argv {script, action}; the environment is ours minus
 * every hotplug variable, plus those the caller sets; a deadline after
 * which the script (the script only, as libxl does) gets SIGKILL.  The
 * wait sleeps in poll(2) on a pidfd (or, where there is no pidfd_open, a
 * signalfd for SIGCHLD), so an exit is seen at once, without polling.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "xs-toolstack.h"

extern char **environ;

/* Variables libxl sets for v1 or v2: never inherited from our caller. */
static const char *const hotplug_vars[] = {
    "HOTPLUG_PATH", "BACKEND_PATH", "script",
    "XENBUS_TYPE",  "XENBUS_PATH",  "XENBUS_BASE_PATH",
};

static bool is_hotplug_var(const char *entry)
{
	size_t i, len;

	for (i = 0; i < sizeof(hotplug_vars) / sizeof(hotplug_vars[0]); i++) {
		len = strlen(hotplug_vars[i]);
		if (!strncmp(entry, hotplug_vars[i], len) && entry[len] == '=')
			return true;
	}
	return false;
}

/* The environment of the script, in *envp (free the array only). */
static int build_env(const char *const *set, char ***envp)
{
	char **env = NULL;
	size_t n = 0, nset = 0, i;
	int ret = 0;

	*envp = NULL;
	while (environ && environ[n])
		n++;
	while (set && set[nset])
		nset++;
	env = calloc(n + nset + 1, sizeof(*env));
	if (!env) {
		ret = -ENOMEM;
		ts_err("script environment: %s", strerror(-ret));
		goto out;
	}
	n = 0;
	for (i = 0; environ && environ[i]; i++) {
		if (!is_hotplug_var(environ[i]))
			env[n++] = environ[i];
	}
	for (i = 0; i < nset; i++)
		env[n++] = (char *)set[i];
	env[n] = NULL;
	*envp = env;
out:
	return ret;
}

/* Milliseconds of CLOCK_MONOTONIC. */
static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * In the child, between fork and exec: only async-signal-safe calls.
 * An exec failure is reported to the parent as an errno on ERRFD.
 */
static void __attribute__((noreturn))
exec_child(const struct xst_run *r, char *const envp[], int nullfd, int errfd)
{
	char *argv[] = {(char *)r->script, (char *)r->action, NULL};
	sigset_t none;
	ssize_t n;
	int e;

	if (dup2(nullfd, STDIN_FILENO) < 0)
		goto fail;
	/* Entitled to defaults, as libxl__exec() says. */
	signal(SIGPIPE, SIG_DFL);
	sigemptyset(&none);
	sigprocmask(SIG_SETMASK, &none, NULL);
	execve(r->script, argv, envp);
fail:
	e = errno;
	n = write(errfd, &e, sizeof(e));
	(void)n;
	_exit(TS_EXIT_NOENT);
}

/* Reap PID, retrying on EINTR; *ws is its wait status. */
static int reap(pid_t pid, int *ws)
{
	int ret = 0;

	while (waitpid(pid, ws, 0) < 0) {
		if (errno == EINTR)
			continue;
		ret = -errno;
		ts_err("waitpid %d: %s", (int)pid, strerror(-ret));
		goto out;
	}
out:
	return ret;
}

/*
 * Poll FD for readability until DEADLINE (CLOCK_MONOTONIC ms): 1 when
 * readable, 0 at the deadline.
 */
static int poll_until(int fd, long long deadline)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	long long left;
	int ret = 0;

	for (;;) {
		left = deadline - now_ms();
		if (left <= 0) {
			ret = 0;
			goto out;
		}
		ret = poll(&pfd, 1, left > INT_MAX ? INT_MAX : (int)left);
		if (ret > 0) {
			ret = 1;
			goto out;
		}
		if (ret < 0 && errno != EINTR) {
			ret = -errno;
			ts_err("poll on child: %s", strerror(-ret));
			goto out;
		}
	}
out:
	return ret;
}

/*
 * The wait_*() functions wait for child PID until DEADLINE.  They return 1
 * when it exited and was reaped (wait status in *ws), 0 at the deadline
 * (the child still runs), or -errno.
 */

/* A pidfd becomes readable when the child exits (Linux >= 5.3). */
static int wait_pidfd(int pidfd, pid_t pid, long long deadline, int *ws)
{
	int ret = 0;

	ret = poll_until(pidfd, deadline);
	if (ret <= 0)
		goto out;
	ret = reap(pid, ws);
	if (ret)
		goto out;
	ret = 1;
out:
	return ret;
}

/*
 * Without pidfd_open (older kernels, valgrind): SIGCHLD through a signalfd.
 * SIGCHLD is blocked before the first waitpid, so an exit after that check
 * stays pending on the signalfd and is never lost.
 */
static int wait_sigchld(pid_t pid, long long deadline, int *ws)
{
	struct signalfd_siginfo si;
	sigset_t chld, old;
	bool masked = false;
	int sfd = -1;
	pid_t done;
	ssize_t n;
	int ret = 0;

	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	if (sigprocmask(SIG_BLOCK, &chld, &old)) {
		ret = -errno;
		ts_err("block SIGCHLD: %s", strerror(-ret));
		goto out;
	}
	masked = true;
	sfd = signalfd(-1, &chld, SFD_CLOEXEC);
	if (sfd < 0) {
		ret = -errno;
		ts_err("signalfd: %s", strerror(-ret));
		goto out;
	}
	for (;;) {
		done = waitpid(pid, ws, WNOHANG);
		if (done == pid) {
			ret = 1;
			goto out;
		}
		if (done < 0 && errno != EINTR) {
			ret = -errno;
			ts_err("waitpid %d: %s", (int)pid, strerror(-ret));
			goto out;
		}
		ret = poll_until(sfd, deadline);
		if (ret <= 0)
			goto out;
		/* Drain: SIGCHLDs coalesce, waitpid tells what happened. */
		n = read(sfd, &si, sizeof(si));
		(void)n;
	}
out:
	if (sfd >= 0)
		close(sfd);
	if (masked)
		sigprocmask(SIG_SETMASK, &old, NULL);
	return ret;
}

/* Progress line: "xs-toolstack: v2 add: HOTPLUG_PATH=... -> exit 0". */
static void progress(const struct xst_run *r, const char *outcome, int value,
		     const char *unit)
{
	size_t i;

	if (r->quiet)
		return;
	printf("%s: %s %s:", TS_NAME, r->mode, r->action);
	for (i = 0; r->set && r->set[i]; i++)
		printf(" %s", r->set[i]);
	printf(" -> %s %d%s\n", outcome, value, unit);
	fflush(stdout);
}

int xst_run(const struct xst_run *r, int *status)
{
	char **envp = NULL;
	int errpipe[2] = {-1, -1};
	int nullfd = -1, pidfd = -1;
	pid_t pid = -1;
	long long deadline;
	int ws = 0, e = 0;
	ssize_t n;
	int ret = 0;

	*status = TS_EXIT_INTERNAL;
	ret = build_env(r->set, &envp);
	if (ret)
		goto out;
	nullfd = open("/dev/null", O_RDONLY | O_CLOEXEC);
	if (nullfd < 0) {
		ret = -errno;
		ts_err("open /dev/null: %s", strerror(-ret));
		goto out;
	}
	if (pipe2(errpipe, O_CLOEXEC)) {
		ret = -errno;
		ts_err("pipe: %s", strerror(-ret));
		goto out;
	}
	/* Our progress lines come before anything the script prints. */
	fflush(stdout);
	fflush(stderr);
	pid = fork();
	if (pid < 0) {
		ret = -errno;
		ts_err("fork for %s %s: %s", r->script, r->action,
		       strerror(-ret));
		goto out;
	}
	if (pid == 0)
		exec_child(r, envp, nullfd, errpipe[1]);
	close(errpipe[1]);
	errpipe[1] = -1;

	/* EOF: the exec happened.  An errno: it failed. */
	do {
		n = read(errpipe[0], &e, sizeof(e));
	} while (n < 0 && errno == EINTR);
	if (n == sizeof(e)) {
		ret = reap(pid, &ws);
		pid = -1;
		if (ret)
			goto out;
		ret = -e;
		*status = e == ENOENT ? TS_EXIT_NOENT : TS_EXIT_NOEXEC;
		ts_err("exec %s: %s", r->script, strerror(e));
		goto out;
	}

	deadline = now_ms() + (long long)r->timeout * 1000;
	pidfd = (int)syscall(SYS_pidfd_open, pid, 0);
	if (pidfd >= 0) {
		ret = wait_pidfd(pidfd, pid, deadline, &ws);
	} else if (errno == ENOSYS) {
		ret = wait_sigchld(pid, deadline, &ws);
	} else {
		ret = -errno;
		ts_err("pidfd_open %d: %s", (int)pid, strerror(-ret));
		goto out;
	}
	if (ret < 0)
		goto out;
	if (ret == 0) {
		/* Like libxl: SIGKILL to the script alone, then reap it. */
		kill(pid, SIGKILL);
		ret = reap(pid, &ws);
		pid = -1;
		if (ret)
			goto out;
		ret = -ETIMEDOUT;
		*status = TS_EXIT_TIMEOUT;
		progress(r, "timed out after", (int)r->timeout, "s");
		ts_err("%s %s timed out after %us, killed", r->script,
		       r->action, r->timeout);
		goto out;
	}
	pid = -1; /* reaped */
	if (WIFSIGNALED(ws)) {
		*status = 128 + WTERMSIG(ws);
		progress(r, "killed by signal", WTERMSIG(ws), "");
	} else {
		*status = WEXITSTATUS(ws);
		progress(r, "exit", *status, "");
	}
	ret = 0;
out:
	if (pid > 0) {
		/* Failed while the script ran: do not leave it behind. */
		kill(pid, SIGKILL);
		reap(pid, &ws);
	}
	if (pidfd >= 0)
		close(pidfd);
	if (errpipe[0] >= 0)
		close(errpipe[0]);
	if (errpipe[1] >= 0)
		close(errpipe[1]);
	if (nullfd >= 0)
		close(nullfd);
	free(envp);
	return ret;
}
