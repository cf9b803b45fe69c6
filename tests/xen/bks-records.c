/*
 * bks-records: the record writer of tests/xen (migration, save/restore).
 *
 *   bks-records write DEVICE [BASE_BYTES [INTERVAL_MS]]
 *       In the guest.  Writes record n (n = 0, 1, ...) into the 4 KiB slot
 *       n at BASE_BYTES of DEVICE with O_DIRECT|O_DSYNC, one every
 *       INTERVAL_MS (default 30), and prints "REC ack n" on stdout once
 *       the write has returned (the backend has acknowledged it, flushed).
 *       A record holds its sequence number, CLOCK_REALTIME in ns (the
 *       guest's wall clock, which Xen keeps across migration and
 *       save/restore) and the writer's start time (telling a rebooted
 *       guest's records from the first boot's).  A failed write is reported
 * ("REC error n: ...") and retried for the same n.  SIGTERM or SIGINT stops it:
 *       "REC stop last=n" (n = -1: none acknowledged).
 *
 *   bks-records check IMAGE [BASE_BYTES [FROM_SEQ]]
 *       In dom0, on the image file after the guest is gone (or on a
 *       block device: the guest's own disk, read back before it powers
 *       off, or a dom0 device on a format image).  Reads every
 *       slot and prints one line of key=value pairs:
 *         records=N    valid records in slots 0..N-1 (the contiguous run)
 *         last=S       the sequence number of the last of them (-1: none)
 *         bad=B        slots in the run that are torn or corrupt
 *         after_hole=H valid records found after the first empty slot
 *         other_run=O  records of another run of the writer than slot 0's
 *                      (the guest rebooted and started over)
 *         gap_ms=G gap_at=S        largest timestamp gap between
 *                                  consecutive records (S: the later one)
 *         from_gap_ms=G from_gap_at=S  the same over records >= FROM_SEQ
 *         back_ms=K    largest step back in time between consecutive records
 *         from_span_ms=P  time from record FROM_SEQ to the last record
 *         mean_ms=M    mean interval over the run
 *       Exit 0 when the file could be read; the caller judges the values.
 *
 * Exit status: 0, 1 on an error (with the operation, the object and the
 * errno text on stderr), 2 on bad usage.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SLOT  4096
#define MAGIC "BKSREC01"

/* The header of a record; the rest of the slot is filled with seq & 0xff. */
struct record {
	char magic[8];
	uint64_t seq;
	uint64_t ns;
	uint64_t run;	/* the writer's start time (ns): one per guest boot */
	uint64_t check; /* seq ^ ns ^ run ^ CHECK_SALT */
};

#define CHECK_SALT 0x626b737265633031ULL

static int usage(void)
{
	fprintf(stderr,
		"usage: bks-records write DEVICE [BASE_BYTES [INTERVAL_MS]]\n"
		"       bks-records check IMAGE [BASE_BYTES [FROM_SEQ]]\n");
	return 2;
}

/* parse_u64 TEXT OUT: a whole decimal number, or -EINVAL. */
static int parse_u64(const char *text, uint64_t *out)
{
	char *end = NULL;
	unsigned long long v;

	if (!text[0] || text[0] == '-')
		return -EINVAL;
	errno = 0;
	v = strtoull(text, &end, 10);
	if (errno || *end)
		return -EINVAL;
	*out = v;
	return 0;
}

