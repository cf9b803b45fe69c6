/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's life under its supervisor (sup.h): spawn, readiness of a
 * restarted worker, the channel, exit and its classification, back-off
 * and restart, give-up, the hang watch, and the bounded stop.  All of it
 * runs from the supervisor's loop; nothing here sleeps.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <syslog.h>
#include <unistd.h>

#include "child.h"
#include "small-file.h"
#include "sup-rebind.h"
#include "sup-xs.h"
#include "sup.h"
#include "worker-run.h"

#define NS_PER_MS 1000000ull

int sup_spawn(struct sup *s, struct bks_error *err)
{
	const struct worker_spec ws = {
	    .exe = s->worker_exe,
	    .rundir = s->rundir,
	    .name = s->name,
	    .chain = s->chain,
	    .read_only = s->read_only,
	    .fuse = s->fuse,
	};
	char rfd[16], cfd[16], ffd[16];
	const char *argv[26 + 64];
	int pipefd[2] = {-1, -1}, sv[2] = {-1, -1}, keep[3], nkeep = 2, argc,
	    rc;

	if (s->nextra > 64)
		return bks_error_setmsg(err, E2BIG,
					"too many worker arguments");
	if (pipe2(pipefd, O_CLOEXEC) < 0)
		return bks_error_set(err, errno, "pipe");
	if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
		rc = bks_error_set(err, errno, "socketpair");
		goto out;
	}
	for (int i = 0; i < 2; i++) {
		pipefd[i] = worker_fd_above_stdio(pipefd[i]);
		sv[i] = worker_fd_above_stdio(sv[i]);
		if (pipefd[i] < 0 || sv[i] < 0) {
			rc = bks_error_set(err, EMFILE, "descriptors");
			goto out;
		}
	}
	snprintf(rfd, sizeof(rfd), "%d", pipefd[1]);
	snprintf(cfd, sizeof(cfd), "%d", sv[1]);
	argc = worker_args(argv, s->worker_exe, &ws, rfd);
	argv[argc++] = "--supervisor-fd";
	argv[argc++] = cfd;
	for (int i = 0; i < s->nextra; i++)
		argv[argc++] = s->extra[i];
	keep[0] = pipefd[1];
	keep[1] = sv[1];
	/* The FUSE session a dead worker left: the next one adopts it. */
	if (s->fuse_fd >= 0) {
		snprintf(ffd, sizeof(ffd), "%d", s->fuse_fd);
		argv[argc++] = "--fuse-fd";
		argv[argc++] = ffd;
		keep[nkeep++] = s->fuse_fd;
	}
	argv[argc] = NULL;
	rc = worker_spawn(s->worker_exe, argv, keep, (size_t)nkeep, &s->pid,
			  err);
	if (rc < 0)
		goto out;
	/* Our child, not reaped: its pid cannot be reused before we do. */
	s->pidfd = pidfd_open(s->pid, 0);
	if (s->pidfd < 0) {
		rc = bks_error_set(err, errno, "pidfd_open %d", (int)s->pid);
		kill(s->pid, SIGKILL);
		child_wait(s->pid, NULL);
		s->pid = 0;
		goto out;
	}
	s->ready_fd = pipefd[0];
	pipefd[0] = -1;
	s->chan_fd = sv[0];
	sv[0] = -1;
	fcntl(s->chan_fd, F_SETFL, O_NONBLOCK);
	s->ready = false;
	s->said_stopping = false;
	s->have_beat = false;
	s->kill_reason[0] = '\0';
	s->ready_len = 0;
	s->started_ns = bks_now_ns();
	s->last_msg_ns = s->started_ns;
	s->st.worker_pid = s->pid;
	rc = 0;
out:
	for (int i = 0; i < 2; i++) {
		if (pipefd[i] >= 0)
			close(pipefd[i]);
		if (sv[i] >= 0)
			close(sv[i]);
	}
	return rc;
}

/* SIGKILL the worker, and say why it died. */
static void kill_worker(struct sup *s, const char *why)
{
	if (s->pid <= 0 || s->pidfd < 0)
		return;
	if (!s->kill_reason[0])
		snprintf(s->kill_reason, sizeof(s->kill_reason), "%s", why);
	pidfd_send_signal(s->pidfd, SIGKILL, NULL, 0);
}

static void close_ready(struct sup *s)
{
	if (s->ready_fd < 0)
		return;
	bks_watch_del(&s->ready_watch);
	close(s->ready_fd);
	s->ready_fd = -1;
}

void sup_forget_worker(struct sup *s)
{
	close_ready(s);
	if (s->chan_fd >= 0) {
		bks_watch_del(&s->chan_watch);
		close(s->chan_fd);
		s->chan_fd = -1;
	}
	if (s->pidfd >= 0) {
		bks_watch_del(&s->pid_watch);
		close(s->pidfd);
		s->pidfd = -1;
	}
	bks_timer_cancel(&s->ready_timer);
	s->pid = 0;
	s->st.worker_pid = 0;
}

