// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: the consumer of the sensor device's rings
 *
 * The host publishes register images in one ring per CPU
 * (include/kevent_sensor.h is the contract) and raises MSI-X vector i,
 * whose handler (kt_ring_irq(), installed by kthermal_pci.c) does what the
 * irq_work of kthermal_inject.c does:
 *
 *   hard IRQ of vector i, pinned to CPU i: for each ring entry, give its
 *   image to the register file (kt_regs_hw_set()), run
 *   kt_thermal_interrupt(), store tail + 1
 *   ordered workqueue, once the entry's messages are out: kt_ring_ack()
 *   stores the entry's seq in acked_seq and rings the host's doorbell
 *
 * A timed entry (repeat > 1) fires its image repeat times on the guest's
 * clock: firing 0 when it is taken, the others from the vector's hrtimer,
 * pinned to CPU i and run in hard IRQ there, so that every firing is the
 * same hard-IRQ call on the same CPU as a plain entry, and its time owes
 * nothing to when the host's writes arrive.  The ring waits meanwhile: the
 * device handler does nothing while a timed entry is firing, and the timer
 * takes the following entries once the last firing is out.  Only the last
 * firing carries the ack.  The timer also goes on with a run that ran out
 * of budget, so that no run stays in hard IRQ for more than
 * KT_RING_BUDGET interrupts.
 *
 * Completions run in the order the entries were handled, so one number per
 * ring, acked_seq, says "every message of every entry up to this one has
 * been broadcast".  A refused entry is completed the same way, in order,
 * and its seq and errno are published for the host; acked_seq never moves
 * back, so an entry refused for its seq acknowledges nothing new.
 *
 * Bare (debugfs device/bare): the floor the host measures the full path
 * against.  The handler takes each entry and acknowledges it at once, from
 * hard IRQ: the same vector, ring and ack words, with neither the register
 * file, nor kt_thermal_interrupt(), nor the workqueue.  The checks that
 * refuse an entry stay.  Only an ack that would overtake one still queued
 * (entries taken before the switch) goes through the workqueue instead.
 *
 * Vector i must run on CPU i: an entry handled on another CPU is refused
 * with -EXDEV.
 *
 * One set of rings at most: kt_done_fn has no device argument, so the
 * completions find the rings through kt_ring_bound.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bug.h>
#include <linux/device.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/hrtimer.h>
#include <linux/io.h>
#include <linux/lockdep.h>
#include <linux/minmax.h>
#include <linux/printk.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/time64.h>
#include <linux/timekeeping.h>

#include "kevent_sensor.h"
#include "kthermal.h"

/* Free-running u32 indices wrap onto the same slot only then. */
static_assert((KS_RING_ENTRIES & (KS_RING_ENTRIES - 1)) == 0);
/* ks_entry.reg goes to the register file unchanged. */
static_assert(KS_REG_THERM_STATUS == KT_REG_THERM_STATUS);
static_assert(KS_REG_PKG_THERM_STATUS == KT_REG_PKG_THERM_STATUS);

#define KT_RING_DOORBELL_ACK	((KS_HOST_PEER << 16) | KS_ACK_VECTOR)

/*
 * Interrupts (firings) plus refused and bare entries in one run, the
 * device handler's or the timer's: as many as a full ring of plain
 * entries.
 */
#define KT_RING_BUDGET		KS_RING_ENTRIES

/*
 * A run that used up its budget with work left is continued by the timer
 * this much later.  Continuing at once would not end the hard IRQ at all:
 * hrtimer_interrupt() runs a timer whose expiry has passed again in the
 * same interrupt.
 */
#define KT_RING_YIELD_NS	(50 * NSEC_PER_USEC)

/**
 * struct kt_burst - the entry a vector is firing
 * @t0: guest time (CLOCK_MONOTONIC) of firing 0, as its rate-limit decision
 *	saw it; set once firing 0 is made
 * @seq: the entry's seq, its ack and (repeat > 1) its burst id
 * @value: the image each firing gives the register file
 * @reg: the register
 * @repeat: firings in all
 * @fired: firings done; the entry is finished when it reaches @repeat
 * @interval_ns: guest time between two firings
 */
struct kt_burst {
	ktime_t t0;
	u64 seq;
	u64 value;
	enum kt_reg reg;
	u32 repeat;
	u32 fired;
	u32 interval_ns;
};

