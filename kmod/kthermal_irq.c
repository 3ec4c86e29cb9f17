// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: the thermal interrupt handler
 *
 * After intel_thermal_interrupt() of Linux 2.6.8
 * (arch/i386/kernel/cpu/mcheck/p4.c) with Robert Love's kernel events layer
 * hook of July 2004, run against the simulated register file.
 *
 * On each interrupt, in hard IRQ on the interrupted CPU:
 *
 *  1. rate limit first, like 2.6.8 (which ignored every interrupt within
 *     5 s of the last one handled on that CPU, before even reading the
 *     MSR): an interrupt within rate_limit_ms of the last handled one is
 *     counted in "rate_limited" and produces nothing;
 *  2. read IA32_THERM_STATUS and IA32_PACKAGE_THERM_STATUS;
 *  3. PROCHOT (bit 0), on every handled interrupt, exactly as the seed:
 *     send_kmessage(KMSG_POWER, "/org/kernel/devices/system/cpu/temperature",
 *     "high" or "normal", "Cpu: %d\n", cpu), with the seed's printk lines,
 *     ratelimited;
 *  4. core status bits 2, 4, 6, 8, 10 in ascending order, on a change since
 *     the last interrupt handled on this CPU;
 *  5. package status bits 0, 2, 4, 6, 8, 10 in ascending order, on a change
 *     since the last interrupt handled on any CPU of the package: the
 *     register is the package's, so is its interrupt (every core of the
 *     package takes it), and each change is reported once, by the first
 *     CPU of the package to handle an interrupt after it.
 *
 * Each event is sent as a kmessage right away (from hard IRQ, like the
 * seed) and as a KOBJ_CHANGE uevent, deferred to an ordered workqueue
 * because kobject_uevent_env() sleeps.  The ordered workqueue keeps the
 * global order of the uevents.  A core event is the CPU's: "Cpu: N", a
 * uevent on the CPU device.  A package event is the package's, whichever
 * CPU handled it: "Package: P", a uevent on the package's device
 * (kthermal_sysfs.c).
 *
 * The caller's completion (an injection fence, a device's ack) goes
 * through the same workqueue, behind the interrupt's last uevent or, when
 * the interrupt queued none, in a marker work item of its own.  So
 * completions run in the order the interrupts were handled, and each only
 * after everything earlier interrupts queued has been sent: a device can
 * acknowledge "everything up to this one" with a single number.
 *
 * Known flaw kept on purpose (Pavel Machek's review of 2004): with the rate
 * limit on, the "normal" that follows a "high" within rate_limit_ms is
 * swallowed, and userspace believes the CPU is still hot.
 *
 * Rate-limit edges: a decision taken close to the window's edge depends on
 * how the guest's clock ran between the two interrupts.  Under a real
 * clock, host load stretches that, so such an outcome may differ from run
 * to run; the host cannot see which ones did.  Decisions within
 * rate_limit_edge_ms of the edge are therefore recorded (kt_edge_record())
 * with their margin and the CPU's interrupt number, for debugfs
 * rate_limit_edges.
 */

#include <linux/atomic.h>
#include <linux/cpu.h>
#include <linux/device.h>
#include <linux/hardirq.h>
#include <linux/kobject.h>
#include <linux/lockdep.h>
#include <linux/printk.h>
#include <linux/ratelimit.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/time64.h>
#include <linux/timekeeping.h>
#include <linux/topology.h>
#include <linux/workqueue.h>

#include "kmessage.h"
#include "kthermal.h"

#define CREATE_TRACE_POINTS
#include "kthermal_trace.h"

#define KT_OBJ		"/org/kernel/devices/system/cpu/"
#define KT_PKG_OBJ	KT_OBJ "package/"

/* Bound on uevents queued and not yet sent. */
#define KT_UEVENT_MAX_PENDING	16384

const struct kt_event_desc kt_events[KT_EV_NR] = {
	[KT_EV_PROCHOT]		= { KT_OBJ "temperature", KT_STATUS_PROCHOT, false },
	[KT_EV_EXT_PROCHOT]	= { KT_OBJ "external_prochot", KT_STATUS_EXT_PROCHOT, false },
	[KT_EV_CRITICAL]	= { KT_OBJ "critical_temperature", KT_STATUS_CRITICAL, false },
	[KT_EV_THRESHOLD1]	= { KT_OBJ "threshold1", KT_STATUS_THRESHOLD1, false },
	[KT_EV_THRESHOLD2]	= { KT_OBJ "threshold2", KT_STATUS_THRESHOLD2, false },
	[KT_EV_POWER_LIMIT]	= { KT_OBJ "power_limit", KT_STATUS_POWER_LIMIT, false },
	[KT_EV_PKG_PROCHOT]	= { KT_PKG_OBJ "temperature", KT_STATUS_PROCHOT, true },
	[KT_EV_PKG_EXT_PROCHOT]	= { KT_PKG_OBJ "external_prochot", KT_STATUS_EXT_PROCHOT, true },
	[KT_EV_PKG_CRITICAL]	= { KT_PKG_OBJ "critical_temperature", KT_STATUS_CRITICAL, true },
	[KT_EV_PKG_THRESHOLD1]	= { KT_PKG_OBJ "threshold1", KT_STATUS_THRESHOLD1, true },
	[KT_EV_PKG_THRESHOLD2]	= { KT_PKG_OBJ "threshold2", KT_STATUS_THRESHOLD2, true },
	[KT_EV_PKG_POWER_LIMIT]	= { KT_PKG_OBJ "power_limit", KT_STATUS_POWER_LIMIT, true },
};

DEFINE_PER_CPU(struct kt_cpu_state, kt_cpu_state);

static struct workqueue_struct *kt_wq;
static atomic_t kt_uevent_pending;
static atomic64_t kt_stat_done_direct;

/* A ring: record n is in slot n % KT_EDGE_RECORDS; raw, from hard IRQ. */
static DEFINE_RAW_SPINLOCK(kt_edge_lock);
static struct kt_edge kt_edges[KT_EDGE_RECORDS];
static u64 kt_edges_made;	/* under kt_edge_lock */

/* The seed's printk lines, at most 10 per 5 s for all CPUs together. */
static DEFINE_RATELIMIT_STATE(kt_print_rs, DEFAULT_RATELIMIT_INTERVAL,
			      DEFAULT_RATELIMIT_BURST);

/**
 * struct kt_uevent_work - one deferred uevent
 * @work: item of the ordered workqueue
 * @done: completion to call once sent, NULL for none
 * @token: argument of @done
 * @count: value of the event's counter after this event
 * @cpu: CPU that handled the interrupt (its counters count a lost uevent;
 *	 a package event is a uevent of its package's device)
 * @pkg: its physical package id, for KEVENT_PACKAGE
 * @event: event kind
 * @high: signal "high" (status bit set) or "normal"
 */
struct kt_uevent_work {
	struct work_struct work;
	kt_done_fn done;
	u64 token;
	long count;
	int cpu;
	int pkg;
	enum kt_event event;
	bool high;
};

/* State of one run of the handler. */
struct kt_irq_ctx {
	struct kt_cpu_state *st;
	int cpu;
	int pkg;	/* physical, for the kmessage and KEVENT_PACKAGE */
	int nr;
	struct kt_uevent_work *works[KT_EV_NR];
};

/* Every completion goes through here, whatever context it is called in. */
static void kt_call_done(kt_done_fn done, unsigned int cpu, u64 token)
{
	trace_thermal_done(cpu, token);
	done(cpu, token);
}

static void kt_uevent_workfn(struct work_struct *work)
{
	struct kt_uevent_work *w = container_of(work, struct kt_uevent_work,
						work);
	const struct kt_event_desc *d = &kt_events[w->event];
	char object[96], signal[32], cpu[32], pkg[32], attr[96], count[48];
	char *envp[8];
	struct device *dev;
	int ret = -ENODEV;
	int n = 0;

	snprintf(object, sizeof(object), "KEVENT_OBJECT=%s", d->object);
	envp[n++] = object;
	snprintf(signal, sizeof(signal), "KEVENT_SIGNAL=%s",
		 w->high ? "high" : "normal");
	envp[n++] = signal;
	if (d->package) {
		snprintf(pkg, sizeof(pkg), "KEVENT_PACKAGE=%d", w->pkg);
		envp[n++] = pkg;
		snprintf(attr, sizeof(attr), "KEVENT_ATTR=%s",
			 kt_pkg_counter_name(w->event, w->high));
	} else {
		snprintf(cpu, sizeof(cpu), "KEVENT_CPU=%d", w->cpu);
		envp[n++] = cpu;
		snprintf(attr, sizeof(attr), "KEVENT_ATTR=%s/%s", KT_SYSFS_GROUP,
			 kt_counter_name(KT_CNT_EVENT(w->event, w->high)));
	}
	envp[n++] = attr;
	snprintf(count, sizeof(count), "KEVENT_COUNT=%ld", w->count);
	envp[n++] = count;
	envp[n] = NULL;

	dev = d->package ? kt_pkg_device(w->cpu) : get_cpu_device(w->cpu);
	if (dev)
		ret = kobject_uevent_env(&dev->kobj, KOBJ_CHANGE, envp);
	if (ret)
		atomic_long_inc(&per_cpu(kt_cpu_state, w->cpu).cnt[KT_CNT_UEVENT_FAILED]);
	trace_thermal_uevent_send(w->cpu, d->object, w->high, w->count, ret);

	if (w->done)
		kt_call_done(w->done, w->cpu, w->token);
	atomic_dec(&kt_uevent_pending);
	kfree(w);
}

/**
 * struct kt_done_work - completion of an interrupt that queued no uevent
 * @work: item of the ordered workqueue
 * @done: completion to call
 * @token: argument of @done
 * @cpu: CPU that handled the interrupt
 */
struct kt_done_work {
	struct work_struct work;
	kt_done_fn done;
	u64 token;
	unsigned int cpu;
};

static void kt_done_workfn(struct work_struct *work)
{
	struct kt_done_work *w = container_of(work, struct kt_done_work, work);

	kt_call_done(w->done, w->cpu, w->token);
	kfree(w);
}

/**
 * kt_thermal_defer_done() - complete an interrupt that was not handled
 * @done: completion, called as @done(@cpu, @token)
 * @cpu: first argument of @done
 * @token: second argument of @done
 *
 * For a device entry that is refused before kt_thermal_interrupt(): its
 * completion queues behind everything already queued, so completions stay
 * in the order of the entries.  kt_thermal_interrupt() completes an
 * interrupt that queued no uevent the same way.  Callable from any context,
 * hard IRQ included.  If no work item can be allocated, @done is called
 * at once (counted, see kt_done_direct()).
 *
 * Return: nothing.
 */
void kt_thermal_defer_done(kt_done_fn done, unsigned int cpu, u64 token)
{
	struct kt_done_work *w;

	w = kmalloc(sizeof(*w), GFP_ATOMIC);
	if (!w) {
		/*
		 * Early rather than never: a waiter would otherwise hang.
		 * The count makes the broken ordering visible.
		 */
		atomic64_inc(&kt_stat_done_direct);
		kt_call_done(done, cpu, token);
		return;
	}
	INIT_WORK(&w->work, kt_done_workfn);
	w->done = done;
	w->token = token;
	w->cpu = cpu;
	queue_work(kt_wq, &w->work);
}

static void kt_print(int cpu, bool high)
{
	if (!__ratelimit(&kt_print_rs))
		return;
	if (high) {
		pr_emerg("CPU%d: Temperature above threshold\n", cpu);
		pr_emerg("CPU%d: Running in modulated clock mode\n", cpu);
	} else {
		pr_info("CPU%d: Temperature/speed normal\n", cpu);
	}
}

/* Count, send the kmessage, prepare the uevent of one event. */
static void kt_emit(struct kt_irq_ctx *ctx, enum kt_event ev, bool high)
{
	const struct kt_event_desc *d = &kt_events[ev];
	const char *signal = high ? "high" : "normal";
	struct kt_uevent_work *w;
	long count;
	int pending;
	int ret;

	if (d->package)
		count = kt_pkg_count(ctx->cpu, ev, high);
	else
		count = atomic_long_inc_return(&ctx->st->cnt[KT_CNT_EVENT(ev, high)]);
	if (ev == KT_EV_PROCHOT)
		kt_print(ctx->cpu, high);

	if (d->package)
		ret = send_kmessage(KMSG_POWER, d->object, signal,
				    "Package: %d\n", ctx->pkg);
	else
		ret = send_kmessage(KMSG_POWER, d->object, signal,
				    "Cpu: %d\n", ctx->cpu);
	if (ret)
		atomic_long_inc(&ctx->st->cnt[KT_CNT_KMESSAGE_FAILED]);

	pending = atomic_inc_return(&kt_uevent_pending);
	if (pending > KT_UEVENT_MAX_PENDING) {
		atomic_dec(&kt_uevent_pending);
		atomic_long_inc(&ctx->st->cnt[KT_CNT_UEVENT_QUEUE_FULL]);
		trace_thermal_uevent_queue(ctx->cpu, d->object, high, count,
					   pending - 1, "dropped_queue_full");
		return;
	}
	w = kmalloc(sizeof(*w), GFP_ATOMIC);
	if (!w) {
		atomic_dec(&kt_uevent_pending);
		atomic_long_inc(&ctx->st->cnt[KT_CNT_UEVENT_ALLOC_FAILED]);
		trace_thermal_uevent_queue(ctx->cpu, d->object, high, count,
					   pending - 1, "dropped_alloc_failed");
		return;
	}
	INIT_WORK(&w->work, kt_uevent_workfn);
	w->done = NULL;
	w->token = 0;
	w->count = count;
	w->cpu = ctx->cpu;
	w->pkg = ctx->pkg;
	w->event = ev;
	w->high = high;
	ctx->works[ctx->nr++] = w;
	trace_thermal_uevent_queue(ctx->cpu, d->object, high, count, pending,
				   "queued");
}

static void kt_edge_record(int cpu, long interrupt, s64 margin_ns,
			   bool within_burst)
{
	unsigned int edge_ms = within_burst ? READ_ONCE(kt_rate_limit_burst_edge_ms) :
				READ_ONCE(kt_rate_limit_edge_ms);
	s64 edge = (s64)edge_ms * NSEC_PER_MSEC;
	struct kt_edge *e;
	unsigned long flags;

	if (margin_ns <= -edge || margin_ns >= edge)
		return;
	raw_spin_lock_irqsave(&kt_edge_lock, flags);
	e = &kt_edges[kt_edges_made++ % KT_EDGE_RECORDS];
	e->cpu = cpu;
	e->interrupt = interrupt;
	e->margin_ns = margin_ns;
	e->within_burst = within_burst;
	raw_spin_unlock_irqrestore(&kt_edge_lock, flags);
}

/**
 * kt_rate_limit_edges() - copy the rate-limit edge records
 * @copy: room for KT_EDGE_RECORDS records
 *
 * Record n is copied to @copy[n % KT_EDGE_RECORDS], all under the lock
 * the handler records with, so the caller can print them without it.
 *
 * Return: the number of records made since the module was loaded; the
 * newest KT_EDGE_RECORDS of them are in @copy.
 */
u64 kt_rate_limit_edges(struct kt_edge *copy)
{
	unsigned long flags;
	u64 made;

	raw_spin_lock_irqsave(&kt_edge_lock, flags);
	made = kt_edges_made;
	memcpy(copy, kt_edges, sizeof(kt_edges));
	raw_spin_unlock_irqrestore(&kt_edge_lock, flags);
	return made;
}

/**
 * kt_thermal_interrupt() - the thermal interrupt handler of this CPU
 * @done: called as @done(cpu, @token) from the ordered workqueue once every
 *	  kmessage and uevent of this interrupt, and of every interrupt
 *	  handled before it, has been broadcast; NULL for none
 * @token: argument of @done
 * @burst: the same nonzero value for every firing of one timed device entry
 *	   (its seq), 0 for an interrupt that is no such firing
 *
 * Must run in hard IRQ on the CPU that took the interrupt; it reads the
 * register images of that CPU and of its package.  Callers: the irq_work
 * of the debugfs injection path, or a device interrupt handler that has
 * just updated the register file with kt_regs_hw_set().
 *
 * @done runs in process context, unless no marker work item could be
 * allocated: then it is called before this function returns, possibly
 * ahead of earlier interrupts' uevents (counted, see kt_done_direct()).
 *
 * Return: the time (CLOCK_MONOTONIC, ns) the rate limit was decided at, so
 * that a caller can pace later interrupts from the time this one had.
 */
u64 kt_thermal_interrupt(kt_done_fn done, u64 token, u64 burst)
{
	struct kt_irq_ctx ctx = { .nr = 0 };
	u64 core, pkg, pkg_prev, changed, now;
	bool within_burst;
	unsigned int rl;
	long interrupt;
	s64 margin;
	int i;

	/*
	 * Interrupts are off: both callers are hard IRQ handlers, an
	 * IRQ_WORK_INIT_HARD irq_work and an IRQF_NO_THREAD device handler.
	 */
	WARN_ON_ONCE(!in_hardirq());
	lockdep_assert_irqs_disabled();

	ctx.cpu = smp_processor_id();
	ctx.st = this_cpu_ptr(&kt_cpu_state);
	interrupt = atomic_long_inc_return(&ctx.st->cnt[KT_CNT_INTERRUPTS]);
	if (trace_thermal_interrupt_enabled())
		trace_thermal_interrupt(ctx.cpu, interrupt,
					kt_regs_read(ctx.cpu, KT_REG_THERM_STATUS),
					burst);

	rl = READ_ONCE(kt_rate_limit_ms);
	now = ktime_get_ns();
	if (rl && ctx.st->handled) {
		within_burst = burst && burst == ctx.st->last_burst;
		margin = (s64)(now - ctx.st->last_handled_ns) -
			 (s64)rl * NSEC_PER_MSEC;
		trace_thermal_rate_limit(ctx.cpu, interrupt, rl, margin,
					 within_burst);
		kt_edge_record(ctx.cpu, interrupt, margin, within_burst);
		if (margin < 0) {
			atomic_long_inc(&ctx.st->cnt[KT_CNT_RATE_LIMITED]);
			/* The seed's lines have no prefix; this one has. */
			pr_debug(KBUILD_MODNAME ": CPU%d: interrupt %ld rate-limited, %lld ns inside the %u ms window\n",
				 ctx.cpu, interrupt, -margin, rl);
			goto out;
		}
	}
	ctx.st->handled = true;
	ctx.st->last_handled_ns = now;
	ctx.st->last_burst = burst;

	ctx.pkg = topology_physical_package_id(ctx.cpu);
	core = kt_regs_read(ctx.cpu, KT_REG_THERM_STATUS);

	pkg = kt_regs_pkg_sample(ctx.cpu, &pkg_prev);

	kt_emit(&ctx, KT_EV_PROCHOT, core & KT_STATUS_PROCHOT);

	changed = (core ^ ctx.st->seen_core) & KT_STATUS_MASK;
	ctx.st->seen_core = core & KT_STATUS_MASK;
	for (i = KT_EV_PROCHOT + 1; i < KT_EV_PKG_FIRST; i++)
		if (changed & kt_events[i].bit)
			kt_emit(&ctx, i, core & kt_events[i].bit);

	changed = (pkg ^ pkg_prev) & KT_STATUS_MASK;
	for (i = KT_EV_PKG_FIRST; i < KT_EV_NR; i++)
		if (changed & kt_events[i].bit)
			kt_emit(&ctx, i, pkg & kt_events[i].bit);

out:
	/* The last uevent carries the completion: the workqueue is ordered. */
	for (i = 0; i < ctx.nr; i++) {
		if (i == ctx.nr - 1) {
			ctx.works[i]->done = done;
			ctx.works[i]->token = token;
		}
		queue_work(kt_wq, &ctx.works[i]->work);
	}
	if (!ctx.nr && done)
		kt_thermal_defer_done(done, ctx.cpu, token);
	return now;
}

/**
 * kt_irq_flush() - wait for every queued uevent and completion
 *
 * Sleeps.  Everything queued before the call has run when it returns.
 *
 * Return: nothing.
 */
void kt_irq_flush(void)
{
	flush_workqueue(kt_wq);
}

/**
 * kt_done_direct() - completions called directly for want of memory
 *
 * Return: the number of completions that bypassed the workqueue.
 */
u64 kt_done_direct(void)
{
	return atomic64_read(&kt_stat_done_direct);
}

/**
 * kt_messages_lost() - messages of a CPU's interrupts that were not sent
 * @cpu: the CPU that handled the interrupts
 *
 * kmessages that could not be allocated, and uevents dropped because their
 * queue was full, could not be allocated or kobject_uevent_env() failed.
 *
 * Return: the count since the module was loaded, 0 for an impossible @cpu.
 */
long kt_messages_lost(unsigned int cpu)
{
	struct kt_cpu_state *st;

	if (cpu >= nr_cpu_ids || !cpu_possible(cpu))
		return 0;
	st = per_cpu_ptr(&kt_cpu_state, cpu);
	return atomic_long_read(&st->cnt[KT_CNT_KMESSAGE_FAILED]) +
	       atomic_long_read(&st->cnt[KT_CNT_UEVENT_ALLOC_FAILED]) +
	       atomic_long_read(&st->cnt[KT_CNT_UEVENT_QUEUE_FULL]) +
	       atomic_long_read(&st->cnt[KT_CNT_UEVENT_FAILED]);
}

/**
 * kt_uevents_pending() - uevents queued and not yet sent
 *
 * Return: the number of pending uevent work items.
 */
long kt_uevents_pending(void)
{
	return atomic_read(&kt_uevent_pending);
}

/**
 * kt_irq_init() - allocate the handler's workqueue
 *
 * Return: 0 or -ENOMEM.
 */
int kt_irq_init(void)
{
	kt_wq = alloc_ordered_workqueue("kevent_thermal", 0);
	if (!kt_wq)
		return -ENOMEM;
	return 0;
}

/**
 * kt_irq_exit() - send the pending uevents and destroy the workqueue
 *
 * The handler must not run any more (irq_work synced).
 *
 * Return: nothing.
 */
void kt_irq_exit(void)
{
	flush_workqueue(kt_wq);
	destroy_workqueue(kt_wq);
}
