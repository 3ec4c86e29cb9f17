// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: counters in sysfs, per CPU and per package
 *
 * /sys/devices/system/cpu/cpuN/kevent_thermal/<counter>, one decimal value
 * per file, for the core events of CPU N.  These attributes are the payload
 * of the uevents (seed 003: "payloads are sysfs attributes"): KEVENT_ATTR
 * names the counter of the event, relative to the device's directory.
 *
 * A package has no device of its own in the kernel, yet its register and
 * its events belong to no one CPU of it: each package gets a device of
 * class kevent_thermal, /sys/devices/virtual/kevent_thermal/packageP, whose
 * attributes are the package's counters and "cpus", the package's CPUs.
 * Its events are uevents on that device, whichever CPU handled them.
 * Packages are indexed by topology_logical_package_id(), in an array of
 * topology_max_packages(); those of the CPUs present at load get a device,
 * named by topology_physical_package_id().
 */

#include <linux/atomic.h>
#include <linux/bug.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/device.h>
#include <linux/err.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/sysfs.h>
#include <linux/topology.h>

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
};

static const char * const kt_pkg_counter_names[KT_PKG_CNT_NR] = {
	[KT_PKG_CNT(KT_EV_PKG_PROCHOT, true)]		= "package_prochot_high",
	[KT_PKG_CNT(KT_EV_PKG_PROCHOT, false)]		= "package_prochot_normal",
	[KT_PKG_CNT(KT_EV_PKG_EXT_PROCHOT, true)]	= "package_external_prochot_high",
	[KT_PKG_CNT(KT_EV_PKG_EXT_PROCHOT, false)]	= "package_external_prochot_normal",
	[KT_PKG_CNT(KT_EV_PKG_CRITICAL, true)]		= "package_critical_high",
	[KT_PKG_CNT(KT_EV_PKG_CRITICAL, false)]		= "package_critical_normal",
	[KT_PKG_CNT(KT_EV_PKG_THRESHOLD1, true)]	= "package_threshold1_high",
	[KT_PKG_CNT(KT_EV_PKG_THRESHOLD1, false)]	= "package_threshold1_normal",
	[KT_PKG_CNT(KT_EV_PKG_THRESHOLD2, true)]	= "package_threshold2_high",
	[KT_PKG_CNT(KT_EV_PKG_THRESHOLD2, false)]	= "package_threshold2_normal",
	[KT_PKG_CNT(KT_EV_PKG_POWER_LIMIT, true)]	= "package_power_limit_high",
	[KT_PKG_CNT(KT_EV_PKG_POWER_LIMIT, false)]	= "package_power_limit_normal",
};

/**
 * struct kt_pkg - the device of one package and its counters
 * @id: topology_physical_package_id() of its CPUs, for the device's name
 * @dev: /sys/devices/virtual/kevent_thermal/package@id, NULL if the package
 *	 has no CPU present at load
 * @cpus: its CPUs present at load
 * @cnt: counters, KT_PKG_CNT()
 */
struct kt_pkg {
	int id;
	struct device *dev;
	struct cpumask cpus;
	atomic_long_t cnt[KT_PKG_CNT_NR];
};

static const struct class kt_pkg_class = {
	.name = KT_PKG_CLASS,
};

/* By logical package id, kt_nr_pkgs = topology_max_packages() of them. */
static struct kt_pkg *kt_pkgs;
static unsigned int kt_nr_pkgs;
static bool kt_class_registered;

/**
 * struct kt_counter_attr - one counter attribute
 * @dattr: device attribute
 * @idx: counter index: enum kt_counter of a CPU, KT_PKG_CNT() of a package
 */
struct kt_counter_attr {
	struct device_attribute dattr;
	unsigned int idx;
};

static struct kt_counter_attr kt_counter_attrs[KT_CNT_NR];
static struct attribute *kt_attrs[KT_CNT_NR + 1];

static const struct attribute_group kt_group = {
	.name	= KT_SYSFS_GROUP,
	.attrs	= kt_attrs,
};

/* CPUs whose device got the group. */
static struct cpumask kt_sysfs_cpus;

static struct kt_counter_attr kt_pkg_counter_attrs[KT_PKG_CNT_NR];
static struct attribute *kt_pkg_attrs[KT_PKG_CNT_NR + 2];

static const struct attribute_group kt_pkg_group = {
	.attrs	= kt_pkg_attrs,
};

static const struct attribute_group *kt_pkg_groups[] = {
	&kt_pkg_group,
	NULL,
};

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

/**
 * kt_pkg_counter_name() - sysfs name of a package event's counter
 * @ev: a package event, KT_EV_PKG_FIRST or later
 * @high: its signal
 *
 * Return: the attribute name of the package device, e.g.
 * "package_prochot_high".
 */
const char *kt_pkg_counter_name(enum kt_event ev, bool high)
{
	return kt_pkg_counter_names[KT_PKG_CNT(ev, high)];
}

/*
 * The package of @cpu, with or without a device.  NULL only if the kernel
 * gives @cpu a logical package id beyond topology_max_packages(), which it
 * must not.
 */
static struct kt_pkg *kt_pkg_of(unsigned int cpu)
{
	unsigned int id = topology_logical_package_id(cpu);

	if (WARN_ON_ONCE(id >= kt_nr_pkgs))
		return NULL;
	return &kt_pkgs[id];
}

/**
 * kt_pkg_count() - count one event of a package
 * @cpu: a CPU of the package
 * @ev: a package event
 * @high: its signal
 *
 * Callable from any context, hard IRQ included.
 *
 * Return: the counter's value after this event, 0 for a package that has
 * no device (no CPU of it was present at load).
 */
