// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: per-CPU counters in sysfs
 *
 * /sys/devices/system/cpu/cpuN/kevent_thermal/<counter>, one decimal value
 * per file.  These attributes are the payload of the uevents (seed 003:
 * "payloads are sysfs attributes"): KEVENT_ATTR names the counter of the
 * event, relative to the CPU device's directory.
 */

#include <linux/atomic.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/device.h>
#include <linux/percpu.h>
#include <linux/sysfs.h>

#include "kthermal.h"

static const char * const kt_counter_names[KT_CNT_NR] = {
	[KT_CNT_INTERRUPTS]		= "interrupts",
	[KT_CNT_RATE_LIMITED]		= "rate_limited",
	[KT_CNT_KMESSAGE_FAILED]	= "kmessage_failed",
	[KT_CNT_UEVENT_ALLOC_FAILED]	= "uevent_alloc_failed",
	[KT_CNT_UEVENT_QUEUE_FULL]	= "uevent_queue_full",
	[KT_CNT_UEVENT_FAILED]		= "uevent_failed",
	[KT_CNT_EVENT(KT_EV_PROCHOT, true)]	= "prochot_high",
	[KT_CNT_EVENT(KT_EV_PROCHOT, false)]	= "prochot_normal",
	[KT_CNT_EVENT(KT_EV_EXT_PROCHOT, true)]	= "external_prochot_high",
	[KT_CNT_EVENT(KT_EV_EXT_PROCHOT, false)]	= "external_prochot_normal",
	[KT_CNT_EVENT(KT_EV_CRITICAL, true)]	= "critical_high",
	[KT_CNT_EVENT(KT_EV_CRITICAL, false)]	= "critical_normal",
	[KT_CNT_EVENT(KT_EV_THRESHOLD1, true)]	= "threshold1_high",
	[KT_CNT_EVENT(KT_EV_THRESHOLD1, false)]	= "threshold1_normal",
	[KT_CNT_EVENT(KT_EV_THRESHOLD2, true)]	= "threshold2_high",
	[KT_CNT_EVENT(KT_EV_THRESHOLD2, false)]	= "threshold2_normal",
	[KT_CNT_EVENT(KT_EV_POWER_LIMIT, true)]	= "power_limit_high",
	[KT_CNT_EVENT(KT_EV_POWER_LIMIT, false)]	= "power_limit_normal",
	[KT_CNT_EVENT(KT_EV_PKG_PROCHOT, true)]	= "package_prochot_high",
	[KT_CNT_EVENT(KT_EV_PKG_PROCHOT, false)]	= "package_prochot_normal",
	[KT_CNT_EVENT(KT_EV_PKG_EXT_PROCHOT, true)]	= "package_external_prochot_high",
	[KT_CNT_EVENT(KT_EV_PKG_EXT_PROCHOT, false)]	= "package_external_prochot_normal",
	[KT_CNT_EVENT(KT_EV_PKG_CRITICAL, true)]	= "package_critical_high",
	[KT_CNT_EVENT(KT_EV_PKG_CRITICAL, false)]	= "package_critical_normal",
	[KT_CNT_EVENT(KT_EV_PKG_THRESHOLD1, true)]	= "package_threshold1_high",
	[KT_CNT_EVENT(KT_EV_PKG_THRESHOLD1, false)]	= "package_threshold1_normal",
	[KT_CNT_EVENT(KT_EV_PKG_THRESHOLD2, true)]	= "package_threshold2_high",
	[KT_CNT_EVENT(KT_EV_PKG_THRESHOLD2, false)]	= "package_threshold2_normal",
	[KT_CNT_EVENT(KT_EV_PKG_POWER_LIMIT, true)]	= "package_power_limit_high",
	[KT_CNT_EVENT(KT_EV_PKG_POWER_LIMIT, false)]	= "package_power_limit_normal",
};

/**
 * struct kt_counter_attr - one counter attribute
 * @dattr: device attribute
 * @idx: counter index
 */
struct kt_counter_attr {
	struct device_attribute dattr;
	enum kt_counter idx;
};

static struct kt_counter_attr kt_counter_attrs[KT_CNT_NR];
static struct attribute *kt_attrs[KT_CNT_NR + 1];

static const struct attribute_group kt_group = {
	.name	= KT_SYSFS_GROUP,
	.attrs	= kt_attrs,
};

/* CPUs whose device got the group. */
static struct cpumask kt_sysfs_cpus;

/**
 * kt_counter_name() - sysfs name of a counter
 * @idx: counter index
 *
 * Return: the attribute name, e.g. "prochot_high".
 */
const char *kt_counter_name(enum kt_counter idx)
{
	return kt_counter_names[idx];
}

static ssize_t kt_counter_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct kt_counter_attr *ca = container_of(attr, struct kt_counter_attr,
						  dattr);
	struct kt_cpu_state *st = per_cpu_ptr(&kt_cpu_state, dev->id);

	return sysfs_emit(buf, "%ld\n", atomic_long_read(&st->cnt[ca->idx]));
}

/**
 * kt_sysfs_exit() - remove the counter groups
 *
 * Return: nothing.
 */
void kt_sysfs_exit(void)
{
	struct device *dev;
	unsigned int cpu;

	for_each_cpu(cpu, &kt_sysfs_cpus) {
		dev = get_cpu_device(cpu);
		if (dev)
			sysfs_remove_group(&dev->kobj, &kt_group);
	}
	cpumask_clear(&kt_sysfs_cpus);
}

/**
 * kt_sysfs_init() - add the counter group to every CPU device
 *
 * Every possible CPU that has a device (all present CPUs) gets the group.
 *
 * Return: 0 or the error of sysfs_create_group() (nothing left behind).
 */
int kt_sysfs_init(void)
{
	struct kt_counter_attr *ca;
	struct device *dev;
	unsigned int cpu;
	int i, ret;

	for (i = 0; i < KT_CNT_NR; i++) {
		ca = &kt_counter_attrs[i];
		sysfs_attr_init(&ca->dattr.attr);
		ca->dattr.attr.name = kt_counter_names[i];
		ca->dattr.attr.mode = 0444;
		ca->dattr.show = kt_counter_show;
		ca->idx = i;
		kt_attrs[i] = &ca->dattr.attr;
	}
	kt_attrs[KT_CNT_NR] = NULL;

	for_each_possible_cpu(cpu) {
		dev = get_cpu_device(cpu);
		if (!dev)
			continue;
		ret = sysfs_create_group(&dev->kobj, &kt_group);
		if (ret) {
			kt_sysfs_exit();
			return ret;
		}
		cpumask_set_cpu(cpu, &kt_sysfs_cpus);
	}
	return 0;
}
