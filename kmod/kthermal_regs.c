// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: the simulated thermal register file
 *
 * QEMU TCG returns 0 for rdmsr of 0x19c/0x1a2/0x1b1 and ignores wrmsr, so
 * the "hardware" is simulated here, like mce-inject's shadow registers:
 *
 *   IA32_THERM_STATUS (0x19c)          one image per CPU
 *   IA32_TEMPERATURE_TARGET (0x1a2)    one image per CPU, TjMax in 23:16
 *   IA32_PACKAGE_THERM_STATUS (0x1b1)  one image per physical package
 *
 * Status bits 0, 2, 4, 6, 8, 10 are read-only to software; the log bit
 * above each (1, 3, 5, 7, 9, 11) is set by the hardware whenever its status
 * bit changes and cleared only by software writing 0 to it (R/WC0; writing
 * 1 leaves it as it is).  Bits 22:16 are the digital readout (degrees below
 * TjMax), bit 31 (core only) says the readout is valid.  All other bits,
 * including the package HFI bit 26, are reserved.
 *
 * Packages are indexed by topology_logical_package_id(), which is dense:
 * one image per package the kernel can have, topology_max_packages() of
 * them, each reset at load.  A package also keeps the status bits the
 * thermal interrupt handler last saw (kt_regs_pkg_sample()).  All images
 * are protected by one raw spinlock, taken from any context.
 */

#include <linux/bug.h>
#include <linux/cpumask.h>
#include <linux/errno.h>
#include <linux/lockdep.h>
#include <linux/percpu.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/topology.h>

#include "kthermal.h"

/**
 * struct kt_pkg_reg - IA32_PACKAGE_THERM_STATUS of one package
 * @status: register image
 * @seen: status bits of @status at the last kt_regs_pkg_sample()
 */
struct kt_pkg_reg {
	u64 status;
	u64 seen;
};

static DEFINE_PER_CPU(u64, kt_therm_status);
static DEFINE_PER_CPU(u64, kt_temperature_target);
static struct kt_pkg_reg *kt_pkgs;	/* by logical package id */
static unsigned int kt_nr_pkgs;		/* topology_max_packages() at load */
static DEFINE_RAW_SPINLOCK(kt_regs_lock);

/*
 * The package register of @cpu.  NULL only if the kernel gives @cpu a
 * logical package id beyond topology_max_packages(), which it must not.
 */
static struct kt_pkg_reg *kt_pkg_lookup(unsigned int cpu)
{
	unsigned int id = topology_logical_package_id(cpu);

	lockdep_assert_held(&kt_regs_lock);
	if (WARN_ON_ONCE(id >= kt_nr_pkgs))
		return NULL;
	return &kt_pkgs[id];
}

/*
 * The image of @reg as @cpu sees it, to be used under kt_regs_lock.  NULL
 * if @reg is unknown or @cpu has no package (see kt_pkg_lookup()).
 */
static u64 *kt_reg_img(unsigned int cpu, enum kt_reg reg)
{
	struct kt_pkg_reg *pkg;

	lockdep_assert_held(&kt_regs_lock);
	switch (reg) {
	case KT_REG_THERM_STATUS:
		return per_cpu_ptr(&kt_therm_status, cpu);
	case KT_REG_PKG_THERM_STATUS:
		pkg = kt_pkg_lookup(cpu);
		return pkg ? &pkg->status : NULL;
	case KT_REG_TEMPERATURE_TARGET:
		return per_cpu_ptr(&kt_temperature_target, cpu);
	default:
		return NULL;
	}
}

/**
 * kt_regs_pkg_sample() - read the package register for the interrupt handler
 * @cpu: CPU whose package register is read
 * @prev: set to the status bits stored by the previous sample of the
 *	  package (0 before the first one)
 *
 * Reading the image and storing its status bits for the next sample happen
 * under one lock, so two CPUs of a package see each change once.  For a
 * CPU with no package (see kt_pkg_lookup()), the reset image is returned
 * and *@prev is set to it: no change is reported.
 *
 * Return: the current IA32_PACKAGE_THERM_STATUS image of @cpu's package.
 */
u64 kt_regs_pkg_sample(unsigned int cpu, u64 *prev)
{
	struct kt_pkg_reg *pkg;
	unsigned long flags;
	u64 val = KT_PKG_RESET;

	raw_spin_lock_irqsave(&kt_regs_lock, flags);
	pkg = kt_pkg_lookup(cpu);
	if (pkg) {
		val = pkg->status;
		*prev = pkg->seen;
		pkg->seen = val & KT_STATUS_MASK;
	} else {
		*prev = val;
	}
	raw_spin_unlock_irqrestore(&kt_regs_lock, flags);
	return val;
}

/**
 * kt_regs_read() - rdmsr of a simulated register
 * @cpu: CPU whose view is read (the package register of its package)
 * @reg: register
 *
 * Return: the current register image.
 */
u64 kt_regs_read(unsigned int cpu, enum kt_reg reg)
{
	unsigned long flags;
	u64 val = 0;
	u64 *img;

	raw_spin_lock_irqsave(&kt_regs_lock, flags);
	img = kt_reg_img(cpu, reg);
	if (img)
		val = *img;
	else if (reg == KT_REG_PKG_THERM_STATUS)
		val = KT_PKG_RESET;	/* no package */
	raw_spin_unlock_irqrestore(&kt_regs_lock, flags);
	return val;
}