/*
 * One packet of the channel into msg (size bytes), and the descriptor
 * that came with it into *fd (-1: none; any more are closed).
 */
static ssize_t recv_packet(int chan, char *msg, size_t size, int *fd)
{
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(4 * sizeof(int))];
	} c;
	struct iovec iov = {.iov_base = msg, .iov_len = size};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = c.buf,
			    .msg_controllen = sizeof(c.buf)};
	ssize_t n = recvmsg(chan, &mh, MSG_DONTWAIT | MSG_CMSG_CLOEXEC);

	*fd = -1;
	if (n < 0)
		return n;
	for (struct cmsghdr *cm = CMSG_FIRSTHDR(&mh); cm;
	     cm = CMSG_NXTHDR(&mh, cm)) {
		size_t nfd;

		if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS)
			continue;
		nfd = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
		for (size_t i = 0; i < nfd; i++) {
			int f;

			memcpy(&f, CMSG_DATA(cm) + i * sizeof(int), sizeof(f));
			if (*fd < 0)
				*fd = f;
			else
				close(f);
		}
	}
	return n;
}

/* Keep fd, the worker's /dev/fuse (above stdio), in place of any other. */
static void keep_fuse_fd(struct sup *s, int fd)
{
	fd = worker_fd_above_stdio(fd);
	if (fd < 0) {
		sup_log(s, LOG_ERR, "FUSE descriptor: %s", strerror(EMFILE));
		return;
	}
	if (s->fuse_fd >= 0)
		close(s->fuse_fd);
	s->fuse_fd = fd;
	sup_log(s, LOG_INFO,
		"holding the worker's FUSE session: it outlives a crash");
}

/* Every message the channel holds; EOF or an error ends the watch. */
static void drain_channel(struct sup *s)
{
	char msg[SUP_MSG_MAX + 1];

	while (s->chan_fd >= 0) {
		int fd;
		ssize_t n = recv_packet(s->chan_fd, msg, sizeof(msg), &fd);
		struct sup_beat b;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno == EAGAIN)
			return;
		if (n <= 0) {
			/* The worker closed it: its exit comes on the pidfd. */
			bks_watch_del(&s->chan_watch);
			close(s->chan_fd);
			s->chan_fd = -1;
			return;
		}
		s->last_msg_ns = bks_now_ns();
		switch (sup_msg_parse(msg, (size_t)n, &b)) {
		case SUP_MSG_STOPPING:
			s->said_stopping = true;
			/* A graceful stop ends the file system with it. */
			if (s->fuse_fd >= 0) {
				close(s->fuse_fd);
				s->fuse_fd = -1;
			}
			break;
		case SUP_MSG_FUSE_FD:
			if (fd >= 0)
				keep_fuse_fd(s, fd);
			fd = -1;
			break;
		case SUP_MSG_BEAT:
			s->beat = b;
			s->have_beat = true;
			break;
		default:
			break; /* a newer worker's message: ignored */
		}
		if (fd >= 0)
			close(fd);
	}
}

static void on_channel(struct bks_watch *w, uint32_t events)
{
	(void)events;
	drain_channel(w->opaque);
}

/* ---- restarted worker's readiness ---------------------------------------- */

static void on_ready(struct bks_watch *w, uint32_t events)
{
	struct sup *s = w->opaque;
	char note[SUP_REASON_MAX];
	ssize_t n;
	int count;

	(void)events;
	n = read(s->ready_fd, s->ready_buf + s->ready_len,
		 sizeof(s->ready_buf) - 1 - s->ready_len);
	if (n < 0 && (errno == EINTR || errno == EAGAIN))
		return;
	if (n > 0)
		s->ready_len += (size_t)n;
	s->ready_buf[s->ready_len] = '\0';
	if (strncmp(s->ready_buf, "ok\n", 3) == 0) {
		close_ready(s);
		bks_timer_cancel(&s->ready_timer);
		s->ready = true;
		s->last_msg_ns = bks_now_ns();
		s->phase = SUP_RUNNING;
		s->st.state = "running";
		s->st.restarts++;
		sup_log(s, LOG_NOTICE,
			"restarted (pid %d, restart %u) after: %s", (int)s->pid,
			s->st.restarts, s->st.last_exit);
		count = sup_rebind_restarted(s->nbd_sock, note, sizeof(note));
		snprintf(s->st.reconnect, sizeof(s->st.reconnect), "%s", note);
		sup_log(s, count < 0 ? LOG_ERR : LOG_INFO, "devices: %s", note);
		sup_save(s);
		return;
	}
	if (n > 0 && s->ready_len < sizeof(s->ready_buf) - 1)
		return;
	/* EOF (or too much) without "ok": it failed; its exit follows. */
	if (strncmp(s->ready_buf, "error: ", 7) == 0) {
		s->ready_buf[strcspn(s->ready_buf, "\n")] = '\0';
		bks_sanitize_line(s->ready_buf);
		snprintf(s->kill_reason, sizeof(s->kill_reason),
			 "restart failed: %.200s", s->ready_buf + 7);
	}
	close_ready(s);
}

