/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: hp-dev's pure parts (configuration, the device record). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "hp-dev.h"

static void test_mech_parse(void **state)
{
	enum hp_dev_mech m;
	(void)state;

	assert_int_equal(hp_dev_mech_parse("auto", &m), 0);
	assert_int_equal(m, HP_DEV_AUTO);
	assert_int_equal(hp_dev_mech_parse("nbd", &m), 0);
	assert_int_equal(m, HP_DEV_NBD);
	assert_int_equal(hp_dev_mech_parse("loop", &m), 0);
	assert_int_equal(m, HP_DEV_LOOP);
	assert_int_equal(hp_dev_mech_parse("fuse", &m), 0);
	assert_int_equal(m, HP_DEV_FUSE);
	assert_string_equal(hp_dev_mech_name(HP_DEV_FUSE), "fuse");
	assert_int_equal(hp_dev_mech_parse("fuse-", &m), -EINVAL);
	assert_int_equal(hp_dev_mech_parse("Loop", &m), -EINVAL);
	assert_int_equal(hp_dev_mech_parse("loop ", &m), -EINVAL);
	assert_int_equal(hp_dev_mech_parse("", &m), -EINVAL);
}

static void test_conf(void **state)
{
	struct bks_error err = {0};
	enum hp_dev_mech m = HP_DEV_AUTO;
	bool found;
	(void)state;

	assert_int_equal(hp_dev_conf_parse("", "c", &m, &found, &err), 0);
	assert_false(found);
	assert_int_equal(hp_dev_conf_parse("# device = nbd\n\n  other=1\n", "c",
					   &m, &found, &err),
			 0);
	assert_false(found);
	assert_int_equal(hp_dev_conf_parse("x = y\n\tdevice\t=  loop  \n", "c",
					   &m, &found, &err),
			 0);
	assert_true(found);
	assert_int_equal(m, HP_DEV_LOOP);
	/* No final newline. */
	assert_int_equal(hp_dev_conf_parse("device=nbd", "c", &m, &found, &err),
			 0);
	assert_int_equal(m, HP_DEV_NBD);
	/* "devices" is another key. */
	assert_int_equal(
	    hp_dev_conf_parse("devices = zip\n", "c", &m, &found, &err), 0);
	assert_false(found);

	assert_int_equal(hp_dev_conf_parse("\n\ndevice = floppy\n", "/etc/c",
					   &m, &found, &err),
			 -EINVAL);
	assert_string_equal(err.msg,
			    "/etc/c:3: unknown device mechanism "
			    "\"floppy\" (want auto, nbd, fuse or loop)");
	assert_int_equal(hp_dev_conf_parse("device = loop\ndevice = nbd\n", "c",
					   &m, &found, &err),
			 -EINVAL);
	assert_non_null(strstr(err.msg, "c:2: device given twice"));
	assert_int_equal(
	    hp_dev_conf_parse("just words\n", "c", &m, &found, &err), -EINVAL);
	assert_non_null(strstr(err.msg, "c:1: expected key = value"));
	assert_int_equal(hp_dev_conf_parse("device = a-very-long-value-here\n",
					   "c", &m, &found, &err),
			 -EINVAL);
}

/* auto's fuse: supervised, and Linux 6.9 (FUSE_HAS_RESEND) or later. */
static void test_fuse_resilient(void **state)
{
	(void)state;

	assert_true(hp_dev_fuse_resilient("6.9.0", true));
	assert_true(hp_dev_fuse_resilient("6.18.0-1-amd64", true));
	assert_true(hp_dev_fuse_resilient("6.10", true));
	assert_true(hp_dev_fuse_resilient("7.0.1", true));
	assert_false(hp_dev_fuse_resilient("6.8.12", true));
	assert_false(hp_dev_fuse_resilient("6.1.0-27-amd64", true));
	assert_false(hp_dev_fuse_resilient("5.19.0", true));
	assert_false(hp_dev_fuse_resilient("6.18.0", false));
	assert_false(hp_dev_fuse_resilient("", true));
	assert_false(hp_dev_fuse_resilient("6", true));
	assert_false(hp_dev_fuse_resilient("x.y", true));
}

