// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: every debugfs file of kevent_thermal.ko
 *
 * In /sys/kernel/debug/kevent_thermal/: the in-guest injection interface,
 * mce-inject style, the software view of the registers, the handler's
 * records, and device/ while a sensor device is bound.  See kt_readme
 * below (also the file README) for the interface.  Invalid input of any
 * kind gives -EINVAL and changes nothing.  The files only parse and
 * print: what they show and change belongs to the other files, through
 * kthermal.h.
 */

#include <linux/cpumask.h>
#include <linux/ctype.h>
#include <linux/debugfs.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/kernel.h>
#include <linux/kstrtox.h>
#include <linux/mutex.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "kthermal.h"

/* Longest accepted write, newline included. */
#define KT_LINE_MAX	64

static const char kt_readme[] =
"kevent_thermal: simulated IA32_THERM_STATUS sensor and thermal interrupt\n"
"\n"
"Injection (write, then the interrupt is raised on the target CPU):\n"
"  cpu               target CPU of the next staged injection (decimal,\n"
"                    must be online); read: \"%u\\n\"\n"
"  therm_status      staged new hardware state of the target's\n"
"                    IA32_THERM_STATUS (0x19c); hex, 0x optional;\n"
"                    read: \"0x%llx\\n\"\n"
"  pkg_therm_status  staged new hardware state of the target's package\n"
"                    IA32_PACKAGE_THERM_STATUS (0x1b1); same format\n"
"  trigger           \"core\" or \"package\": apply the staged state to the\n"
"                    target CPU or its package and raise the thermal\n"
"                    interrupt on the target CPU (package: on every online\n"
"                    CPU of the package, one after the other, ascending);\n"
"                    \"core <cpu> <hex>\" or \"package <cpu> <hex>\": the\n"
"                    same without staging (staged values are unchanged)\n"
"  stats             injections, fence_timeouts, uevents_pending\n"
"  rate_limit_edges  rate-limit decisions within the module parameter\n"
"                    rate_limit_edge_ms of the window's edge, the latest 64:\n"
"                    \"cpu N interrupt I margin_ns M within_burst 0|1\" each\n"
"                    (M = time since the last handled interrupt minus the\n"
"                    window, negative: limited), then \"overflow K\"\n"
"\n"
"A hardware state sets status bits 0 PROCHOT, 2 PROCHOT#/FORCEPR#,\n"
"4 critical temperature, 6 threshold #1, 8 threshold #2, 10 power limit,\n"
"readout bits 22:16 (degrees below TjMax) and, core only, bit 31 readout\n"
"valid.  The hardware sets log bit n+1 whenever status bit n changes; log\n"
"bits (1 3 5 7 9 11) given in the state are latched in addition.  Other\n"
"bits are reserved: core mask 0x807f0fff, package mask 0x7f0fff.\n"
"\n"
"A trigger write returns once the handler has run in hard IRQ on the\n"
"target CPU and every kmessage and uevent it caused has been broadcast\n"
"(-ETIMEDOUT after 10 s).  Injections are serialised.\n"
"\n"
"Software view of the registers (rdmsr/wrmsr), cpuN/ for each possible CPU:\n"
"  therm_status        IA32_THERM_STATUS, read \"0x%llx\\n\"; write: log bits\n"
"                      are R/WC0 (0 clears, 1 keeps), status bits must be\n"
"                      written unchanged, readout/valid are ignored\n"
"  pkg_therm_status    IA32_PACKAGE_THERM_STATUS of the CPU's package, same\n"
"  temperature_target  IA32_TEMPERATURE_TARGET, TjMax in 23:16, read-only\n"
"Writes need the CPU online.\n"
"\n"
"Sensor device (ivshmem-doorbell 1af4:1110), device/ while one is bound:\n"
"  hold_acks  \"1\": acks are recorded, neither published nor rung;\n"
"             \"0\": publish the latest held acks and ring; read \"%u\\n\"\n"
"  bare       \"1\": the handler acknowledges each good entry at once,\n"
"             with no register update, no handler run, no message;\n"
"             \"0\": entries are fired as usual; read \"%u\\n\"\n"
"  stats      \"name value\" lines: cpuN_interrupts, cpuN_entries,\n"
"             cpuN_firings, cpuN_bare, cpuN_rejected, cpuN_bad_seq,\n"
"             cpuN_misdelivered, cpuN_bad_entry, cpuN_ring_corrupt for\n"
"             each served CPU, then acks, acks_held, done_direct\n"
"\n"
"Errors: -EINVAL for anything invalid (an empty write, a NUL byte\n"
"anywhere in the write, not a number, CPU out of range or offline,\n"
"reserved bits, a status bit changed by software, unknown trigger word);\n"
"nothing is changed then.\n";