static uint64_t clock_ns(clockid_t clock)
{
	struct timespec ts;

	clock_gettime(clock, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ULL + (uint64_t)ts.tv_nsec;
}

static void fill(unsigned char *buf, uint64_t seq, uint64_t run)
{
	struct record r;

	memset(buf, (int)(seq & 0xff), SLOT);
	memcpy(r.magic, MAGIC, sizeof(r.magic));
	r.seq = seq;
	r.ns = clock_ns(CLOCK_REALTIME);
	r.run = run;
	r.check = r.seq ^ r.ns ^ r.run ^ CHECK_SALT;
	memcpy(buf, &r, sizeof(r));
}

/* 1: a valid record, 0: an empty (all-zero) slot, -1: torn or corrupt. */
static int parse_slot(const unsigned char *buf, uint64_t slot, struct record *r)
{
	size_t i;

	memcpy(r, buf, sizeof(*r));
	if (memcmp(r->magic, MAGIC, sizeof(r->magic))) {
		for (i = 0; i < SLOT; i++)
			if (buf[i])
				return -1;
		return 0;
	}
	if (r->seq != slot ||
	    r->check != (r->seq ^ r->ns ^ r->run ^ CHECK_SALT))
		return -1;
	for (i = sizeof(*r); i < SLOT; i++)
		if (buf[i] != (unsigned char)(slot & 0xff))
			return -1;
	return 1;
}

static int cmd_write(const char *dev, uint64_t base, uint64_t interval_ms)
{
	unsigned char *buf = NULL;
	long long last = -1;
	unsigned int errors = 0;
	uint64_t seq = 0;
	sigset_t stop;
	struct timespec wait;
	uint64_t next, mono, run = clock_ns(CLOCK_REALTIME);
	int fd = -1, rc = 1, e;

	if (base % SLOT) {
		fprintf(stderr,
			"bks-records: base %" PRIu64 " is not a "
			"multiple of %d\n",
			base, SLOT);
		rc = 2;
		goto out;
	}
	sigemptyset(&stop);
	sigaddset(&stop, SIGTERM);
	sigaddset(&stop, SIGINT);
	if (sigprocmask(SIG_BLOCK, &stop, NULL) < 0) {
		fprintf(stderr, "bks-records: sigprocmask: %s\n",
			strerror(errno));
		goto out;
	}
	e = posix_memalign((void **)&buf, SLOT, SLOT);
	if (e) {
		fprintf(stderr, "bks-records: allocate %d bytes: %s\n", SLOT,
			strerror(e));
		buf = NULL;
		goto out;
	}
	fd = open(dev, O_WRONLY | O_DIRECT | O_DSYNC | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "bks-records: open %s (O_DIRECT|O_DSYNC): %s\n",
			dev, strerror(errno));
		goto out;
	}
	next = clock_ns(CLOCK_MONOTONIC);
	printf("REC start dev=%s base=%" PRIu64 " interval_ms=%" PRIu64
	       " clock=CLOCK_REALTIME\n",
	       dev, base, interval_ms);
	fflush(stdout);
	for (;;) {
		ssize_t n;

		fill(buf, seq, run);
		n = pwrite(fd, buf, SLOT, (off_t)(base + seq * SLOT));
		if (n == SLOT) {
			last = (long long)seq;
			printf("REC ack %" PRIu64 "\n", seq);
			seq++;
		} else if (++errors <= 5) {
			printf("REC error %" PRIu64 ": write %s at %" PRIu64
			       ": %s\n",
			       seq, dev, base + seq * SLOT,
			       n < 0 ? strerror(errno) : "short write");
		}
		fflush(stdout);
		/* Paced on deadlines: a slow write shortens the next wait;
		 * a write later than a whole interval starts the next at once
		 * (no burst to catch up). */
		next += interval_ms * 1000000ULL;
		mono = clock_ns(CLOCK_MONOTONIC);
		if (next < mono)
			next = mono;
		wait.tv_sec = (time_t)((next - mono) / 1000000000ULL);
		wait.tv_nsec = (long)((next - mono) % 1000000000ULL);
		if (sigtimedwait(&stop, NULL, &wait) >= 0)
			break;
		if (errno != EAGAIN && errno != EINTR) {
			fprintf(stderr, "bks-records: sigtimedwait: %s\n",
				strerror(errno));
			goto out;
		}
	}
	rc = 0;
out:
	printf("REC stop last=%lld\n", last);
	fflush(stdout);
	if (fd >= 0)
		close(fd);
	free(buf);
	return rc;
}

