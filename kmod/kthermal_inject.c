// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: raise the simulated thermal interrupt on a chosen CPU
 *
 * The handler must run in hard IRQ on the target CPU, never in the
 * injecting task:
 *
 *   writer: smp_call_function_single(cpu, kt_kick, ..., wait = 1)
 *   kt_kick, on cpu with IRQs off (from the IPI, or inline if cpu is the
 *   writer's own CPU): apply the new state to the register file, then
 *   irq_work_queue() of cpu's IRQ_WORK_INIT_HARD irq_work
 *   kt_irq_work_fn, in hard IRQ on cpu (the irq_work self-IPI, raised when
 *   kt_kick re-enables interrupts): kt_thermal_interrupt()
 *
 * A package register is shared by the package's cores, and so is its
 * interrupt (Intel SDM vol. 3B, "Package Level Thermal Management"): the
 * new package state is applied once, then the interrupt is raised on
 * every online CPU of the package in ascending order, each handled (and
 * its messages out) before the next is raised, so that which CPU reports
 * the package's change does not depend on timing.
 *
 * Fence: the writer returns only after the handler has run and every
 * netlink message it caused (kmessages from the handler, uevents from the
 * ordered workqueue) has been broadcast.  The handler's completion,
 * kt_inject_done() with the injection's fence number, runs from the
 * workqueue after the interrupt's last uevent; the writer waits, bounded,
 * for the "done" fence number to reach its own.  Monotonic numbers rather
 * than one reused completion: a late signal from an injection that timed
 * out can never satisfy a later one.  flush_workqueue() alone is not a
 * fence: the irq_work on a remote CPU may not have queued anything yet.
 *
 * Injections are serialised by a mutex: a pending irq_work or work item
 * cannot be queued twice, so unserialised concurrent injections would be
 * merged and a writer could wait for nothing.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/cpu.h>
#include <linux/cpumask.h>
#include <linux/errno.h>
#include <linux/irq_work.h>
#include <linux/jiffies.h>
#include <linux/mutex.h>
#include <linux/percpu.h>
#include <linux/printk.h>
#include <linux/smp.h>
#include <linux/topology.h>
#include <linux/wait.h>

#include "kthermal.h"

#define KT_FENCE_TIMEOUT_S	10

/*
 * Initialised by kt_inject_init(), not statically: the module loader does
 * not apply relocations to a module's per-CPU section, so a function
 * pointer in a per-CPU initialiser would be NULL.
 */
static DEFINE_PER_CPU(struct irq_work, kt_irq_work);
static DEFINE_PER_CPU(u64, kt_irq_fence);

static DEFINE_MUTEX(kt_inject_lock);
static u64 kt_inject_seq;		/* under kt_inject_lock */
static atomic64_t kt_fence_done;	/* highest fence signalled */
static DECLARE_WAIT_QUEUE_HEAD(kt_fence_wq);

static atomic64_t kt_stat_injections;
static atomic64_t kt_stat_timeouts;

/**
 * struct kt_kick - one interrupt, on the writer's stack
 * @reg: register that changes
 * @val: its new hardware state
 * @apply: whether the target applies @val (a package's state is applied
 *	   once, before its CPUs are interrupted)
 * @fence: fence number of the interrupt
 * @ret: result of applying @val on the target CPU
 */
struct kt_kick {
	enum kt_reg reg;
	u64 val;
	bool apply;
	u64 fence;
	int ret;
};

/*
 * Completion of kt_thermal_interrupt(): every message of injection @fence
 * has been broadcast.  Usually from the workqueue, but hard IRQ if the
 * handler ran out of memory, hence no sleeping lock.
 */
static void kt_inject_done(unsigned int cpu, u64 fence)
{
	s64 old = atomic64_read(&kt_fence_done);

	do {
		if (old >= (s64)fence)
			break;
	} while (!atomic64_try_cmpxchg(&kt_fence_done, &old, fence));
	wake_up_all(&kt_fence_wq);
}

static void kt_irq_work_fn(struct irq_work *work)
{
	u64 fence = __this_cpu_read(kt_irq_fence);

	__this_cpu_write(kt_irq_fence, 0);
	kt_thermal_interrupt(kt_inject_done, fence, 0);
}

/* On the target CPU, IRQs off: the hardware changes, then interrupts. */
static void kt_kick(void *info)
{
	struct kt_kick *k = info;

	k->ret = k->apply ? kt_regs_hw_set(smp_processor_id(), k->reg, k->val) : 0;
	if (k->ret)
		return;
	__this_cpu_write(kt_irq_fence, k->fence);
	irq_work_queue(this_cpu_ptr(&kt_irq_work));
}

static bool kt_fence_passed(u64 fence)
{
	return atomic64_read(&kt_fence_done) >= (s64)fence;
}

/*
 * Interrupt @cpu (online, hotplug lock held) and wait, bounded, until its
 * handler has run and every message it caused is out.  Under
 * kt_inject_lock.
 */
static int kt_interrupt(unsigned int cpu, struct kt_kick *k)
{
	int ret;

	k->fence = ++kt_inject_seq;
	ret = smp_call_function_single(cpu, kt_kick, k, 1);
	if (!ret)
		ret = k->ret;
	if (ret)
		return -EINVAL;
	pr_debug("injection %llu: register %d of CPU%u is %#llx, interrupt raised\n",
		 k->fence, k->reg, cpu, k->val);

	if (!wait_event_timeout(kt_fence_wq, kt_fence_passed(k->fence),
				KT_FENCE_TIMEOUT_S * HZ)) {
		atomic64_inc(&kt_stat_timeouts);
		pr_err("injection %llu on CPU%u: handler and its messages not done after %d s\n",
		       k->fence, cpu, KT_FENCE_TIMEOUT_S);
		return -ETIMEDOUT;
	}
	return 0;
}

/**
 * kt_inject() - give a CPU or its package a new state, interrupt the CPU,
 * or every online CPU of the package
 * @cpu: target CPU, must be online
 * @reg: KT_REG_THERM_STATUS or KT_REG_PKG_THERM_STATUS
 * @val: new hardware state, see kt_regs_hw_check()
 *
 * Sleeps.  Returns after the handler has run in hard IRQ on @cpu (on each
 * online CPU of @cpu's package, in ascending order, for the package
 * register) and all the kmessages and uevents it caused have been
 * broadcast, or after KT_FENCE_TIMEOUT_S seconds for one of them.
 *
 * Return: 0, -EINVAL for an invalid @cpu, @reg or @val (nothing changed),
 * -EINTR if killed while waiting for another injection, -ETIMEDOUT.
 */
int kt_inject(unsigned int cpu, enum kt_reg reg, u64 val)
{
	struct kt_kick k = { .reg = reg, .val = val, .apply = true };
	unsigned int sibling;
	int ret;

	ret = kt_regs_hw_check(reg, val);
	if (ret)
		return ret;

	ret = mutex_lock_killable(&kt_inject_lock);
	if (ret)
		return ret;

	/*
	 * The target stays online until the handler has run there in hard
	 * IRQ (a pending irq_work would otherwise be run by the dying CPU
	 * outside hard IRQ).  Nothing the handler or the uevent work does
	 * takes the hotplug lock.
	 */
	cpus_read_lock();
	if (cpu >= nr_cpu_ids || !cpu_online(cpu)) {
		ret = -EINVAL;
		goto out;
	}
	if (reg != KT_REG_PKG_THERM_STATUS) {
		ret = kt_interrupt(cpu, &k);
		if (ret != -EINVAL)
			atomic64_inc(&kt_stat_injections);
		goto out;
	}

	/* Once for the package, then its online CPUs (the sibling map's). */
	ret = kt_regs_hw_set(cpu, reg, val);
	if (ret)
		goto out;
	atomic64_inc(&kt_stat_injections);
	k.apply = false;
	for_each_cpu(sibling, topology_core_cpumask(cpu)) {
		ret = kt_interrupt(sibling, &k);
		if (ret)
			break;
	}
out:
	cpus_read_unlock();
	mutex_unlock(&kt_inject_lock);
	return ret;
}

/**
 * kt_injections() - number of injections that raised an interrupt
 *
 * Return: the count.
 */
u64 kt_injections(void)
{
	return atomic64_read(&kt_stat_injections);
}

/**
 * kt_fence_timeouts() - number of injections whose fence timed out
 *
 * Return: the count.
 */
u64 kt_fence_timeouts(void)
{
	return atomic64_read(&kt_stat_timeouts);
}

/**
 * kt_inject_init() - set up the per-CPU irq_work of the injection path
 *
 * Return: nothing.
 */
void kt_inject_init(void)
{
	struct irq_work *w;
	unsigned int cpu;

	for_each_possible_cpu(cpu) {
		w = per_cpu_ptr(&kt_irq_work, cpu);
		*w = (struct irq_work)IRQ_WORK_INIT_HARD(kt_irq_work_fn);
	}
}

/**
 * kt_inject_exit() - wait for every raised interrupt to have been handled
 *
 * No injection may start any more (debugfs removed).
 *
 * Return: nothing.
 */
void kt_inject_exit(void)
{
	unsigned int cpu;

	for_each_possible_cpu(cpu)
		irq_work_sync(per_cpu_ptr(&kt_irq_work, cpu));
}