static struct dentry *kt_dir;
static struct dentry *kt_device_dir;

/* Staged injection, mce-inject style. */
static DEFINE_MUTEX(kt_stage_lock);
static unsigned int kt_stage_cpu;
static u64 kt_stage_val[2] = {
	[KT_REG_THERM_STATUS] = KT_CORE_RESET,
	[KT_REG_PKG_THERM_STATUS] = KT_PKG_RESET,
};

/*
 * Copy one line from userspace; *line: NUL-terminated, whitespace trimmed.
 * The write is its @count bytes: a NUL among them is refused, or parsing the
 * string would act on the part before it and silently drop the rest.
 */
static int kt_get_line(char *buf, size_t size, const char __user *ubuf,
		       size_t count, char **line)
{
	if (!count || count >= size)
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	if (memchr(buf, '\0', count))
		return -EINVAL;
	buf[count] = '\0';
	*line = strim(buf);
	return 0;
}

static char *kt_token(char **s)
{
	char *t = skip_spaces(*s);
	char *e = t;

	if (!*t) {
		*s = t;
		return NULL;
	}
	while (*e && !isspace(*e))
		e++;
	if (*e)
		*e++ = '\0';
	*s = e;
	return t;
}

/*
 * One number, below KT_LINE_MAX bytes with whitespace around it (a
 * trailing newline, say); @base as for kstrtou64().  -EINVAL for an empty
 * or too long write, a NUL byte anywhere, or not a number.
 */
static int kt_get_u64(const char __user *ubuf, size_t count,
		      unsigned int base, u64 *val)
{
	char buf[KT_LINE_MAX], *line;
	int ret;

	ret = kt_get_line(buf, sizeof(buf), ubuf, count, &line);
	if (ret)
		return ret;
	return kstrtou64(line, base, val) ? -EINVAL : 0;
}

static ssize_t kt_read_text(char __user *ubuf, size_t count, loff_t *ppos,
			    const char *fmt, u64 val)
{
	char buf[32];
	int len;

	len = scnprintf(buf, sizeof(buf), fmt, val);
	return simple_read_from_buffer(ubuf, count, ppos, buf, len);
}

static bool kt_cpu_valid(u64 cpu)
{
	return cpu < nr_cpu_ids && cpu_online(cpu);
}

/* cpu */

static ssize_t kt_cpu_read(struct file *file, char __user *ubuf, size_t count,
			   loff_t *ppos)
{
	unsigned int cpu;

	mutex_lock(&kt_stage_lock);
	cpu = kt_stage_cpu;
	mutex_unlock(&kt_stage_lock);
	return kt_read_text(ubuf, count, ppos, "%llu\n", cpu);
}

static ssize_t kt_cpu_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	u64 cpu;
	int ret;

	ret = kt_get_u64(ubuf, count, 10, &cpu);
	if (ret)
		return ret;
	if (!kt_cpu_valid(cpu))
		return -EINVAL;
	mutex_lock(&kt_stage_lock);
	kt_stage_cpu = cpu;
	mutex_unlock(&kt_stage_lock);
	return count;
}

static const struct file_operations kt_cpu_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_cpu_read,
	.write	= kt_cpu_write,
	.llseek	= default_llseek,
};

/* therm_status, pkg_therm_status (staged); private_data is the kt_reg */