static u64 kt_reg_mask(enum kt_reg reg)
{
	switch (reg) {
	case KT_REG_THERM_STATUS:
		return KT_CORE_MASK;
	case KT_REG_PKG_THERM_STATUS:
		return KT_PKG_MASK;
	default:
		return 0;
	}
}

/**
 * kt_regs_hw_check() - validate a new hardware state
 * @reg: KT_REG_THERM_STATUS or KT_REG_PKG_THERM_STATUS
 * @val: new state: status bits, log bits to latch, readout, valid
 *
 * Return: 0 if @val may be given to kt_regs_hw_set(), -EINVAL if @reg has
 * no hardware state to inject or @val sets reserved bits.
 */
int kt_regs_hw_check(enum kt_reg reg, u64 val)
{
	u64 mask = kt_reg_mask(reg);

	if (!mask || (val & ~mask))
		return -EINVAL;
	return 0;
}

/*
 * Hardware state change: status, readout and valid bits take the new
 * values; a log bit is set when its status bit changes, or when the new
 * state asks for it (a pulse the hardware latched); no log bit is cleared.
 */
static u64 kt_hw_next(u64 old, u64 val, u64 mask)
{
	u64 changed = (old ^ val) & KT_STATUS_MASK;

	return (val & mask & ~KT_LOG_MASK) | (old & KT_LOG_MASK) |
	       (val & KT_LOG_MASK) | (changed << 1);
}

/**
 * kt_regs_hw_set() - the simulated hardware changes state
 * @cpu: CPU whose core register (or whose package's register) changes
 * @reg: KT_REG_THERM_STATUS or KT_REG_PKG_THERM_STATUS
 * @val: new state, see kt_regs_hw_check()
 *
 * Callable from any context.  Does not raise the interrupt.
 *
 * Return: 0, or -EINVAL (nothing changed) for an invalid @reg or @val, or
 * for the package register of a CPU with no package (see kt_pkg_lookup()).
 */
int kt_regs_hw_set(unsigned int cpu, enum kt_reg reg, u64 val)
{
	u64 mask = kt_reg_mask(reg);
	unsigned long flags;
	u64 *img;
	int ret;

	ret = kt_regs_hw_check(reg, val);
	if (ret)
		return ret;

	raw_spin_lock_irqsave(&kt_regs_lock, flags);
	img = kt_reg_img(cpu, reg);
	if (img)
		*img = kt_hw_next(*img, val, mask);
	raw_spin_unlock_irqrestore(&kt_regs_lock, flags);
	return img ? 0 : -EINVAL;
}

/**
 * kt_regs_sw_write() - wrmsr of a simulated register
 * @cpu: CPU whose view is written
 * @reg: register
 * @val: value written
 *
 * Log bits are R/WC0: a 0 clears the log bit, a 1 leaves it unchanged.
 * Status bits are read-only: @val must carry them unchanged.  Readout and
 * valid bits are read-only and ignored.  IA32_TEMPERATURE_TARGET is
 * read-only.
 *
 * Return: 0, or -EINVAL (nothing changed) if @val sets reserved bits,
 * differs from the image in a status bit, or @reg is read-only.
 */
int kt_regs_sw_write(unsigned int cpu, enum kt_reg reg, u64 val)
{
	unsigned long flags;
	int ret = -EINVAL;
	u64 *img;

	if (kt_regs_hw_check(reg, val))
		return -EINVAL;

	raw_spin_lock_irqsave(&kt_regs_lock, flags);
	img = kt_reg_img(cpu, reg);
	if (img && !((*img ^ val) & KT_STATUS_MASK)) {
		*img &= ~(KT_LOG_MASK & ~val);
		ret = 0;
	}
	raw_spin_unlock_irqrestore(&kt_regs_lock, flags);
	return ret;
}

/**
 * kt_regs_init() - reset the register file
 *
 * Every CPU gets the core reset image and TjMax = kt_tjmax; every package
 * gets the package reset image.
 *
 * Return: 0 or -ENOMEM.
 */
int kt_regs_init(void)
{
	unsigned int cpu, i;

	kt_nr_pkgs = topology_max_packages();
	kt_pkgs = kcalloc(kt_nr_pkgs, sizeof(*kt_pkgs), GFP_KERNEL);
	if (!kt_pkgs)
		return -ENOMEM;
	for (i = 0; i < kt_nr_pkgs; i++)
		kt_pkgs[i].status = KT_PKG_RESET;
	for_each_possible_cpu(cpu) {
		per_cpu(kt_therm_status, cpu) = KT_CORE_RESET;
		per_cpu(kt_temperature_target, cpu) =
			(u64)kt_tjmax << KT_TJMAX_SHIFT;
	}
	return 0;
}

/**
 * kt_regs_exit() - free the register file; nothing may use it any more
 *
 * Return: nothing.
 */
void kt_regs_exit(void)
{
	kfree(kt_pkgs);
	kt_pkgs = NULL;
	kt_nr_pkgs = 0;
}
