// SPDX-License-Identifier: GPL-2.0
/*
 * kmessage - kernel event delivery over a netlink socket
 *
 * The kernel events layer of July 2004 (by Arjan van de Ven, Kay Sievers
 * and Robert Love), carried to Linux 6.12 as a module.
 *
 * Wire format (unchanged from 2004): one raw netlink datagram per event, no
 * nlmsghdr, at most PAGE_SIZE bytes:
 *
 *	"From: <object>\nSignal: <signal>\n<aux>" followed by a NUL byte that
 *	is counted in the datagram length.
 *
 * Type T (KMSG_*) is sent to multicast group number T + 1 of our own
 * netlink unit (module parameter "unit", default 31).  Since 2.6.14
 * netlink_broadcast() takes a 1-based group number, not the 2004 bit mask,
 * but a listener still binds nl_groups = 1 << T and sees nl_groups = 1 << T
 * (nl_pid 0) in the source address of recvmsg().
 *
 * Every open userspace socket on the unit pins this module: netlink_create()
 * takes a reference on the module that registered the unit and
 * netlink_release() drops it, so delete_module() fails with EAGAIN until the
 * last listener has closed its socket.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/ctype.h>
#include <linux/debugfs.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/gfp.h>
#include <linux/init.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/net.h>
#include <linux/netlink.h>
#include <linux/preempt.h>
#include <linux/rcupdate.h>
#include <linux/seq_file.h>
#include <linux/skbuff.h>
#include <linux/slab.h>
#include <linux/stdarg.h>
#include <linux/string.h>
#include <net/net_namespace.h>
#include <net/sock.h>

#include "kmessage.h"

#define CREATE_TRACE_POINTS
#include "kmessage_trace.h"

#define KMSG_FROM	"From: "
#define KMSG_SIGNAL	"\nSignal: "

static int unit = NETLINK_KMESSAGE;
module_param(unit, int, 0444);
MODULE_PARM_DESC(unit, "netlink unit (protocol number) to create; units used in tree are refused (default 31)");

/* The one kernel socket of the unit; set before any caller can exist. */
static struct sock *kmessage_sock;
static struct dentry *kmessage_debugfs;

/* Outcome counters; "sent" is the sum of kmessage_type_sent[]. */
enum kmessage_stat {
	KMSG_STAT_NO_LISTENER,
	KMSG_STAT_UNDELIVERED,
	KMSG_STAT_INVALID,
	KMSG_STAT_TOO_LONG,
	KMSG_STAT_TRUNCATED,
	KMSG_STAT_ALLOC_FAILED,
	KMSG_STAT_DROPPED_FROM_USERSPACE,
	KMSG_STAT_NR,
};

static const char * const kmessage_stat_names[KMSG_STAT_NR] = {
	[KMSG_STAT_NO_LISTENER]			= "no_listener",
	[KMSG_STAT_UNDELIVERED]			= "undelivered",
	[KMSG_STAT_INVALID]			= "invalid",
	[KMSG_STAT_TOO_LONG]			= "too_long",
	[KMSG_STAT_TRUNCATED]			= "truncated",
	[KMSG_STAT_ALLOC_FAILED]		= "alloc_failed",
	[KMSG_STAT_DROPPED_FROM_USERSPACE]	= "dropped_from_userspace",
};

static const char * const kmessage_type_names[KMSG_NR_TYPES] = {
	[KMSG_GENERAL]	= "general",
	[KMSG_STORAGE]	= "storage",
	[KMSG_POWER]	= "power",
	[KMSG_FS]	= "fs",
	[KMSG_HOTPLUG]	= "hotplug",
};

/* Updated from any context, hard IRQ included: atomics, no lock. */
static atomic_long_t kmessage_stats[KMSG_STAT_NR];
static atomic_long_t kmessage_type_sent[KMSG_NR_TYPES];

static void kmessage_count(enum kmessage_stat stat)
{
	atomic_long_inc(&kmessage_stats[stat]);
}

/* A message refused before it was built: its strings may be NULL or huge. */
static int kmessage_refuse(int type, enum kmessage_stat stat)
{
	kmessage_count(stat);
	trace_kmessage_send(type, NULL, NULL, 0, kmessage_stat_names[stat]);
	return -EINVAL;
}

/*
 * netlink_kernel_create() on a unit that is already registered does not
 * fail: it silently shares the existing unit and ignores our cfg.  Refuse
 * the units Linux 6.12 assigns in tree.  (A unit taken by another
 * out-of-tree module cannot be detected from here.)
 */