/**
 * struct kt_vec - one MSI-X vector: the thermal interrupt of one CPU
 * @ring: the CPU's ring and ack words in BAR2
 * @cpu: the CPU the vector is pinned to, also the ring's index
 * @lock: the consumer side: @tail, @last_seq, @burst, @stopped, @stat and
 *	  the arming of @timer; raw, taken in hard IRQ by the device handler
 *	  and the timer
 * @tail: entries consumed
 * @last_seq: highest seq accepted on the ring
 * @burst: the entry being fired
 * @stopped: remove has begun: nothing is consumed or armed any more
 * @timer: fires @burst's later firings and continues a run out of budget;
 *	   pinned to @cpu, hard IRQ
 * @ack_seq: highest seq acknowledged (under the rings' ack_lock)
 * @ack_held: @ack_seq is held back by hold_acks (under ack_lock)
 * @queued: completions of this ring in the workqueue, not yet run
 * @stat: counters (read locklessly by the stats file)
 * @rings: the set the vector belongs to
 */
struct kt_vec {
	struct ks_cpu *ring;
	unsigned int cpu;
	raw_spinlock_t lock;
	u32 tail;
	u64 last_seq;
	struct kt_burst burst;
	bool stopped;
	struct hrtimer timer;
	u64 ack_seq;
	bool ack_held;
	atomic_t queued;
	u64 stat[KT_VS_NR];
	struct kt_rings *rings;
};

/**
 * struct kt_rings - the rings of the bound sensor device
 * @doorbell: the host's doorbell in BAR0
 * @ack_lock: serialises publication of acks and the hold_acks switch; raw
 *	      because an ack may come from hard IRQ
 * @hold_acks: acks are recorded but not published (under @ack_lock)
 * @acks: acknowledgements published, one doorbell each (under @ack_lock)
 * @acks_held: acknowledgements recorded while held (under @ack_lock)
 * @bare: entries are acknowledged at once, unfired; read locklessly by
 *	  the handlers
 * @nr_vecs: vectors, CPUs 0 .. @nr_vecs - 1
 * @vecs: per-vector state
 */
struct kt_rings {
	void __iomem *doorbell;
	raw_spinlock_t ack_lock;
	bool hold_acks;
	u64 acks;
	u64 acks_held;
	bool bare;
	unsigned int nr_vecs;
	struct kt_vec vecs[KS_MAX_CPUS];
};

/* Set while rings are served: kt_ring_ack() gets no device argument. */
static struct kt_rings *kt_ring_bound;

/* WRITE_ONCE: the stats file reads the counters without v->lock. */
static void kt_vec_inc(struct kt_vec *v, enum kt_vec_stat idx)
{
	lockdep_assert_held(&v->lock);
	WRITE_ONCE(v->stat[idx], v->stat[idx] + 1);
}

static void kt_ring_publish(struct kt_rings *r, struct kt_vec *v)
{
	lockdep_assert_held(&r->ack_lock);
	/*
	 * An acknowledged entry whose messages were dropped must not look
	 * delivered: the count goes out with the ack.
	 */
	WRITE_ONCE(v->ring->events_dropped, kt_messages_lost(v->cpu));
	/* Pairs with the host's acquire: the words above are visible with it. */
	smp_store_release(&v->ring->acked_seq, v->ack_seq);
	writel(KT_RING_DOORBELL_ACK, r->doorbell);
	r->acks++;
}

/* Every message of @v's entries up to @seq is out: tell the host. */
static void kt_ring_ack_vec(struct kt_rings *r, struct kt_vec *v, u64 seq)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&r->ack_lock, flags);
	if (seq > v->ack_seq)
		v->ack_seq = seq;
	if (r->hold_acks) {
		v->ack_held = true;
		r->acks_held++;
	} else {
		kt_ring_publish(r, v);
	}
	raw_spin_unlock_irqrestore(&r->ack_lock, flags);
}

/*
 * Completion of ring @cpu's entry @seq through the workqueue: from the
 * ordered workqueue, or from hard IRQ if no marker work item could be
 * allocated.
 */
static void kt_ring_ack(unsigned int cpu, u64 seq)
{
	struct kt_rings *r = READ_ONCE(kt_ring_bound);
	struct kt_vec *v;

	if (WARN_ON_ONCE(!r || cpu >= r->nr_vecs))
		return;
	v = &r->vecs[cpu];
	/* Its messages are out: a bare ack behind it may go at once now. */
	atomic_dec(&v->queued);
	kt_ring_ack_vec(r, v, seq);
}

