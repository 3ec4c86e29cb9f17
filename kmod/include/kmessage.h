/* SPDX-License-Identifier: GPL-2.0 */
/*
 * kmessage: the 2004 kernel events layer (send_kmessage) on Linux 6.12
 *
 * Interface of kmessage.ko for other modules.  Robert Love's patch of July
 * 2004 declared send_kmessage() as returning void; this one returns an int
 * so that callers (and tests) can see what happened.
 */
#ifndef _KMESSAGE_H
#define _KMESSAGE_H

#include <linux/compiler.h>

/*
 * Default netlink unit of kmessage.ko (module parameter "unit").  The 2004
 * patch used 15, which is NETLINK_KOBJECT_UEVENT today.
 */
#define NETLINK_KMESSAGE	31

/*
 * kmessage types.  Type T is multicast group number T + 1 of the unit, so
 * userspace binds the 2004 mask 1 << T in sockaddr_nl.nl_groups.
 */
#define KMSG_GENERAL		0
#define KMSG_STORAGE		1
#define KMSG_POWER		2
#define KMSG_FS			3
#define KMSG_HOTPLUG		4
#define KMSG_NR_TYPES		5

int send_kmessage(int type, const char *object, const char *signal,
		  const char *fmt, ...) __printf(4, 5);

#endif /* _KMESSAGE_H */