#define KMSG_TAKEN(u, what) { u, what }
static const struct {
	int unit;
	const char *what;
} kmessage_taken_units[] = {
	KMSG_TAKEN(NETLINK_ROUTE, "NETLINK_ROUTE"),
	KMSG_TAKEN(NETLINK_USERSOCK, "NETLINK_USERSOCK"),
	KMSG_TAKEN(NETLINK_SOCK_DIAG, "NETLINK_SOCK_DIAG"),
	KMSG_TAKEN(NETLINK_XFRM, "NETLINK_XFRM"),
	KMSG_TAKEN(NETLINK_SELINUX, "NETLINK_SELINUX"),
	KMSG_TAKEN(NETLINK_ISCSI, "NETLINK_ISCSI"),
	KMSG_TAKEN(NETLINK_AUDIT, "NETLINK_AUDIT"),
	KMSG_TAKEN(NETLINK_FIB_LOOKUP, "NETLINK_FIB_LOOKUP"),
	KMSG_TAKEN(NETLINK_CONNECTOR, "NETLINK_CONNECTOR"),
	KMSG_TAKEN(NETLINK_NETFILTER, "NETLINK_NETFILTER"),
	KMSG_TAKEN(NETLINK_KOBJECT_UEVENT, "NETLINK_KOBJECT_UEVENT (the uevent unit)"),
	KMSG_TAKEN(NETLINK_GENERIC, "NETLINK_GENERIC"),
	KMSG_TAKEN(NETLINK_SCSITRANSPORT, "NETLINK_SCSITRANSPORT"),
	KMSG_TAKEN(NETLINK_RDMA, "NETLINK_RDMA"),
	KMSG_TAKEN(NETLINK_CRYPTO, "NETLINK_CRYPTO"),
	KMSG_TAKEN(30, "the private unit of the staging gdm724x LTE driver"),
};

/*
 * GFP_KERNEL only where sleeping is certainly allowed.  Without
 * CONFIG_PREEMPT_COUNT preemptible() is constant 0 and every message is
 * allocated with GFP_ATOMIC, which is always safe.
 */
static gfp_t kmessage_gfp(void)
{
	if (preemptible() && !rcu_preempt_depth())
		return GFP_KERNEL;
	return GFP_ATOMIC;
}

/* "From: <object>\nSignal: <signal>\n": the header's bytes. */
static size_t kmessage_header_len(size_t olen, size_t slen)
{
	return strlen(KMSG_FROM) + olen + strlen(KMSG_SIGNAL) + slen + 1;
}