/*
 * Acknowledge entry @seq once every message queued before it is out:
 * through the workqueue, or at once if @bare and nothing of the ring is
 * queued, as the acks must stay in ring order.
 */
static void kt_ring_complete(struct kt_vec *v, u64 seq, bool bare)
{
	lockdep_assert_held(&v->lock);
	if (bare && !atomic_read(&v->queued)) {
		kt_ring_ack_vec(v->rings, v, seq);
		return;
	}
	atomic_inc(&v->queued);
	kt_thermal_defer_done(kt_ring_ack, v->cpu, seq);
}

static void kt_ring_reject(struct kt_vec *v, u64 seq, int err,
			   enum kt_vec_stat why, bool bare)
{
	struct ks_cpu *ring = v->ring;

	lockdep_assert_held(&v->lock);
	pr_debug("CPU%u: ring entry %llu refused: %pe\n", v->cpu, seq,
		 ERR_PTR(err));
	kt_vec_inc(v, why);
	kt_vec_inc(v, KT_VS_REJECTED);
	WRITE_ONCE(ring->rejected_seq, seq);
	WRITE_ONCE(ring->rejected_errno, -err);
	/* The count publishes the pair above for a host that polls it. */
	smp_store_release(&ring->rejected, v->stat[KT_VS_REJECTED]);
	kt_ring_complete(v, seq, bare);
}

/*
 * Everything from here down to kt_ring_irq() and kt_ring_timer() runs
 * under v->lock: the device handler and the timer of a vector both
 * consume its ring.
 */
static bool kt_ring_firing(const struct kt_vec *v)
{
	lockdep_assert_held(&v->lock);
	return v->burst.fired < v->burst.repeat;
}

static ktime_t kt_ring_due(const struct kt_burst *b)
{
	return ktime_add_ns(b->t0, (u64)b->fired * b->interval_ns);
}

/*
 * Fire what is due of the entry, in order, each firing as a plain entry
 * would: overdue firings (a late timer) all go now, none is skipped.
 */
static void kt_ring_fire(struct kt_vec *v, unsigned int *budget)
{
	struct kt_burst *b = &v->burst;
	bool last;
	u64 now;

	lockdep_assert_held(&v->lock);
	while (kt_ring_firing(v) && *budget) {
		if (b->fired && ktime_before(ktime_get(), kt_ring_due(b)))
			return;
		/* Only hotplug moves the timer (unsupported): refuse the rest. */
		if (smp_processor_id() != v->cpu) {
			b->fired = b->repeat;
			kt_ring_reject(v, b->seq, -EXDEV, KT_VS_MISDELIVERED,
				       false);
			return;
		}
		/*
		 * Firing 0's image went in when the entry was checked, on
		 * the same CPU and register: later ones cannot fail.
		 */
		if (b->fired)
			WARN_ON_ONCE(kt_regs_hw_set(v->cpu, b->reg, b->value));
		b->fired++;
		(*budget)--;
		kt_vec_inc(v, KT_VS_FIRINGS);
		last = !kt_ring_firing(v);
		if (last)
			atomic_inc(&v->queued);
		now = kt_thermal_interrupt(last ? kt_ring_ack : NULL, b->seq,
					   b->repeat > 1 ? b->seq : 0);
		/*
		 * Paced from firing 0's own clock reading, not from when the
		 * entry was taken: the handler then sees firing k at least
		 * k intervals after firing 0, never a moment less.
		 */
		if (b->fired == 1)
			b->t0 = ns_to_ktime(now);
	}
}

/*
 * Check the entry at the tail; if it is good, it is v->burst from now on,
 * or, @bare, acknowledged at once.
 */
