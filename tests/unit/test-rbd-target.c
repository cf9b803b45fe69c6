/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Unit tests: the rbd: sink's args (libblkstack/rbd-target.c). */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "blkstack/chain.h"
#include "blkstack/rbd-target.h"
#include "unit-chain.h"

static void test_defaults(void **state)
{
	struct bks_rbd_target t;
	struct bks_error err = {0};

	(void)state;
	assert_int_equal(bks_rbd_target_parse("rbd/vm1", &t, &err), 0);
	assert_string_equal(t.pool, "rbd");
	assert_string_equal(t.image, "vm1");
	assert_string_equal(t.snap, "");
	assert_string_equal(t.id, "admin");
	assert_string_equal(t.conf, "");
	assert_string_equal(t.keyring, "");
	assert_string_equal(t.cluster, "ceph");
	assert_int_equal(t.timeout_s, BKS_RBD_TIMEOUT_DEFAULT);
	assert_string_equal(t.vm, "");
	assert_string_equal(t.name, "rbd/vm1");
}

/* vm=: the VM a read-write open claims the image for. */
static void test_vm(void **state)
{
	struct bks_rbd_target t;
	struct bks_error err = {0};
	char v[200];

	(void)state;
	assert_int_equal(
	    bks_rbd_target_parse(
		"rbd/vm1,vm=/vm/0b7d2c3a-0000-4000-8000-00000000beef", &t,
		&err),
	    0);
	assert_string_equal(t.vm, "/vm/0b7d2c3a-0000-4000-8000-00000000beef");
	assert_string_equal(t.name, "rbd/vm1");
	/* Any position among the options; a snapshot may name one too. */
	assert_int_equal(
	    bks_rbd_target_parse("rbd/vm1@s,vm=/v_1,timeout=3", &t, &err), 0);
	assert_string_equal(t.vm, "/v_1");
	assert_int_equal(t.timeout_s, 3);
	/* The longest. */
	v[0] = '/';
	memset(v + 1, 'a', BKS_RBD_VM_MAX - 1);
	snprintf(v + BKS_RBD_VM_MAX, sizeof(v) - BKS_RBD_VM_MAX, "%s", "");
	{
		char a[260];

		snprintf(a, sizeof(a), "rbd/i,vm=%s", v);
		assert_int_equal(bks_rbd_target_parse(a, &t, &err), 0);
		assert_int_equal(strlen(t.vm), BKS_RBD_VM_MAX);
		snprintf(a, sizeof(a), "rbd/i,vm=%sa", v);
		assert_int_equal(bks_rbd_target_parse(a, &t, &err), -EINVAL);
		assert_non_null(strstr(err.msg, "longer than 128 bytes"));
	}
}

static void test_options(void **state)
{
	struct bks_rbd_target t;
	struct bks_error err = {0};

	(void)state;
	assert_int_equal(
	    bks_rbd_target_parse("vms.ssd/vm_1-a@base+2,id=xen.dom0,"
				 "conf=/etc/ceph/c-1.conf,"
				 "keyring=/etc/ceph/client.xen@x:1.keyring,"
				 "cluster=c-1,timeout=600",
				 &t, &err),
	    0);
	assert_string_equal(t.pool, "vms.ssd");
	assert_string_equal(t.image, "vm_1-a");
	assert_string_equal(t.snap, "base+2");
	assert_string_equal(t.id, "xen.dom0");
	assert_string_equal(t.conf, "/etc/ceph/c-1.conf");
	assert_string_equal(t.keyring, "/etc/ceph/client.xen@x:1.keyring");
	assert_string_equal(t.cluster, "c-1");
	assert_int_equal(t.timeout_s, 600);
	assert_string_equal(t.name, "vms.ssd/vm_1-a@base+2");

	/* A path longer than the generic option limit (driver.h). */
	assert_int_equal(
	    bks_rbd_target_parse("p/i,conf=/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				 "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				 "aaaaaaaaaaa/ceph.conf,timeout=1",
				 &t, &err),
	    0);
	assert_int_equal(t.timeout_s, 1);
}

/* Each bad args is refused with EINVAL and a message holding `want`. */
static void refused(const char *args, const char *want)
{
	struct bks_rbd_target t;
	struct bks_error err = {0};
	int rc = bks_rbd_target_parse(args, &t, &err);

	if (rc != -EINVAL || !strstr(err.msg, want))
		fail_msg("'%s': rc %d, message '%s', wanted '%s'", args, rc,
			 err.msg, want);
	assert_non_null(strstr(err.msg, "usage: rbd:POOL/IMAGE"));
	for (const char *c = err.msg; *c; c++)
		assert_true((unsigned char)*c >= 0x20 && *c != 0x7f);
}

