/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * hp-dev-tool: drives helpers/hotplug/hp-dev.h (hp-dev.c, dev-*.c) for
 * tests/bats/dev.bats.
 *
 *   hp-dev-tool choose                       print the mechanism
 *   hp-dev-tool attach [--ro] SOCK STATE_DIR print the device record
 *   hp-dev-tool stage SOCK STATE_DIR         print the stage record
 *   hp-dev-tool attach-staged [--ro] STATE_DIR STAGE_RECORD
 *                                            print the device record
 *   hp-dev-tool staged-ok STATE_DIR STAGE_RECORD   exit 0 if usable
 *   hp-dev-tool detach STATE_DIR RECORD      detach what RECORD names
 *   hp-dev-tool parse STATE_DIR RECORD       print the record re-formatted
 *   hp-dev-tool handshake SOCK               NBD handshake: size, flags
 *   hp-dev-tool reconnect SOCK               nbd_kernel_reconnect_all():
 *                                            print "reconnected=N"
 *   hp-dev-tool fail SOCK                    nbd_kernel_fail_all()
 *
 * The mechanism for attach comes from hp_dev_choose() ($BLKSTACK_DEVICE).
 * Exit 0 on success, 1 with the error on stderr, 2 on usage errors.
 */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "hp-dev.h"
#include "nbd-client.h"
#include "nbd-kernel.h"

static int usage(void)
{
	fprintf(stderr, "usage: hp-dev-tool choose | attach [--ro] SOCK "
			"STATE_DIR | stage SOCK STATE_DIR | attach-staged "
			"[--ro] STATE_DIR STAGE_RECORD | staged-ok STATE_DIR "
			"STAGE_RECORD | detach STATE_DIR RECORD | parse "
			"STATE_DIR RECORD | handshake SOCK | reconnect SOCK | "
			"fail SOCK\n");
	return 2;
}

static int print_record(const struct hp_dev *dev)
{
	char line[HP_DEV_LINE_MAX];

	if (hp_dev_format(dev, line, sizeof(line)) < 0) {
		fprintf(stderr, "hp-dev-tool: cannot format the record\n");
		return 1;
	}
	printf("%s\n", line);
	return 0;
}

int main(int argc, char **argv)
{
	struct bks_error err = {0};
	enum hp_dev_mech mech;
	struct hp_dev dev, stage;
	bool ro = false;

	if (argc < 2)
		return usage();
	if (strcmp(argv[1], "choose") == 0 && argc == 2) {
		if (hp_dev_choose(&mech, &err) < 0)
			goto fail;
		printf("%s\n", hp_dev_mech_name(mech));
		return 0;
	}
	if (strcmp(argv[1], "handshake") == 0 && argc == 3) {
		struct nbd_export ex;
		int fd;

		if (nbd_client_handshake(argv[2], &fd, &ex, &err) < 0)
			goto fail;
		close(fd);
		printf("size=%llu flags=%#x min_block=%u\n", ex.size,
		       (unsigned int)ex.flags, ex.min_block);
		return 0;
	}
	if (strcmp(argv[1], "reconnect") == 0 && argc == 3) {
		unsigned int n;

		if (nbd_kernel_reconnect_all(argv[2], &n, &err) < 0)
			goto fail;
		printf("reconnected=%u\n", n);
		return 0;
	}
	if (strcmp(argv[1], "fail") == 0 && argc == 3) {
		if (nbd_kernel_fail_all(argv[2], &err) < 0)
			goto fail;
		return 0;
	}
	if (strcmp(argv[1], "stage") == 0 && argc == 4) {
		if (hp_dev_choose(&mech, &err) < 0 ||
		    hp_dev_stage(argv[2], argv[3], mech, &dev, &err) < 0)
			goto fail;
		return print_record(&dev);
	}
	if (strcmp(argv[1], "staged-ok") == 0 && argc == 4) {
		if (hp_dev_parse(argv[3], argv[2], &stage, &err) < 0)
			goto fail;
		return hp_dev_staged_ok(&stage) ? 0 : 1;
	}
	if (strcmp(argv[1], "attach") == 0 ||
	    strcmp(argv[1], "attach-staged") == 0) {
		bool staged = argv[1][6] == '-';

		argv += 2;
		argc -= 2;
		if (argc > 0 && strcmp(argv[0], "--ro") == 0) {
			ro = true;
			argv++;
			argc--;
		}
		if (argc != 2)
			return usage();
		if (staged) {
			if (hp_dev_parse(argv[1], argv[0], &stage, &err) < 0 ||
			    hp_dev_attach_staged(&stage, ro, &dev, &err) < 0)
				goto fail;
		} else if (hp_dev_choose(&mech, &err) < 0 ||
			   hp_dev_attach(argv[0], argv[1], ro, mech, &dev,
					 &err) < 0) {
			goto fail;
		}
		return print_record(&dev);
	}
	if ((strcmp(argv[1], "detach") == 0 || strcmp(argv[1], "parse") == 0) &&
	    argc == 4) {
		if (hp_dev_parse(argv[3], argv[2], &dev, &err) < 0)
			goto fail;
		if (argv[1][0] == 'p')
			return print_record(&dev);
		if (hp_dev_detach(&dev, &err) < 0)
			goto fail;
		return 0;
	}
	return usage();
fail:
	fprintf(stderr, "hp-dev-tool: %s\n", err.msg);
	return 1;
}