static void kt_ring_entry(struct kt_vec *v, const struct ks_entry *slot,
			  bool bare, unsigned int *budget)
{
	u64 seq = READ_ONCE(slot->seq);
	u32 cpu = READ_ONCE(slot->cpu);
	u32 reg = READ_ONCE(slot->reg);
	u64 value = READ_ONCE(slot->value);
	u32 repeat = READ_ONCE(slot->repeat);
	u32 interval_ns = READ_ONCE(slot->interval_ns);
	int ret;

	lockdep_assert_held(&v->lock);
	kt_vec_inc(v, KT_VS_ENTRIES);

	/* acked_seq must only grow, or the host would lose track. */
	if (!seq || seq <= v->last_seq) {
		kt_ring_reject(v, seq, -EINVAL, KT_VS_BAD_SEQ, bare);
		goto unfired;
	}
	v->last_seq = seq;

	/* The handler reports on the CPU it runs on, not on entry.cpu. */
	if (cpu != v->cpu || smp_processor_id() != v->cpu) {
		kt_ring_reject(v, seq, -EXDEV, KT_VS_MISDELIVERED, bare);
		goto unfired;
	}

	if (!repeat || repeat > KS_MAX_REPEAT ||
	    interval_ns > KS_MAX_INTERVAL_NS) {
		kt_ring_reject(v, seq, -EINVAL, KT_VS_BAD_ENTRY, bare);
		goto unfired;
	}

	/* Bare, the register file is left alone, so only the image is checked. */
	if (bare) {
		ret = kt_regs_hw_check(reg, value);
		if (ret) {
			kt_ring_reject(v, seq, ret, KT_VS_BAD_ENTRY, true);
			goto unfired;
		}
		kt_vec_inc(v, KT_VS_BARE);
		kt_ring_complete(v, seq, true);
		goto unfired;
	}

	/*
	 * -EINVAL: reg is neither KS_REG_THERM_STATUS nor
	 * KS_REG_PKG_THERM_STATUS (KT_REG_TEMPERATURE_TARGET has no hardware
	 * state either), or value sets bits kt_regs_hw_check() refuses, or
	 * (a kernel bug, warned of) the CPU has no package.
	 */
	ret = kt_regs_hw_set(v->cpu, reg, value);
	if (ret) {
		kt_ring_reject(v, seq, ret, KT_VS_BAD_ENTRY, false);
		goto unfired;
	}

	v->burst = (struct kt_burst) {
		.seq = seq,
		.value = value,
		.reg = reg,
		.repeat = repeat,
		.interval_ns = interval_ns,
	};
	return;

unfired:
	/* No firing counts it: it costs one of the budget here. */
	(*budget)--;
}

/*
 * Whether the ring has an entry to take; a ring whose indices cannot be
 * trusted is resynchronised and counts as empty.
 */
static bool kt_ring_pending(struct kt_vec *v)
{
	struct ks_cpu *ring = v->ring;
	/* Pairs with the host's release: entries up to head are written. */
	u32 head = smp_load_acquire(&ring->head);

	lockdep_assert_held(&v->lock);
	if (head - v->tail > KS_RING_ENTRIES) {
		kt_vec_inc(v, KT_VS_RING_CORRUPT);
		v->tail = head;
		/* The host may reuse the slots once it sees tail. */
		smp_store_release(&ring->tail, head);
		return false;
	}
	return head != v->tail;
}

/*
 * One run, in hard IRQ: fire what is due, then take entries while there
 * is budget, firing each at once as far as it is due.  Returns whether
 * the timer must go on at *@next: with the entry's next firing, or with
 * a run that ran out of budget, after a short break.
 */
static bool kt_ring_run(struct kt_vec *v, ktime_t *next)
{
	unsigned int budget = KT_RING_BUDGET;
	bool more;

	lockdep_assert_held(&v->lock);
	for (;;) {
		kt_ring_fire(v, &budget);
		more = kt_ring_firing(v) || kt_ring_pending(v);
		if (!more || !budget || kt_ring_firing(v))
			break;
		kt_ring_entry(v, &v->ring->ring[v->tail % KS_RING_ENTRIES],
			      READ_ONCE(v->rings->bare), &budget);
		v->tail++;
		/* The slot was copied: the host may overwrite it. */
		smp_store_release(&v->ring->tail, v->tail);
	}
	if (!more)
		return false;
	*next = kt_ring_firing(v) ? kt_ring_due(&v->burst) : 0;
	if (!budget)
		*next = max(*next, ktime_add_ns(ktime_get(), KT_RING_YIELD_NS));
	return true;
}

/**
 * kt_ring_irq() - the handler of a vector
 * @irq: its Linux IRQ number
 * @data: the vector, kt_ring_vec()
 *
 * The budget bounds one run against a host that keeps the ring full.
 * Stopping with entries left loses nothing: the timer goes on with them,
 * and a ring that arrives while this handler runs is latched by the local
 * APIC and runs it again.
 *
 * Return: IRQ_HANDLED.
 */