static void ready_timeout(struct bks_timer *t)
{
	struct sup *s = t->opaque;

	kill_worker(s, "restart failed: not ready in time");
}

/* ---- exit, restart, give-up ---------------------------------------------- */

/* Leave the loop; main removes the files (not after a give-up). */
static void finish(struct sup *s, int code)
{
	bks_timer_cancel(&s->tick_timer);
	bks_timer_cancel(&s->restart_timer);
	bks_timer_cancel(&s->stop_timer);
	s->exit_code = code;
	bks_loop_stop(s->loop);
}

static void give_up(struct sup *s)
{
	char msg[SUP_REASON_MAX + 128], note[SUP_REASON_MAX];
	struct bks_error err = {0};

	s->phase = SUP_GAVE_UP;
	s->st.state = "gave-up";
	snprintf(s->st.gave_up, sizeof(s->st.gave_up),
		 "gave up after %u crashes in %u s: last %.160s", s->crashes.n,
		 s->pol.restart_window, s->st.last_exit);
	sup_log(s, LOG_ERR, "%s", s->st.gave_up);
	if (s->xs_error_path) {
		snprintf(msg, sizeof(msg), "worker %s: %s", s->name,
			 s->st.gave_up);
		if (sup_xs_write_error(s->xs_error_path, msg, &err) < 0)
			sup_log(s, LOG_ERR, "hotplug-error: %s", err.msg);
	}
	sup_rebind_gave_up(s->nbd_sock, note, sizeof(note));
	snprintf(s->st.reconnect, sizeof(s->st.reconnect), "%s", note);
	sup_log(s, LOG_INFO, "devices: %s", note);
	sup_save(s);
	finish(s, 1);
}

static void do_restart(struct bks_timer *t)
{
	struct sup *s = t->opaque;
	struct bks_error err = {0};
	unsigned int delay;

	if (s->phase != SUP_RESTARTING)
		return;
	if (sup_spawn(s, &err) == 0 && sup_watch(s, false, &err) == 0) {
		sup_save(s);
		return;
	}
	/* Counted as a crash of a worker that never ran. */
	sup_forget_worker(s);
	snprintf(s->st.last_exit, sizeof(s->st.last_exit),
		 "restart failed: %.200s", err.msg);
	sup_log(s, LOG_ERR, "%s", s->st.last_exit);
	if (sup_crash(&s->crashes, &s->pol, bks_now_ns(), 0, &delay)) {
		give_up(s);
		return;
	}
	bks_timer_arm(&s->restart_timer, (uint64_t)delay * NS_PER_MS);
}

static void on_exit_(struct bks_watch *w, uint32_t events)
{
	struct sup *s = w->opaque;
	char how[128];
	uint64_t now = bks_now_ns(), ran = now - s->started_ns;
	unsigned int delay;
	int status = 0;

	(void)events;
	if (child_try_reap(s->pid, &status) == 0)
		return; /* not yet (a spurious wake-up) */
	drain_channel(s);
	child_describe(status, how, sizeof(how));
	if (s->phase == SUP_STOPPING || s->said_stopping) {
		sup_log(s, LOG_INFO, "worker pid %d stopped (%s)", (int)s->pid,
			how);
		sup_forget_worker(s);
		s->phase = SUP_STOPPING;
		s->st.state = "stopping";
		/* Our stop succeeds; a stop of its own says how it went. */
		finish(s, s->stop_deadline_ns || (WIFEXITED(status) &&
						  WEXITSTATUS(status) == 0)
			      ? 0
			      : 1);
		return;
	}
	if (s->kill_reason[0])
		snprintf(s->st.last_exit, sizeof(s->st.last_exit), "%s",
			 s->kill_reason);
	else
		snprintf(s->st.last_exit, sizeof(s->st.last_exit), "%s", how);
	sup_log(s, LOG_ERR, "worker pid %d died: %s", (int)s->pid,
		s->st.last_exit);
	sup_forget_worker(s);
	s->st.hung[0] = '\0';
	if (sup_crash(&s->crashes, &s->pol, now, ran, &delay)) {
		give_up(s);
		return;
	}
	s->phase = SUP_RESTARTING;
	s->st.state = "restarting";
	sup_save(s);
	sup_log(s, LOG_INFO, "restarting in %u ms", delay);
	bks_timer_arm(&s->restart_timer, (uint64_t)delay * NS_PER_MS);
}