static void test_record_roundtrip(void **state)
{
	struct hp_dev d = {0}, back;
	struct bks_error err = {0};
	char line[HP_DEV_LINE_MAX];
	int n;
	(void)state;

	d.mech = HP_DEV_LOOP;
	strcpy(d.path, "/dev/loop12");
	d.major = 7;
	d.minor = 12;
	d.fuse_pid = 4321;
	strcpy(d.fuse_dir, "/run/st/fuse-Ab_9.x");
	n = hp_dev_format(&d, line, sizeof(line));
	assert_int_equal(n, (int)strlen(line));
	assert_string_equal(line, "mech=loop path=/dev/loop12 major=7 "
				  "minor=12 staged=0 fuse_pid=4321 "
				  "fuse_dir=/run/st/fuse-Ab_9.x");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));

	/* A staged device: nbdfuse is the stage's. */
	d.staged = true;
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line, "mech=loop path=/dev/loop12 major=7 "
				  "minor=12 staged=1 fuse_pid=4321 "
				  "fuse_dir=/run/st/fuse-Ab_9.x");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));

	/* A partial record (attach killed before the loop device). */
	memset(&d, 0, sizeof(d));
	d.mech = HP_DEV_LOOP;
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line, "mech=loop path= major=0 minor=0 "
				  "staged=0 fuse_pid=0 fuse_dir=");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));

	/* The worker a device was made for, last. */
	d.staged = false;
	strcpy(d.path, "/dev/loop12");
	d.major = 7;
	d.minor = 12;
	d.fuse_pid = 4321;
	strcpy(d.fuse_dir, "/run/st/fuse-Ab_9.x");
	strcpy(d.worker, "812:99137");
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line,
			    "mech=loop path=/dev/loop12 major=7 "
			    "minor=12 staged=0 fuse_pid=4321 "
			    "fuse_dir=/run/st/fuse-Ab_9.x worker=812:99137");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));
	/* With no fuse_dir before it. */
	memset(&d, 0, sizeof(d));
	d.mech = HP_DEV_NBD;
	strcpy(d.path, "/dev/nbd3");
	d.major = 43;
	d.minor = 96;
	strcpy(d.worker, "1:2");
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line, "mech=nbd path=/dev/nbd3 major=43 minor=96 "
				  "staged=0 fuse_pid=0 fuse_dir= worker=1:2");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));
	strcpy(d.worker, "1:2 x");
	assert_int_equal(hp_dev_format(&d, line, sizeof(line)), -EINVAL);

	/* fuse: a stage names the worker's file; a device is staged on it. */
	memset(&d, 0, sizeof(d));
	d.mech = HP_DEV_FUSE;
	strcpy(d.fuse_dir, "/run/st/fuse");
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line, "mech=fuse path= major=0 minor=0 staged=0 "
				  "fuse_pid=0 fuse_dir=/run/st/fuse");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));
	d.staged = true;
	strcpy(d.path, "/dev/loop4");
	d.major = 7;
	d.minor = 4;
	strcpy(d.worker, "77:123");
	assert_true(hp_dev_format(&d, line, sizeof(line)) > 0);
	assert_string_equal(line, "mech=fuse path=/dev/loop4 major=7 minor=4 "
				  "staged=1 fuse_pid=0 fuse_dir=/run/st/fuse "
				  "worker=77:123");
	assert_int_equal(hp_dev_parse(line, "/run/st", &back, &err), 0);
	assert_memory_equal(&d, &back, sizeof(d));
	memset(&d, 0, sizeof(d));
	d.mech = HP_DEV_LOOP;

	/* Too small a buffer, unrepresentable values. */
	assert_int_equal(hp_dev_format(&d, line, 10), -ENAMETOOLONG);
	d.mech = HP_DEV_AUTO;
	assert_int_equal(hp_dev_format(&d, line, sizeof(line)), -EINVAL);
	d.mech = HP_DEV_LOOP;
	strcpy(d.fuse_dir, "/run/st/a b");
	assert_int_equal(hp_dev_format(&d, line, sizeof(line)), -EINVAL);
}