irqreturn_t kt_ring_irq(int irq, void *data)
{
	struct kt_vec *v = data;
	ktime_t next;

	raw_spin_lock(&v->lock);
	kt_vec_inc(v, KT_VS_INTERRUPTS);
	WRITE_ONCE(v->ring->interrupts, v->stat[KT_VS_INTERRUPTS]);
	/*
	 * An entry still firing holds the ring; its timer goes on with it.
	 * Off its CPU (hotplug) the run only refuses entries, and a timer
	 * armed there would stay there.
	 */
	if (!v->stopped && !kt_ring_firing(v) && kt_ring_run(v, &next) &&
	    smp_processor_id() == v->cpu)
		hrtimer_start(&v->timer, next, HRTIMER_MODE_ABS_PINNED_HARD);
	raw_spin_unlock(&v->lock);
	return IRQ_HANDLED;
}

static enum hrtimer_restart kt_ring_timer(struct hrtimer *timer)
{
	struct kt_vec *v = container_of(timer, struct kt_vec, timer);
	enum hrtimer_restart restart = HRTIMER_NORESTART;
	ktime_t next;

	raw_spin_lock(&v->lock);
	if (!v->stopped && kt_ring_run(v, &next)) {
		hrtimer_set_expires(timer, next);
		restart = HRTIMER_RESTART;
	}
	raw_spin_unlock(&v->lock);
	return restart;
}

/* Forget what an earlier driver instance left; returns the ring's tail. */
static u32 kt_ring_reset(struct ks_cpu *ring, unsigned int cpu)
{
	u32 head = READ_ONCE(ring->head);

	WRITE_ONCE(ring->rejected_errno, 0);
	WRITE_ONCE(ring->acked_seq, 0);
	WRITE_ONCE(ring->interrupts, 0);
	WRITE_ONCE(ring->rejected, 0);
	WRITE_ONCE(ring->rejected_seq, 0);
	WRITE_ONCE(ring->events_dropped, kt_messages_lost(cpu));
	memset(ring->guest_reserved, 0, sizeof(ring->guest_reserved));
	WRITE_ONCE(ring->tail, head);
	return head;
}

/**
 * kt_ring_create() - take over the rings of a sensor device
 * @dev: the device; the rings' state is its devres
 * @doorbell: the host's doorbell
 * @region: BAR2
 * @n: CPUs served, 0 .. @n - 1, at most KS_MAX_CPUS
 *
 * Every ring's guest words are reset and its tail set to the head it has,
 * so entries published before are skipped.  No vector runs yet: the caller
 * installs kt_ring_irq() on each afterwards.
 *
 * Return: the rings, or ERR_PTR(-ENOMEM).
 */
struct kt_rings *kt_ring_create(struct device *dev, void __iomem *doorbell,
				struct ks_region *region, unsigned int n)
{
	struct kt_rings *r;
	unsigned int i;

	r = devm_kzalloc(dev, sizeof(*r), GFP_KERNEL);
	if (!r)
		return ERR_PTR(-ENOMEM);
	r->doorbell = doorbell;
	raw_spin_lock_init(&r->ack_lock);
	for (i = 0; i < KS_MAX_CPUS; i++) {
		struct kt_vec *v = &r->vecs[i];

		v->rings = r;
		v->ring = &region->cpus[i];
		v->cpu = i;
		v->tail = kt_ring_reset(v->ring, i);
		raw_spin_lock_init(&v->lock);
		hrtimer_init(&v->timer, CLOCK_MONOTONIC,
			     HRTIMER_MODE_ABS_PINNED_HARD);
		v->timer.function = kt_ring_timer;
	}
	r->nr_vecs = n;
	WRITE_ONCE(kt_ring_bound, r);
	return r;
}

/**
 * kt_ring_vec() - a vector, the argument of its handler kt_ring_irq()
 * @r: the rings
 * @cpu: the vector's CPU, below kt_ring_nr()
 *
 * Return: the vector.
 */
struct kt_vec *kt_ring_vec(struct kt_rings *r, unsigned int cpu)
{
	return &r->vecs[cpu];
}