long kt_pkg_count(unsigned int cpu, enum kt_event ev, bool high)
{
	struct kt_pkg *p = kt_pkg_of(cpu);

	if (!p || !p->dev)
		return 0;
	return atomic_long_inc_return(&p->cnt[KT_PKG_CNT(ev, high)]);
}

/**
 * kt_pkg_device() - the device of a package
 * @cpu: a CPU of the package
 *
 * Return: the device its events are uevents of, NULL if it has none.
 */
struct device *kt_pkg_device(unsigned int cpu)
{
	struct kt_pkg *p = kt_pkg_of(cpu);

	return p ? p->dev : NULL;
}

static ssize_t kt_counter_show(struct device *dev,
			       struct device_attribute *attr, char *buf)
{
	struct kt_counter_attr *ca = container_of(attr, struct kt_counter_attr,
						  dattr);
	struct kt_cpu_state *st = per_cpu_ptr(&kt_cpu_state, dev->id);

	return sysfs_emit(buf, "%ld\n", atomic_long_read(&st->cnt[ca->idx]));
}

static ssize_t kt_pkg_counter_show(struct device *dev,
				   struct device_attribute *attr, char *buf)
{
	struct kt_counter_attr *ca = container_of(attr, struct kt_counter_attr,
						  dattr);
	struct kt_pkg *p = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%ld\n", atomic_long_read(&p->cnt[ca->idx]));
}

static ssize_t cpus_show(struct device *dev, struct device_attribute *attr,
			 char *buf)
{
	struct kt_pkg *p = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%*pbl\n", cpumask_pr_args(&p->cpus));
}

static DEVICE_ATTR_RO(cpus);

/* The @n counter attributes named @names: @ca, and in @attrs[0..@n-1]. */
static void kt_counter_attrs_init(struct kt_counter_attr *ca,
				  struct attribute **attrs,
				  const char * const *names, unsigned int n,
				  ssize_t (*show)(struct device *dev,
						  struct device_attribute *attr,
						  char *buf))
{
	unsigned int i;

	for (i = 0; i < n; i++) {
		sysfs_attr_init(&ca[i].dattr.attr);
		ca[i].dattr.attr.name = names[i];
		ca[i].dattr.attr.mode = 0444;
		ca[i].dattr.show = show;
		ca[i].idx = i;
		attrs[i] = &ca[i].dattr.attr;
	}
}

static void kt_pkg_exit(void)
{
	unsigned int i;

	for (i = 0; i < kt_nr_pkgs; i++)
		if (!IS_ERR_OR_NULL(kt_pkgs[i].dev))
			device_unregister(kt_pkgs[i].dev);
	kfree(kt_pkgs);
	kt_pkgs = NULL;
	kt_nr_pkgs = 0;
	if (kt_class_registered)
		class_unregister(&kt_pkg_class);
	kt_class_registered = false;
}

/* A device for each package of a present CPU, in logical package order. */
static int kt_pkg_init(void)
{
	struct kt_pkg *p;
	unsigned int cpu, i;
	int ret;

	kt_counter_attrs_init(kt_pkg_counter_attrs, kt_pkg_attrs,
			      kt_pkg_counter_names, KT_PKG_CNT_NR,
			      kt_pkg_counter_show);
	kt_pkg_attrs[KT_PKG_CNT_NR] = &dev_attr_cpus.attr;
	kt_pkg_attrs[KT_PKG_CNT_NR + 1] = NULL;

	kt_nr_pkgs = topology_max_packages();
	kt_pkgs = kcalloc(kt_nr_pkgs, sizeof(*kt_pkgs), GFP_KERNEL);
	if (!kt_pkgs) {
		kt_nr_pkgs = 0;
		return -ENOMEM;
	}
	for_each_present_cpu(cpu) {
		p = kt_pkg_of(cpu);
		if (!p)
			continue;
		if (cpumask_empty(&p->cpus))
			p->id = topology_physical_package_id(cpu);
		cpumask_set_cpu(cpu, &p->cpus);
	}

	ret = class_register(&kt_pkg_class);
	if (ret)
		goto err;
	kt_class_registered = true;
	for (i = 0; i < kt_nr_pkgs; i++) {
		p = &kt_pkgs[i];
		if (cpumask_empty(&p->cpus))
			continue;
		p->dev = device_create_with_groups(&kt_pkg_class, NULL, 0, p,
						   kt_pkg_groups, "package%d",
						   p->id);
		if (IS_ERR(p->dev)) {
			ret = PTR_ERR(p->dev);
			goto err;
		}
	}
	return 0;

err:
	kt_pkg_exit();
	return ret;
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

	kt_pkg_exit();
	for_each_cpu(cpu, &kt_sysfs_cpus) {
		dev = get_cpu_device(cpu);
		if (dev)
			sysfs_remove_group(&dev->kobj, &kt_group);
	}
	cpumask_clear(&kt_sysfs_cpus);
}

/**
 * kt_sysfs_init() - add the counter group to every CPU device, and create
 * the package devices
 *
 * Every possible CPU that has a device (all present CPUs) gets the group;
 * every package of a present CPU gets its device.
 *
 * Return: 0, or the error of sysfs_create_group() or of the package
 * devices' creation (nothing left behind).
 */
int kt_sysfs_init(void)
{
	struct device *dev;
	unsigned int cpu;
	int ret;

	kt_counter_attrs_init(kt_counter_attrs, kt_attrs, kt_counter_names,
			      KT_CNT_NR, kt_counter_show);
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
	ret = kt_pkg_init();
	if (ret)
		kt_sysfs_exit();
	return ret;
}