static void test_record_invalid(void **state)
{
	static const char *const bad[] = {
	    "",
	    "mech=loop",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=/run/st/f x",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=/run/stx/f",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=/run/st",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=/run/st/.hidden",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=/run/st/f\n",
	    "mech=loop path=/dev/loop1 major=7 minor=1048576 staged=0 "
	    "fuse_pid=1 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 "
	    "fuse_pid=4194305 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=+1 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1 major=7 minor=99999999999 staged=0 "
	    "fuse_pid=1 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1x major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop/../sda major=7 minor=1 staged=0 "
	    "fuse_pid=1 "
	    "fuse_dir=",
	    "mech=nbd path=/dev/nbd1 major=7 minor=1 staged=0 fuse_pid=0 "
	    "fuse_dir=",
	    "mech=nbd path=/dev/nbd1 major=43 minor=1 staged=0 fuse_pid=5 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=1 "
	    "fuse_dir= "
	    "extra=1",
	    /* staged: 0 or 1, and 1 only on a loop device with an nbdfuse. */
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=2 fuse_pid=1 "
	    "fuse_dir=/run/st/f",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=01 fuse_pid=1 "
	    "fuse_dir=/run/st/f",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged= fuse_pid=1 "
	    "fuse_dir=/run/st/f",
	    "mech=loop path= major=0 minor=0 staged=1 fuse_pid=1 "
	    "fuse_dir=/run/st/f",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/f",
	    "mech=loop path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=1 "
	    "fuse_dir=",
	    "mech=nbd path=/dev/nbd1 major=43 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=",
	    "mech=loop path=/dev/loop1 major=7 minor=1 fuse_pid=1 "
	    "fuse_dir=/run/st/f",
	    /* fuse: the worker's mount point only, no process, loop only. */
	    "mech=fuse path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/fuse-x",
	    "mech=fuse path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/other",
	    "mech=fuse path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=9 "
	    "fuse_dir=/run/st/fuse",
	    "mech=fuse path=/dev/nbd1 major=43 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/fuse",
	    "mech=fuse path=/dev/loop1 major=43 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/fuse",
	    "mech=fuse path=/dev/loop1 major=7 minor=1 staged=0 fuse_pid=0 "
	    "fuse_dir=/run/st/fuse",
	    "mech=fuse path=/dev/loop1 major=7 minor=1 staged=1 fuse_pid=0 "
	    "fuse_dir=",
	    "mech=fuse path= major=0 minor=0 staged=1 fuse_pid=0 "
	    "fuse_dir=/run/st/fuse",
	    "mech=Fuse path= major=0 minor=0 staged=0 fuse_pid=0 fuse_dir=",
	};
	struct bks_error err = {0};
	struct hp_dev d;
	(void)state;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (hp_dev_parse(bad[i], "/run/st", &d, &err) != -EINVAL)
			fail_msg("accepted: %s", bad[i]);
		assert_non_null(strstr(err.msg, "invalid device record"));
	}
	/* The message names the field at fault. */
	assert_int_equal(
	    hp_dev_parse("mech=loop path=/dev/loop1 major=7 "
			 "minor=1 staged=0 fuse_pid=1 fuse_dir=/etc",
			 "/run/st", &d, &err),
	    -EINVAL);
	assert_string_equal(err.msg, "invalid device record (at field "
				     "fuse_dir)");
	/* Bad worker tokens. */
	static const char *const bad_worker[] = {
	    "mech=nbd path=/dev/nbd0 major=43 minor=0 staged=0 fuse_pid=0 "
	    "fuse_dir= worker=",
	    "mech=nbd path=/dev/nbd0 major=43 minor=0 staged=0 fuse_pid=0 "
	    "fuse_dir= worker=12",
	    "mech=nbd path=/dev/nbd0 major=43 minor=0 staged=0 fuse_pid=0 "
	    "fuse_dir= worker=:3",
	    "mech=nbd path=/dev/nbd0 major=43 minor=0 staged=0 fuse_pid=0 "
	    "fuse_dir= worker=1:x",
	    "mech=nbd path=/dev/nbd0 major=43 minor=0 staged=0 fuse_pid=0 "
	    "fuse_dir= worker=1:2 extra=1",
	};
	for (size_t i = 0; i < sizeof(bad_worker) / sizeof(*bad_worker); i++)
		assert_int_equal(
		    hp_dev_parse(bad_worker[i], "/run/st", &d, &err), -EINVAL);
	/* A good nbd record. */
	assert_int_equal(hp_dev_parse("mech=nbd path=/dev/nbd0 major=43 "
				      "minor=0 staged=0 fuse_pid=0 fuse_dir=",
				      "/run/st", &d, &err),
			 0);
	assert_int_equal(d.mech, HP_DEV_NBD);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_mech_parse),
	    cmocka_unit_test(test_conf),
	    cmocka_unit_test(test_fuse_resilient),
	    cmocka_unit_test(test_record_roundtrip),
	    cmocka_unit_test(test_record_invalid),
	};

	return cmocka_run_group_tests_name("hp-dev", tests, NULL, NULL);
}