static ssize_t kt_stage_read(struct file *file, char __user *ubuf,
			     size_t count, loff_t *ppos)
{
	enum kt_reg reg = (uintptr_t)file->private_data;
	u64 val;

	mutex_lock(&kt_stage_lock);
	val = kt_stage_val[reg];
	mutex_unlock(&kt_stage_lock);
	return kt_read_text(ubuf, count, ppos, "0x%llx\n", val);
}

static ssize_t kt_stage_write(struct file *file, const char __user *ubuf,
			      size_t count, loff_t *ppos)
{
	enum kt_reg reg = (uintptr_t)file->private_data;
	u64 val;
	int ret;

	ret = kt_get_u64(ubuf, count, 16, &val);
	if (ret)
		return ret;
	if (kt_regs_hw_check(reg, val))
		return -EINVAL;
	mutex_lock(&kt_stage_lock);
	kt_stage_val[reg] = val;
	mutex_unlock(&kt_stage_lock);
	return count;
}

static const struct file_operations kt_stage_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_stage_read,
	.write	= kt_stage_write,
	.llseek	= default_llseek,
};

/* trigger */

static ssize_t kt_trigger_write(struct file *file, const char __user *ubuf,
				size_t count, loff_t *ppos)
{
	char buf[KT_LINE_MAX], *s;
	char *word, *tcpu, *tval;
	unsigned int cpu;
	enum kt_reg reg;
	u64 val;
	int ret;

	ret = kt_get_line(buf, sizeof(buf), ubuf, count, &s);
	if (ret)
		return ret;
	word = kt_token(&s);
	tcpu = kt_token(&s);
	tval = kt_token(&s);
	if (!word || kt_token(&s) || (tcpu && !tval))
		return -EINVAL;

	if (!strcmp(word, "core"))
		reg = KT_REG_THERM_STATUS;
	else if (!strcmp(word, "package"))
		reg = KT_REG_PKG_THERM_STATUS;
	else
		return -EINVAL;

	if (tcpu) {
		if (kstrtouint(tcpu, 10, &cpu) || kstrtou64(tval, 16, &val))
			return -EINVAL;
	} else {
		mutex_lock(&kt_stage_lock);
		cpu = kt_stage_cpu;
		val = kt_stage_val[reg];
		mutex_unlock(&kt_stage_lock);
	}

	ret = kt_inject(cpu, reg, val);
	return ret ? ret : count;
}

static const struct file_operations kt_trigger_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.write	= kt_trigger_write,
	.llseek	= noop_llseek,
};

/* README, stats */

static ssize_t kt_readme_read(struct file *file, char __user *ubuf,
			      size_t count, loff_t *ppos)
{
	return simple_read_from_buffer(ubuf, count, ppos, kt_readme,
				       sizeof(kt_readme) - 1);
}

static const struct file_operations kt_readme_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_readme_read,
	.llseek	= default_llseek,
};

static int kt_stats_show(struct seq_file *m, void *unused)
{
	seq_printf(m, "injections %llu\nfence_timeouts %llu\nuevents_pending %ld\n",
		   kt_injections(), kt_fence_timeouts(), kt_uevents_pending());
	return 0;
}

DEFINE_SHOW_ATTRIBUTE(kt_stats);

/* rate_limit_edges: oldest first, then how many were overwritten */

static int kt_rate_limit_edges_show(struct seq_file *m, void *unused)
{
	struct kt_edge *copy;
	u64 made, first, n;

	copy = kmalloc_array(KT_EDGE_RECORDS, sizeof(*copy), GFP_KERNEL);
	if (!copy)
		return -ENOMEM;
	/* Printing under the lock that hard IRQs record with would stall them. */
	made = kt_rate_limit_edges(copy);
	first = made > KT_EDGE_RECORDS ? made - KT_EDGE_RECORDS : 0;
	for (n = first; n < made; n++) {
		const struct kt_edge *e = &copy[n % KT_EDGE_RECORDS];

		seq_printf(m, "cpu %u interrupt %ld margin_ns %lld within_burst %d\n",
			   e->cpu, e->interrupt, e->margin_ns, e->within_burst);
	}
	seq_printf(m, "overflow %llu\n", first);
	kfree(copy);
	return 0;
}