static int cmd_check(const char *image, uint64_t base, uint64_t from)
{
	unsigned char *buf = NULL;
	uint64_t slot, records = 0, bad = 0, after_hole = 0;
	uint64_t prev_ns = 0, first_ns = 0, gap = 0, gap_at = 0;
	uint64_t from_gap = 0, from_gap_at = 0, run = 0, other_run = 0;
	uint64_t back = 0, from_ns = 0, size;
	long long last = -1;
	int hole = 0, fd = -1, rc = 1;
	struct stat st;

	buf = malloc(SLOT);
	if (!buf) {
		fprintf(stderr, "bks-records: allocate %d bytes: %s\n", SLOT,
			strerror(errno));
		goto out;
	}
	fd = open(image, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, "bks-records: open %s: %s\n", image,
			strerror(errno));
		goto out;
	}
	if (fstat(fd, &st) < 0) {
		fprintf(stderr, "bks-records: stat %s: %s\n", image,
			strerror(errno));
		goto out;
	}
	/* A block device (the guest's disk, a dom0 device) has no st_size. */
	size = (uint64_t)st.st_size;
	if (S_ISBLK(st.st_mode)) {
		off_t end = lseek(fd, 0, SEEK_END);

		if (end < 0) {
			fprintf(stderr, "bks-records: size of %s: %s\n", image,
				strerror(errno));
			goto out;
		}
		size = (uint64_t)end;
	}
	for (slot = 0; base + (slot + 1) * SLOT <= size; slot++) {
		struct record r;
		ssize_t n = pread(fd, buf, SLOT, (off_t)(base + slot * SLOT));
		int v;

		if (n < 0) {
			fprintf(stderr,
				"bks-records: read %s at %" PRIu64 ": %s\n",
				image, base + slot * SLOT, strerror(errno));
			goto out;
		}
		if (n != SLOT)
			break;
		v = parse_slot(buf, slot, &r);
		if (hole) {
			after_hole += v != 0;
			continue;
		}
		if (v == 0) {
			hole = 1;
			continue;
		}
		records++;
		if (v < 0) {
			bad++;
			continue;
		}
		if (last >= 0 && r.ns < prev_ns && prev_ns - r.ns > back)
			back = prev_ns - r.ns;
		if (r.seq == from)
			from_ns = r.ns;
		if (last >= 0 && r.ns > prev_ns) {
			uint64_t d = r.ns - prev_ns;

			if (d > gap) {
				gap = d;
				gap_at = r.seq;
			}
			if (r.seq > from && d > from_gap) {
				from_gap = d;
				from_gap_at = r.seq;
			}
		}
		if (last < 0) {
			first_ns = r.ns;
			run = r.run;
		}
		if (r.run != run)
			other_run++;
		prev_ns = r.ns;
		last = (long long)r.seq;
	}
	printf("records=%" PRIu64 " last=%lld bad=%" PRIu64
	       " after_hole=%" PRIu64 " other_run=%" PRIu64 " gap_ms=%" PRIu64
	       " gap_at=%" PRIu64 " from_gap_ms=%" PRIu64
	       " from_gap_at=%" PRIu64 " back_ms=%" PRIu64
	       " from_span_ms=%" PRIu64 " mean_ms=%" PRIu64 "\n",
	       records, last, bad, after_hole, other_run, gap / 1000000, gap_at,
	       from_gap / 1000000, from_gap_at, back / 1000000,
	       from_ns && prev_ns > from_ns ? (prev_ns - from_ns) / 1000000 : 0,
	       last > 0 ? (prev_ns - first_ns) / (uint64_t)last / 1000000 : 0);
	rc = 0;
out:
	if (fd >= 0)
		close(fd);
	free(buf);
	return rc;
}

int main(int argc, char **argv)
{
	uint64_t base = 16ULL << 20, n = 30;

	if (argc < 3 || argc > 5)
		return usage();
	if (argc > 3 && parse_u64(argv[3], &base) < 0)
		return usage();
	if (!strcmp(argv[1], "write")) {
		if (argc > 4 &&
		    (parse_u64(argv[4], &n) < 0 || n == 0 || n > 60000))
			return usage();
		return cmd_write(argv[2], base, n);
	}
	if (!strcmp(argv[1], "check")) {
		n = 0;
		if (argc > 4 && parse_u64(argv[4], &n) < 0)
			return usage();
		return cmd_check(argv[2], base, n);
	}
	return usage();
}
