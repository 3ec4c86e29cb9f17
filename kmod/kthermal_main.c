// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal - simulated IA32_THERM_STATUS sensor and the thermal
 * interrupt handler of Robert Love's kernel events layer patch (2004),
 * reporting through send_kmessage() (kmessage.ko) and KOBJ_CHANGE uevents
 * on the CPU devices (and on the package devices, for package events).
 * See docs/events.md for the contract.
 *
 * Lifecycle: load resets the register file, creates the per-CPU sysfs
 * counters and the package devices, the ordered workqueue, the per-CPU irq_work of the injection
 * path and the debugfs interface, and registers the sensor device driver
 * last, because its probe may run at once and take interrupts.  Unload,
 * and the unwinding of a failed load, are the exact reverse: the driver
 * goes first (the device stops interrupting, its acks drain), then
 * debugfs (waiting for an injection in progress), every CPU's irq_work
 * is synced, the workqueue drained and destroyed, the sysfs groups and
 * package devices removed (so each attribute a uevent's KEVENT_ATTR names outlives the
 * uevent), and the register file freed.
 */

#include <linux/compiler.h>
#include <linux/init.h>
#include <linux/kstrtox.h>
#include <linux/module.h>
#include <linux/moduleparam.h>

#include "kthermal.h"

#define KT_RATE_LIMIT_MAX_MS	3600000U	/* one hour */
#define KT_TJMAX_MAX		255U		/* 8-bit field */

unsigned int kt_rate_limit_ms = 5000;
unsigned int kt_rate_limit_edge_ms;
unsigned int kt_rate_limit_burst_edge_ms;
unsigned int kt_tjmax = 100;

/*
 * param_set_uint_minmax(), but with WRITE_ONCE: the handler reads these in
 * hard IRQ on any CPU, without kernel_param_lock.
 */
static int kt_rate_limit_set(const char *val, const struct kernel_param *kp)
{
	unsigned int ms;
	int ret;

	if (!val)
		return -EINVAL;
	ret = kstrtouint(val, 0, &ms);
	if (ret)
		return ret;
	if (ms > KT_RATE_LIMIT_MAX_MS)
		return -EINVAL;
	WRITE_ONCE(*(unsigned int *)kp->arg, ms);
	return 0;
}

static const struct kernel_param_ops kt_rate_limit_ops = {
	.set	= kt_rate_limit_set,
	.get	= param_get_uint,
};

module_param_cb(rate_limit_ms, &kt_rate_limit_ops, &kt_rate_limit_ms, 0644);
MODULE_PARM_DESC(rate_limit_ms,
		 "per-CPU: ignore thermal interrupts within this many ms of the last handled one, 0 = off, at most 3600000 (default 5000, as 2.6.8)");

/* The same range: an edge wider than any window is still meaningful. */
module_param_cb(rate_limit_edge_ms, &kt_rate_limit_ops, &kt_rate_limit_edge_ms,
		0644);
MODULE_PARM_DESC(rate_limit_edge_ms,
		 "record rate-limit decisions this close (ms) to the window's edge in debugfs rate_limit_edges, 0 = none, at most 3600000 (default 0)");

/*
 * Decisions between firings of one timed device entry have their own
 * edge: their spacing is the guest's own, while any other decision's
 * spacing includes whatever the host took between two injections.
 */
module_param_cb(rate_limit_burst_edge_ms, &kt_rate_limit_ops,
		&kt_rate_limit_burst_edge_ms, 0644);
MODULE_PARM_DESC(rate_limit_burst_edge_ms,
		 "as rate_limit_edge_ms, for decisions between firings of one timed device entry (default 0)");

static int kt_tjmax_set(const char *val, const struct kernel_param *kp)
{
	return param_set_uint_minmax(val, kp, 1, KT_TJMAX_MAX);
}

static const struct kernel_param_ops kt_tjmax_ops = {
	.set	= kt_tjmax_set,
	.get	= param_get_uint,
};

module_param_cb(tjmax, &kt_tjmax_ops, &kt_tjmax, 0444);
MODULE_PARM_DESC(tjmax, "TjMax in degrees C, IA32_TEMPERATURE_TARGET bits 23:16, 1..255 (default 100)");

static int __init kt_init(void)
{
	int ret;

	ret = kt_regs_init();
	if (ret)
		return ret;
	ret = kt_sysfs_init();
	if (ret)
		goto err_regs;
	ret = kt_irq_init();
	if (ret)
		goto err_sysfs;
	kt_inject_init();
	kt_debugfs_init();
	ret = kt_pci_init();
	if (ret)
		goto err_debugfs;
	return 0;

err_debugfs:
	kt_debugfs_exit();
	kt_inject_exit();
	kt_irq_exit();
err_sysfs:
	kt_sysfs_exit();
err_regs:
	kt_regs_exit();
	return ret;
}

static void __exit kt_exit(void)
{
	kt_pci_exit();
	kt_debugfs_exit();
	kt_inject_exit();
	kt_irq_exit();
	kt_sysfs_exit();
	kt_regs_exit();
}

module_init(kt_init);
module_exit(kt_exit);

MODULE_DESCRIPTION("Simulated IA32_THERM_STATUS sensor and thermal interrupt reporting through kmessage and uevents");
MODULE_AUTHOR("kevent-bench");
MODULE_LICENSE("GPL");