DEFINE_SHOW_ATTRIBUTE(kt_rate_limit_edges);

/* device/hold_acks, device/bare, device/stats; private_data is the kt_rings */

static const char * const kt_vec_stat_names[KT_VS_NR] = {
	[KT_VS_INTERRUPTS]	= "interrupts",
	[KT_VS_ENTRIES]		= "entries",
	[KT_VS_FIRINGS]		= "firings",
	[KT_VS_BARE]		= "bare",
	[KT_VS_REJECTED]	= "rejected",
	[KT_VS_BAD_SEQ]		= "bad_seq",
	[KT_VS_MISDELIVERED]	= "misdelivered",
	[KT_VS_BAD_ENTRY]	= "bad_entry",
	[KT_VS_RING_CORRUPT]	= "ring_corrupt",
};

static ssize_t kt_hold_acks_read(struct file *file, char __user *ubuf,
				 size_t count, loff_t *ppos)
{
	struct kt_rings *r = file->private_data;

	return kt_read_text(ubuf, count, ppos, "%llu\n", kt_ring_hold_acks(r));
}

static ssize_t kt_hold_acks_write(struct file *file, const char __user *ubuf,
				  size_t count, loff_t *ppos)
{
	struct kt_rings *r = file->private_data;
	u64 hold;
	int ret;

	ret = kt_get_u64(ubuf, count, 10, &hold);
	if (ret)
		return ret;
	if (hold > 1)
		return -EINVAL;
	kt_ring_set_hold_acks(r, hold);
	return count;
}

static const struct file_operations kt_hold_acks_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_hold_acks_read,
	.write	= kt_hold_acks_write,
	.llseek	= default_llseek,
};

static ssize_t kt_bare_read(struct file *file, char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	struct kt_rings *r = file->private_data;

	return kt_read_text(ubuf, count, ppos, "%llu\n", kt_ring_bare(r));
}

static ssize_t kt_bare_write(struct file *file, const char __user *ubuf,
			     size_t count, loff_t *ppos)
{
	struct kt_rings *r = file->private_data;
	u64 bare;
	int ret;

	ret = kt_get_u64(ubuf, count, 10, &bare);
	if (ret)
		return ret;
	if (bare > 1)
		return -EINVAL;
	kt_ring_set_bare(r, bare);
	return count;
}

static const struct file_operations kt_bare_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_bare_read,
	.write	= kt_bare_write,
	.llseek	= default_llseek,
};

static int kt_device_stats_show(struct seq_file *m, void *unused)
{
	struct kt_rings *r = m->private;
	u64 acks, acks_held;
	unsigned int i, s;

	for (i = 0; i < kt_ring_nr(r); i++)
		for (s = 0; s < KT_VS_NR; s++)
			seq_printf(m, "cpu%u_%s %llu\n", i,
				   kt_vec_stat_names[s], kt_ring_stat(r, i, s));
	kt_ring_acks(r, &acks, &acks_held);
	seq_printf(m, "acks %llu\nacks_held %llu\ndone_direct %llu\n",
		   acks, acks_held, kt_done_direct());
	return 0;
}

DEFINE_SHOW_ATTRIBUTE(kt_device_stats);

/*
 * cpuN/therm_status, cpuN/pkg_therm_status, cpuN/temperature_target;
 * private_data is cpu * KT_REG_NR + the kt_reg
 */

static void *kt_regfile_data(unsigned int cpu, enum kt_reg reg)
{
	return (void *)(uintptr_t)(cpu * KT_REG_NR + reg);
}

static unsigned int kt_regfile_cpu(struct file *file)
{
	return (uintptr_t)file->private_data / KT_REG_NR;
}

static enum kt_reg kt_regfile_reg(struct file *file)
{
	return (uintptr_t)file->private_data % KT_REG_NR;
}

static ssize_t kt_reg_read(struct file *file, char __user *ubuf, size_t count,
			   loff_t *ppos)
{
	return kt_read_text(ubuf, count, ppos, "0x%llx\n",
			    kt_regs_read(kt_regfile_cpu(file),
					 kt_regfile_reg(file)));
}