static __printf(4, 0)
int vsend_kmessage(int type, const char *object, const char *signal,
		   const char *fmt, va_list args)
{
	size_t olen, slen, hlen, alen, len;
	struct sk_buff *skb;
	va_list aq;
	gfp_t gfp;
	char *p;
	int ret;

	if (type < 0 || type >= KMSG_NR_TYPES || !object || !signal)
		return kmessage_refuse(type, KMSG_STAT_INVALID);
	olen = strnlen(object, PAGE_SIZE + 1);
	if (olen > PAGE_SIZE)
		return kmessage_refuse(type, KMSG_STAT_INVALID);
	slen = strnlen(signal, PAGE_SIZE);
	/* The header and the final NUL must fit. */
	hlen = kmessage_header_len(olen, slen);
	if (hlen + 1 > PAGE_SIZE)
		return kmessage_refuse(type, KMSG_STAT_TOO_LONG);

	alen = 0;
	if (fmt) {
		va_copy(aq, args);
		alen = vsnprintf(NULL, 0, fmt, aq);
		va_end(aq);
		if (alen > PAGE_SIZE - hlen - 1) {
			/* Like the seed's vscnprintf(): keep what fits. */
			alen = PAGE_SIZE - hlen - 1;
			kmessage_count(KMSG_STAT_TRUNCATED);
		}
	}
	len = hlen + alen + 1;

	/* Nothing is built when nobody listens: not an error. */
	if (!netlink_has_listeners(kmessage_sock, type + 1)) {
		kmessage_count(KMSG_STAT_NO_LISTENER);
		trace_kmessage_send(type, object, signal, len,
				    kmessage_stat_names[KMSG_STAT_NO_LISTENER]);
		return 0;
	}

	gfp = kmessage_gfp();
	skb = alloc_skb(len, gfp);
	if (!skb) {
		kmessage_count(KMSG_STAT_ALLOC_FAILED);
		trace_kmessage_send(type, object, signal, len,
				    kmessage_stat_names[KMSG_STAT_ALLOC_FAILED]);
		return -ENOMEM;
	}
	p = skb_put(skb, len);
	/*
	 * The hlen header bytes (olen and slen are the strings' lengths: the
	 * checks above leave slen < PAGE_SIZE), then a NUL that ends the
	 * datagram if there is no aux.
	 */
	snprintf(p, hlen + 1, KMSG_FROM "%s" KMSG_SIGNAL "%s\n", object, signal);
	/* Writes alen characters and the NUL that ends the datagram. */
	if (fmt)
		vsnprintf(p + hlen, alen + 1, fmt, args);

	/*
	 * Broadcast synchronously, in the caller's context: messages from one
	 * CPU reach each listener in the order they were sent.  This is safe in
	 * hard IRQ: the table lock is taken irqsave, and the nlmon tap (whose
	 * dev_queue_xmit() must not run in hard IRQ) is never reached because
	 * netlink_filter_tap() only mirrors ROUTE, USERSOCK, SOCK_DIAG, NFLOG,
	 * XFRM, FIB_LOOKUP, NETFILTER and GENERIC, never this unit.
	 *
	 * A listener whose receive queue is full loses the message: it sees
	 * ENOBUFS on its next recvmsg() and the Drops column of
	 * /proc/net/netlink counts it.  If no listener could take it the
	 * message is counted as "undelivered".
	 */
	NETLINK_CB(skb).dst_group = type + 1;
	ret = netlink_broadcast(kmessage_sock, skb, 0, type + 1, gfp);
	if (ret) {
		kmessage_count(KMSG_STAT_UNDELIVERED);
		trace_kmessage_send(type, object, signal, len,
				    kmessage_stat_names[KMSG_STAT_UNDELIVERED]);
		return 0;
	}
	atomic_long_inc(&kmessage_type_sent[type]);
	trace_kmessage_send(type, object, signal, len, "sent");
	return 0;
}

/**
 * send_kmessage() - broadcast a kernel event to userspace
 * @type: KMSG_* type; the message goes to multicast group @type + 1 of the
 *	  kmessage netlink unit (listeners bind the mask 1 << @type)
 * @object: source of the event, e.g. "/org/kernel/devices/system/cpu/temperature"
 * @signal: what happened, e.g. "high"
 * @fmt: optional printf format of auxiliary data appended after the header,
 *	 may be NULL
 *
 * Sends one raw datagram "From: @object\nSignal: @signal\n<aux>\0" (the NUL
 * is part of the datagram, no nlmsghdr) of at most PAGE_SIZE bytes.
 * Auxiliary data that does not fit is truncated.  Callable from any
 * context, hard IRQ included; it sleeps only if the caller may sleep.
 *
 * Return: 0 if the message was broadcast or nobody listens (neither is an
 * error), -EINVAL if @type is unknown, @object or @signal is NULL, @object
 * is longer than PAGE_SIZE or the header alone does not fit in PAGE_SIZE
 * (nothing is sent), -ENOMEM if the message could not be allocated.
 */
int send_kmessage(int type, const char *object, const char *signal,
		  const char *fmt, ...)
{
	va_list args;
	int ret;

	va_start(args, fmt);
	ret = vsend_kmessage(type, object, signal, fmt, args);
	va_end(args);
	return ret;
}
EXPORT_SYMBOL_GPL(send_kmessage);

/* The 2004 layer dropped whatever userspace sent to it; so do we. */
static void kmessage_input(struct sk_buff *skb)
{
	kmessage_count(KMSG_STAT_DROPPED_FROM_USERSPACE);
}