static void test_refused(void **state)
{
	char long_image[200], long_pool[200], long_path[1100];

	(void)state;
	refused("", "missing POOL/IMAGE");
	refused(",id=x", "missing POOL/IMAGE");
	refused("vm1", "no '/'");
	refused("/vm1", "the pool name is empty");
	refused("rbd/", "the image name is empty");
	refused("rbd/vm1@", "the snapshot name is empty");
	refused("rbd/vm1@s@t", "character '@'");
	refused("rbd/a/b", "character '/'");
	refused("r b/vm1", "character ' '");
	refused("rbd/vm\x01", "character '?'");
	refused("rbd/vm$x", "character '$'");
	refused("rbd/.vm", "starts with '.' or '-'");
	refused("-p/vm", "starts with '.' or '-'");
	refused("rbd/vm@-s", "starts with '.' or '-'");
	memset(long_image, 'i', 96);
	strcpy(long_image + 96, "");
	{
		char a[220];

		snprintf(a, sizeof(a), "rbd/%s", long_image);
		refused(a, "longer than 95 bytes");
	}
	memset(long_pool, 'p', 128);
	strcpy(long_pool + 128, "/i");
	refused(long_pool, "longer than 127 bytes");
	strcpy(long_path, "rbd/i,conf=/");
	memset(long_path + 12, 'c', 1030);
	long_path[1042] = '\0';
	refused(long_path, "longer than 1023 bytes");

	refused("rbd/vm,", "a trailing ','");
	refused("rbd/vm,,id=a", "',,'");
	refused("rbd/vm,user=a", "unknown option 'user'");
	refused("rbd/vm,=a", "unknown option ''");
	refused("rbd/vm,id", "option 'id' has no value");
	refused("rbd/vm,id=", "option 'id' has no value");
	refused("rbd/vm,id=a,id=b", "option 'id' is given twice");
	refused("rbd/vm,timeout=1,timeout=1", "given twice");
	refused("rbd/vm,id=a b", "character ' '");
	refused("rbd/vm,id=client.$x", "character '$'");
	refused("rbd/vm,conf=etc/ceph.conf", "not an absolute path");
	refused("rbd/vm,conf=/etc/../ceph.conf", "'..' component");
	refused("rbd/vm,conf=/etc/./ceph.conf", "'.' component");
	refused("rbd/vm,conf=/etc/..", "'..' component");
	refused("rbd/vm,keyring=/k/$cluster.keyring", "character '$'");
	refused("rbd/vm,keyring=/k;rm", "character ';'");
	refused("rbd/vm,cluster=a.b", "character '.'");
	refused("rbd/vm,timeout=0", "from 1 to 600");
	refused("rbd/vm,timeout=601", "from 1 to 600");
	refused("rbd/vm,timeout=99999999999999999999", "from 1 to 600");
	refused("rbd/vm,timeout=-1", "from 1 to 600");
	refused("rbd/vm,timeout=1s", "from 1 to 600");

	refused("rbd/vm,vm=", "option 'vm' has no value");
	refused("rbd/vm,vm=vm/1", "does not start with '/'");
	refused("rbd/vm,vm=/", "has an empty component");
	refused("rbd/vm,vm=/vm/", "has an empty component");
	refused("rbd/vm,vm=/vm//1", "has an empty component");
	refused("rbd/vm,vm=/vm/./1", "character '.'");
	refused("rbd/vm,vm=/vm/a@b", "character '@'");
	refused("rbd/vm,vm=/vm/a b", "character ' '");
	refused("rbd/vm,vm=/vm/a\n", "character '?'");
	refused("rbd/vm,vm=/a,vm=/a", "option 'vm' is given twice");
}

/* The chain parser runs the same check (the parse-only table). */
static void test_chain_parse(void **state)
{
	(void)state;
	unit_chain_parse("log:|rbd:rbd/vm1@snap,timeout=5", NULL);
	unit_chain_parse("rbd:rbd/vm1,conf=relative", "not an absolute path");
	unit_chain_parse("rbd:rbd/vm1,vm=/vm/1", NULL);
	unit_chain_parse("rbd:rbd/vm1,vm=/vm/$x", "character '$'");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_defaults),	cmocka_unit_test(test_options),
	    cmocka_unit_test(test_vm),		cmocka_unit_test(test_refused),
	    cmocka_unit_test(test_chain_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