static ssize_t kt_reg_write(struct file *file, const char __user *ubuf,
			    size_t count, loff_t *ppos)
{
	unsigned int cpu = kt_regfile_cpu(file);
	u64 val;
	int ret;

	ret = kt_get_u64(ubuf, count, 16, &val);
	if (ret)
		return ret;
	if (!kt_cpu_valid(cpu))
		return -EINVAL;
	ret = kt_regs_sw_write(cpu, kt_regfile_reg(file), val);
	return ret ? ret : count;
}

static const struct file_operations kt_reg_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_reg_read,
	.write	= kt_reg_write,
	.llseek	= default_llseek,
};

static const struct file_operations kt_reg_ro_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_reg_read,
	.llseek	= default_llseek,
};

static void kt_debugfs_cpu(unsigned int cpu)
{
	struct dentry *dir;
	char name[16];

	snprintf(name, sizeof(name), "cpu%u", cpu);
	dir = debugfs_create_dir(name, kt_dir);
	debugfs_create_file("therm_status", 0600, dir,
			    kt_regfile_data(cpu, KT_REG_THERM_STATUS),
			    &kt_reg_fops);
	debugfs_create_file("pkg_therm_status", 0600, dir,
			    kt_regfile_data(cpu, KT_REG_PKG_THERM_STATUS),
			    &kt_reg_fops);
	debugfs_create_file("temperature_target", 0444, dir,
			    kt_regfile_data(cpu, KT_REG_TEMPERATURE_TARGET),
			    &kt_reg_ro_fops);
}

/**
 * kt_debugfs_init() - create /sys/kernel/debug/kevent_thermal/
 *
 * Return: nothing.
 */
void kt_debugfs_init(void)
{
	unsigned int cpu;

	kt_dir = debugfs_create_dir(KBUILD_MODNAME, NULL);
	debugfs_create_file("README", 0444, kt_dir, NULL, &kt_readme_fops);
	debugfs_create_file("stats", 0444, kt_dir, NULL, &kt_stats_fops);
	debugfs_create_file("rate_limit_edges", 0444, kt_dir, NULL,
			    &kt_rate_limit_edges_fops);
	debugfs_create_file("cpu", 0600, kt_dir, NULL, &kt_cpu_fops);
	debugfs_create_file("therm_status", 0600, kt_dir,
			    (void *)(uintptr_t)KT_REG_THERM_STATUS,
			    &kt_stage_fops);
	debugfs_create_file("pkg_therm_status", 0600, kt_dir,
			    (void *)(uintptr_t)KT_REG_PKG_THERM_STATUS,
			    &kt_stage_fops);
	debugfs_create_file("trigger", 0200, kt_dir, NULL, &kt_trigger_fops);
	for_each_possible_cpu(cpu)
		kt_debugfs_cpu(cpu);
}

/**
 * kt_debugfs_device_init() - create device/ for a bound sensor device
 * @r: its rings
 *
 * Return: nothing.
 */
void kt_debugfs_device_init(struct kt_rings *r)
{
	kt_device_dir = debugfs_create_dir("device", kt_dir);
	debugfs_create_file("hold_acks", 0600, kt_device_dir, r,
			    &kt_hold_acks_fops);
	debugfs_create_file("bare", 0600, kt_device_dir, r, &kt_bare_fops);
	debugfs_create_file("stats", 0444, kt_device_dir, r,
			    &kt_device_stats_fops);
}

/**
 * kt_debugfs_device_exit() - remove device/
 *
 * Waits for readers and writers still inside its files: after this none
 * uses the rings.
 *
 * Return: nothing.
 */
void kt_debugfs_device_exit(void)
{
	debugfs_remove_recursive(kt_device_dir);
	kt_device_dir = NULL;
}

/**
 * kt_debugfs_exit() - remove the debugfs files
 *
 * Waits for writers still inside a file operation (an injection included),
 * so no injection can start or be in progress afterwards.
 *
 * Return: nothing.
 */
void kt_debugfs_exit(void)
{
	debugfs_remove_recursive(kt_dir);
}