/**
 * kt_ring_stop() - no firing and no entry taken from now on
 * @r: the rings
 *
 * Stopped first, so that neither a handler nor the timer itself arms the
 * timer again once it is cancelled: no firing after this, and an entry
 * still firing is never acknowledged.  Sleeps (it waits for a running
 * timer).  Acks already queued still run: see kt_ring_destroy().
 *
 * Return: nothing.
 */
void kt_ring_stop(struct kt_rings *r)
{
	struct kt_vec *v;
	unsigned int i;

	for (i = 0; i < r->nr_vecs; i++) {
		v = &r->vecs[i];
		raw_spin_lock_irq(&v->lock);
		v->stopped = true;
		raw_spin_unlock_irq(&v->lock);
		hrtimer_cancel(&v->timer);
	}
}

/**
 * kt_ring_destroy() - wait for the acks still queued, then let go
 * @r: the rings, stopped and with no handler installed
 *
 * Pending acks still write BAR0 and BAR2: after this none does, and the
 * caller may unmap them.
 *
 * Return: nothing.
 */
void kt_ring_destroy(struct kt_rings *r)
{
	kt_irq_flush();
	WRITE_ONCE(kt_ring_bound, NULL);
}

/**
 * kt_ring_nr() - vectors served
 * @r: the rings
 *
 * Return: their number; vector i is CPU i's.
 */
unsigned int kt_ring_nr(const struct kt_rings *r)
{
	return r->nr_vecs;
}

/**
 * kt_ring_stat() - a counter of one vector
 * @r: the rings
 * @cpu: the vector's CPU, below kt_ring_nr()
 * @idx: the counter
 *
 * Return: its value; it may move on while it is read.
 */
u64 kt_ring_stat(const struct kt_rings *r, unsigned int cpu,
		 enum kt_vec_stat idx)
{
	return READ_ONCE(r->vecs[cpu].stat[idx]);
}

/**
 * kt_ring_acks() - acknowledgements so far
 * @r: the rings
 * @acks: set to the acks published (doorbell rings)
 * @acks_held: set to the acks recorded while held
 *
 * Return: nothing.
 */
void kt_ring_acks(struct kt_rings *r, u64 *acks, u64 *acks_held)
{
	unsigned long flags;

	raw_spin_lock_irqsave(&r->ack_lock, flags);
	*acks = r->acks;
	*acks_held = r->acks_held;
	raw_spin_unlock_irqrestore(&r->ack_lock, flags);
}

/**
 * kt_ring_hold_acks() - whether acks are held back
 * @r: the rings
 *
 * Return: the hold_acks switch.
 */
bool kt_ring_hold_acks(const struct kt_rings *r)
{
	return READ_ONCE(r->hold_acks);
}

/**
 * kt_ring_set_hold_acks() - hold acks back, or publish the held ones
 * @r: the rings
 * @hold: true: acks are recorded, but neither acked_seq is written nor the
 *	  doorbell rung; false: every ring with held acks gets its latest
 *	  acked_seq and a doorbell ring
 *
 * Return: nothing.
 */
void kt_ring_set_hold_acks(struct kt_rings *r, bool hold)
{
	unsigned long flags;
	unsigned int i;

	raw_spin_lock_irqsave(&r->ack_lock, flags);
	/* kt_ring_hold_acks() reads it without the lock. */
	WRITE_ONCE(r->hold_acks, hold);
	for (i = 0; i < r->nr_vecs; i++) {
		if (!hold && r->vecs[i].ack_held) {
			r->vecs[i].ack_held = false;
			kt_ring_publish(r, &r->vecs[i]);
		}
	}
	raw_spin_unlock_irqrestore(&r->ack_lock, flags);
}

/**
 * kt_ring_bare() - whether entries are acknowledged bare
 * @r: the rings
 *
 * Return: the bare switch.
 */
bool kt_ring_bare(const struct kt_rings *r)
{
	return READ_ONCE(r->bare);
}

/**
 * kt_ring_set_bare() - acknowledge entries at once, or fire them again
 * @r: the rings
 * @bare: true: from the next entry taken on, each good entry is
 *	  acknowledged at once by the handler, with no firing and no
 *	  message; false: entries are fired and acknowledged as usual
 *
 * Return: nothing.
 */
void kt_ring_set_bare(struct kt_rings *r, bool bare)
{
	/* The handlers read it without a lock, per entry. */
	WRITE_ONCE(r->bare, bare);
}