/* ---- hang watch and stop --------------------------------------------------
 */

static void tick(struct bks_timer *t)
{
	struct sup *s = t->opaque;
	char why[SUP_REASON_MAX - 16];
	uint64_t now = bks_now_ns();

	bks_timer_arm(&s->tick_timer, SUP_TICK_NS);
	if (s->pid <= 0)
		return;
	if (s->phase == SUP_STOPPING) {
		if (now >= s->stop_deadline_ns)
			kill_worker(s, "did not stop in time");
		else if (now - s->last_msg_ns >= SUP_STOP_SILENT_MS * NS_PER_MS)
			kill_worker(s, "silent while stopping");
		return;
	}
	if (s->phase != SUP_RUNNING || !s->ready)
		return;
	if (sup_hung(now, s->last_msg_ns, s->have_beat ? &s->beat : NULL,
		     s->pol.hang_timeout, why, sizeof(why))) {
		if (!s->st.hung[0]) {
			snprintf(s->st.hung, sizeof(s->st.hung), "%s", why);
			sup_log(s, LOG_WARNING, "pid %d is hung: %s%s",
				(int)s->pid, why,
				s->pol.hang_restart ? "; killing it" : "");
			sup_save(s);
		}
		if (s->pol.hang_restart) {
			char reason[SUP_REASON_MAX];

			snprintf(reason, sizeof(reason), "hung: %.200s",
				 s->st.hung);
			kill_worker(s, reason);
		}
	} else if (s->st.hung[0]) {
		sup_log(s, LOG_NOTICE, "pid %d is no longer hung", (int)s->pid);
		s->st.hung[0] = '\0';
		sup_save(s);
	}
}

int sup_watch(struct sup *s, bool first_ready, struct bks_error *err)
{
	int rc;

	rc = bks_watch_add(s->loop, &s->pid_watch, s->pidfd, EPOLLIN, on_exit_,
			   s);
	if (rc == 0)
		rc = bks_watch_add(s->loop, &s->chan_watch, s->chan_fd, EPOLLIN,
				   on_channel, s);
	if (rc == 0 && !first_ready) {
		fcntl(s->ready_fd, F_SETFL, O_NONBLOCK);
		rc = bks_watch_add(s->loop, &s->ready_watch, s->ready_fd,
				   EPOLLIN, on_ready, s);
		bks_timer_arm(&s->ready_timer,
			      (uint64_t)WORKER_READY_TIMEOUT_MS * NS_PER_MS);
	}
	if (rc < 0)
		return bks_error_set(err, -rc, "watch the worker");
	if (first_ready) {
		close_ready(s);
		s->ready = true;
	}
	bks_timer_arm(&s->tick_timer, SUP_TICK_NS);
	return 0;
}

/* 'T' (stopped) or 't' (traced) in /proc/PID/stat: it cannot drain. */
static bool stopped(pid_t pid)
{
	char path[64], buf[512], *p;

	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (small_file_read(path, buf, sizeof(buf)) < 0)
		return false;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' && (p[2] == 'T' || p[2] == 't');
}

static void stop_timeout(struct bks_timer *t)
{
	kill_worker(t->opaque, "did not stop in time");
}

void sup_stop(struct sup *s)
{
	if (s->phase == SUP_STOPPING)
		return;
	s->phase = SUP_STOPPING;
	s->st.state = "stopping";
	s->stop_deadline_ns = bks_now_ns() + SUP_STOP_TIMEOUT_MS * NS_PER_MS;
	bks_timer_cancel(&s->restart_timer);
	sup_save(s);
	if (s->pid <= 0) {
		finish(s, 0);
		return;
	}
	sup_log(s, LOG_INFO, "stopping worker pid %d", (int)s->pid);
	s->last_msg_ns = bks_now_ns();
	/* A hung or stopped worker cannot drain: remove must not wait. */
	if (s->st.hung[0] || stopped(s->pid))
		kill_worker(s, "hung while stopping");
	else
		pidfd_send_signal(s->pidfd, SIGTERM, NULL, 0);
	bks_timer_arm(&s->stop_timer, SUP_STOP_TIMEOUT_MS * NS_PER_MS);
	/* A worker not yet ready is not beating: the deadline bounds it. */
	bks_timer_arm(&s->tick_timer, SUP_TICK_NS);
}

void sup_timers_init(struct sup *s)
{
	bks_timer_init(s->loop, &s->restart_timer, do_restart, s);
	bks_timer_init(s->loop, &s->tick_timer, tick, s);
	bks_timer_init(s->loop, &s->ready_timer, ready_timeout, s);
	bks_timer_init(s->loop, &s->stop_timer, stop_timeout, s);
}