static int kmessage_stats_show(struct seq_file *m, void *v)
{
	long type_sent[KMSG_NR_TYPES];
	long sent = 0;
	int i;

	for (i = 0; i < KMSG_NR_TYPES; i++) {
		type_sent[i] = atomic_long_read(&kmessage_type_sent[i]);
		sent += type_sent[i];
	}
	seq_printf(m, "sent %ld\n", sent);
	for (i = 0; i < KMSG_STAT_NR; i++)
		seq_printf(m, "%s %ld\n", kmessage_stat_names[i],
			   atomic_long_read(&kmessage_stats[i]));
	for (i = 0; i < KMSG_NR_TYPES; i++)
		seq_printf(m, "sent_%s %ld\n", kmessage_type_names[i],
			   type_sent[i]);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(kmessage_stats);

/*
 * debugfs "send": send_kmessage() from userspace, so that a scenario can
 * send any kmessage a driver could.  One write(2) is one message:
 *
 *	"<type> <object> <signal>" then, after a newline, the aux text
 *
 * where <type> is a name of kmessage_type_names[] and <object> and <signal>
 * are words (no whitespace); a trailing newline with no aux is allowed.
 * A write that is not whole (offset 0), holds a NUL, does not parse, or
 * whose datagram would not fit in a page (a driver's aux would be cut: a
 * write is refused rather than sent in part) is refused with EINVAL and
 * sends nothing; otherwise the write returns what send_kmessage() returned,
 * its length on success.
 */
static bool kmessage_is_word(const char *s)
{
	if (!s || !*s)
		return false;
	for (; *s; s++)
		if (isspace(*s))
			return false;
	return true;
}

static ssize_t kmessage_send_write(struct file *file, const char __user *ubuf,
				   size_t count, loff_t *ppos)
{
	char *buf, *header, *aux, *type_name, *object, *signal;
	size_t len;
	int type, ret;

	if (*ppos || !count || count > PAGE_SIZE)
		return -EINVAL;
	buf = memdup_user_nul(ubuf, count);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	ret = -EINVAL;
	if (strlen(buf) != count)
		goto out;
	aux = buf;
	header = strsep(&aux, "\n");
	type_name = strsep(&header, " ");
	object = strsep(&header, " ");
	signal = header;
	if (!kmessage_is_word(object) || !kmessage_is_word(signal))
		goto out;
	type = match_string(kmessage_type_names, KMSG_NR_TYPES, type_name);
	if (type < 0)
		goto out;
	/* The datagram: header, aux and its NUL. */
	len = kmessage_header_len(strlen(object), strlen(signal)) +
	      (aux ? strlen(aux) : 0) + 1;
	if (len > PAGE_SIZE)
		goto out;
	if (aux && *aux)
		ret = send_kmessage(type, object, signal, "%s", aux);
	else
		ret = send_kmessage(type, object, signal, NULL);
	if (!ret)
		ret = count;
out:
	kfree(buf);
	return ret;
}

static const struct file_operations kmessage_send_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.write	= kmessage_send_write,
};

static int __init kmessage_check_unit(int u)
{
	int i;

	if (u < 0 || u >= MAX_LINKS) {
		pr_err("netlink unit %d out of range 0..%d\n", u, MAX_LINKS - 1);
		return -EINVAL;
	}
	for (i = 0; i < ARRAY_SIZE(kmessage_taken_units); i++) {
		if (kmessage_taken_units[i].unit != u)
			continue;
		pr_err("netlink unit %d is %s, assigned in tree; netlink_kernel_create() would silently share it, refusing\n",
		       u, kmessage_taken_units[i].what);
		return -EBUSY;
	}
	return 0;
}

static int __init kmessage_init(void)
{
	struct netlink_kernel_cfg cfg = {
		.groups	= KMSG_NR_TYPES,	/* rounded up to 32 */
		.flags	= NL_CFG_F_NONROOT_RECV,
		.input	= kmessage_input,
	};
	int ret;

	ret = kmessage_check_unit(unit);
	if (ret)
		return ret;

	kmessage_sock = netlink_kernel_create(&init_net, unit, &cfg);
	if (!kmessage_sock) {
		pr_err("unable to create netlink unit %d\n", unit);
		return -ENOMEM;
	}

	kmessage_debugfs = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("stats", 0444, kmessage_debugfs, NULL,
			    &kmessage_stats_fops);
	debugfs_create_file("send", 0200, kmessage_debugfs, NULL,
			    &kmessage_send_fops);
	return 0;
}

static void __exit kmessage_exit(void)
{
	/*
	 * No caller is left: modules using send_kmessage() hold a reference
	 * on us, and so does every userspace socket of the unit.
	 */
	debugfs_remove_recursive(kmessage_debugfs);
	netlink_kernel_release(kmessage_sock);
}

module_init(kmessage_init);
module_exit(kmessage_exit);

MODULE_DESCRIPTION("Kernel events layer of 2004: send_kmessage() over netlink");
MODULE_AUTHOR("kevent-bench");
MODULE_LICENSE("GPL");
MODULE_ALIAS_NET_PF_PROTO(PF_NETLINK, NETLINK_KMESSAGE);
