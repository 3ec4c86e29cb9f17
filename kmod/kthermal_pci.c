// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: the sensor device the host emulates
 *
 * The host emulates the thermal sensor behind an ivshmem-doorbell PCI
 * device (include/kevent_sensor.h is the contract): BAR2 holds one ring of
 * register images per CPU, MSI-X vector i is CPU i's thermal interrupt.
 * The injection path of kthermal_inject.c fakes the interrupt with an
 * irq_work; here it is a real device interrupt, raised from outside the
 * guest, and its handler does what the irq_work does:
 *
 *   hard IRQ of vector i, pinned to CPU i: for each ring entry, give its
 *   image to the register file (kt_regs_hw_set()), run
 *   kt_thermal_interrupt(), store tail + 1
 *   ordered workqueue, once the entry's messages are out: kt_pci_ack()
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
 * KT_PCI_BUDGET interrupts.
 *
 * Completions run in the order the entries were handled, so one number per
 * ring, acked_seq, says "every message of every entry up to this one has
 * been broadcast".  A refused entry is completed the same way, in order,
 * and its seq and errno are published for the host; acked_seq never moves
 * back, so an entry refused for its seq acknowledges nothing new.
 *
 * Vector i must run on CPU i, so CPUs 0 .. n-1 must be online at probe and
 * stay online: an entry handled on another CPU is refused with -EXDEV.
 *
 * One device at most: the register file it drives and the completion it
 * receives (kt_done_fn has no device argument) are global.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/build_bug.h>
#include <linux/cpumask.h>
#include <linux/debugfs.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/hrtimer.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/pci.h>
#include <linux/seq_file.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/time64.h>
#include <linux/timekeeping.h>

#include "kevent_sensor.h"
#include "kthermal.h"

static_assert(sizeof(struct ks_header) == 64);
static_assert(sizeof(struct ks_entry) == KS_ENTRY_SIZE);
static_assert(offsetof(struct ks_entry, seq) == KS_ENTRY_SEQ);
static_assert(offsetof(struct ks_entry, cpu) == KS_ENTRY_CPU);
static_assert(offsetof(struct ks_entry, reg) == KS_ENTRY_REG);
static_assert(offsetof(struct ks_entry, value) == KS_ENTRY_VALUE);
static_assert(offsetof(struct ks_entry, repeat) == KS_ENTRY_REPEAT);
static_assert(offsetof(struct ks_entry, interval_ns) == KS_ENTRY_INTERVAL_NS);
static_assert(sizeof(struct ks_cpu) == KS_CPU_SIZE);
static_assert(offsetof(struct ks_header, ready) == KS_HEADER_READY);
static_assert(offsetof(struct ks_header, guest_cpus) == KS_HEADER_GUEST_CPUS);
static_assert(offsetof(struct ks_cpu, head) == KS_CPU_HEAD);
static_assert(offsetof(struct ks_cpu, tail) == KS_CPU_TAIL);
static_assert(offsetof(struct ks_cpu, rejected_errno) == KS_CPU_REJECTED_ERRNO);
static_assert(offsetof(struct ks_cpu, acked_seq) == KS_CPU_ACKED_SEQ);
static_assert(offsetof(struct ks_cpu, interrupts) == KS_CPU_INTERRUPTS);
static_assert(offsetof(struct ks_cpu, rejected) == KS_CPU_REJECTED);
static_assert(offsetof(struct ks_cpu, rejected_seq) == KS_CPU_REJECTED_SEQ);
static_assert(offsetof(struct ks_cpu, events_dropped) == KS_CPU_EVENTS_DROPPED);
static_assert(offsetof(struct ks_cpu, ring) == KS_CPU_RING);
static_assert(offsetof(struct ks_region, header) == KS_HEADER_OFFSET);
static_assert(offsetof(struct ks_region, regs) == KS_REGS_OFFSET);
static_assert(offsetof(struct ks_region, cpus) == KS_CPUS_OFFSET);
static_assert(sizeof(struct ks_region) <= KS_REGION_SIZE);
/* Free-running u32 indices wrap onto the same slot only then. */
static_assert((KS_RING_ENTRIES & (KS_RING_ENTRIES - 1)) == 0);
/* ks_entry.reg goes to the register file unchanged. */
static_assert(KS_REG_THERM_STATUS == KT_REG_THERM_STATUS);
static_assert(KS_REG_PKG_THERM_STATUS == KT_REG_PKG_THERM_STATUS);

#define KT_PCI_DOORBELL_ACK	((KS_HOST_PEER << 16) | KS_ACK_VECTOR)

/*
 * Interrupts (firings) plus refused entries in one run, the device
 * handler's or the timer's: as many as a full ring of plain entries.
 */
#define KT_PCI_BUDGET		KS_RING_ENTRIES

/*
 * A run that used up its budget with work left is continued by the timer
 * this much later.  Continuing at once would not end the hard IRQ at all:
 * hrtimer_interrupt() runs a timer whose expiry has passed again in the
 * same interrupt.
 */
#define KT_PCI_YIELD_NS		(50 * NSEC_PER_USEC)

/* Per-vector counters, in the order of the stats file. */
enum kt_vec_stat {
	KT_VS_INTERRUPTS,
	KT_VS_ENTRIES,
	KT_VS_FIRINGS,
	KT_VS_REJECTED,
	KT_VS_BAD_SEQ,
	KT_VS_MISDELIVERED,
	KT_VS_BAD_ENTRY,
	KT_VS_RING_CORRUPT,
	KT_VS_NR,
};

static const char * const kt_vec_stat_names[KT_VS_NR] = {
	[KT_VS_INTERRUPTS]	= "interrupts",
	[KT_VS_ENTRIES]		= "entries",
	[KT_VS_FIRINGS]		= "firings",
	[KT_VS_REJECTED]	= "rejected",
	[KT_VS_BAD_SEQ]		= "bad_seq",
	[KT_VS_MISDELIVERED]	= "misdelivered",
	[KT_VS_BAD_ENTRY]	= "bad_entry",
	[KT_VS_RING_CORRUPT]	= "ring_corrupt",
};

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
 * @irq: Linux IRQ number of the vector
 * @lock: the consumer side: @tail, @last_seq, @burst, @stopped, @stat and
 *	  the arming of @timer; raw, taken in hard IRQ by the device handler
 *	  and the timer
 * @tail: entries consumed
 * @last_seq: highest seq accepted on the ring
 * @burst: the entry being fired
 * @stopped: remove has begun: nothing is consumed or armed any more
 * @timer: fires @burst's later firings and continues a run out of budget;
 *	   pinned to @cpu, hard IRQ
 * @ack_seq: highest seq acknowledged (under the device's ack_lock)
 * @ack_held: @ack_seq is held back by hold_acks (under ack_lock)
 * @stat: counters (read locklessly by the stats file)
 * @name: IRQ name, one line per CPU in /proc/interrupts
 */
struct kt_vec {
	struct ks_cpu *ring;
	unsigned int cpu;
	int irq;
	raw_spinlock_t lock;
	u32 tail;
	u64 last_seq;
	struct kt_burst burst;
	bool stopped;
	struct hrtimer timer;
	u64 ack_seq;
	bool ack_held;
	u64 stat[KT_VS_NR];
	char name[32];
};

/**
 * struct kt_pci_dev - the bound sensor device
 * @pdev: PCI device
 * @bar0: ivshmem registers (the doorbell)
 * @region: BAR2
 * @dir: debugfs directory device/
 * @ack_lock: serialises publication of acks and the hold_acks switch; raw
 *	      because an ack may come from hard IRQ
 * @hold_acks: acks are recorded but not published (under @ack_lock)
 * @acks: acknowledgements published, one doorbell each (under @ack_lock)
 * @acks_held: acknowledgements recorded while held (under @ack_lock)
 * @nr_vecs: vectors, CPUs 0 .. @nr_vecs - 1
 * @vecs: per-vector state
 */
struct kt_pci_dev {
	struct pci_dev *pdev;
	void __iomem *bar0;
	struct ks_region *region;
	struct dentry *dir;
	raw_spinlock_t ack_lock;
	bool hold_acks;
	u64 acks;
	u64 acks_held;
	unsigned int nr_vecs;
	struct kt_vec vecs[KS_MAX_CPUS];
};

/* Set while a device is bound: kt_pci_ack() gets no device argument. */
static struct kt_pci_dev *kt_pci_bound;

static void kt_vec_inc(struct kt_vec *v, enum kt_vec_stat idx)
{
	WRITE_ONCE(v->stat[idx], v->stat[idx] + 1);
}

/* kd->ack_lock held. */
static void kt_pci_publish(struct kt_pci_dev *kd, struct kt_vec *v)
{
	/*
	 * An acknowledged entry whose messages were dropped must not look
	 * delivered: the count goes out with the ack.
	 */
	WRITE_ONCE(v->ring->events_dropped, kt_messages_lost(v->cpu));
	/* Pairs with the host's acquire: the words above are visible with it. */
	smp_store_release(&v->ring->acked_seq, v->ack_seq);
	writel(KT_PCI_DOORBELL_ACK, kd->bar0 + KS_DOORBELL);
	kd->acks++;
}

/*
 * Completion of ring @cpu's entry @seq.  From the ordered workqueue, or
 * from hard IRQ if no marker work item could be allocated.
 */
static void kt_pci_ack(unsigned int cpu, u64 seq)
{
	struct kt_pci_dev *kd = kt_pci_bound;
	unsigned long flags;
	struct kt_vec *v;

	if (WARN_ON_ONCE(!kd || cpu >= kd->nr_vecs))
		return;
	v = &kd->vecs[cpu];

	raw_spin_lock_irqsave(&kd->ack_lock, flags);
	if (seq > v->ack_seq)
		v->ack_seq = seq;
	if (kd->hold_acks) {
		v->ack_held = true;
		kd->acks_held++;
	} else {
		kt_pci_publish(kd, v);
	}
	raw_spin_unlock_irqrestore(&kd->ack_lock, flags);
}

static void kt_pci_reject(struct kt_vec *v, u64 seq, int err,
			  enum kt_vec_stat why)
{
	struct ks_cpu *ring = v->ring;

	kt_vec_inc(v, why);
	kt_vec_inc(v, KT_VS_REJECTED);
	WRITE_ONCE(ring->rejected_seq, seq);
	WRITE_ONCE(ring->rejected_errno, -err);
	/* The count publishes the pair above for a host that polls it. */
	smp_store_release(&ring->rejected, v->stat[KT_VS_REJECTED]);
	/* Its ack must not overtake the acks of earlier entries. */
	kt_thermal_defer_done(kt_pci_ack, v->cpu, seq);
}

/* v->lock held, as in every function down to kt_pci_irq(). */
static bool kt_pci_firing(const struct kt_vec *v)
{
	return v->burst.fired < v->burst.repeat;
}

static ktime_t kt_pci_due(const struct kt_burst *b)
{
	return ktime_add_ns(b->t0, (u64)b->fired * b->interval_ns);
}

/*
 * Fire what is due of the entry, in order, each firing as a plain entry
 * would: overdue firings (a late timer) all go now, none is skipped.
 */
static void kt_pci_fire(struct kt_vec *v, unsigned int *budget)
{
	struct kt_burst *b = &v->burst;
	bool last;
	u64 now;

	while (kt_pci_firing(v) && *budget) {
		if (b->fired && ktime_before(ktime_get(), kt_pci_due(b)))
			return;
		/* Only hotplug moves the timer (unsupported): refuse the rest. */
		if (smp_processor_id() != v->cpu) {
			b->fired = b->repeat;
			kt_pci_reject(v, b->seq, -EXDEV, KT_VS_MISDELIVERED);
			return;
		}
		/*
		 * Firing 0's image went in when the entry was checked; the
		 * package slot it claimed stays, so later ones cannot fail.
		 */
		if (b->fired)
			WARN_ON_ONCE(kt_regs_hw_set(v->cpu, b->reg, b->value));
		b->fired++;
		(*budget)--;
		kt_vec_inc(v, KT_VS_FIRINGS);
		last = !kt_pci_firing(v);
		now = kt_thermal_interrupt(last ? kt_pci_ack : NULL, b->seq,
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

/* Check the entry at the tail; if it is good, it is v->burst from now on. */
static void kt_pci_entry(struct kt_vec *v, const struct ks_entry *slot,
			 unsigned int *budget)
{
	u64 seq = READ_ONCE(slot->seq);
	u32 cpu = READ_ONCE(slot->cpu);
	u32 reg = READ_ONCE(slot->reg);
	u64 value = READ_ONCE(slot->value);
	u32 repeat = READ_ONCE(slot->repeat);
	u32 interval_ns = READ_ONCE(slot->interval_ns);
	int ret;

	kt_vec_inc(v, KT_VS_ENTRIES);

	/* acked_seq must only grow, or the host would lose track. */
	if (!seq || seq <= v->last_seq) {
		kt_pci_reject(v, seq, -EINVAL, KT_VS_BAD_SEQ);
		goto refused;
	}
	v->last_seq = seq;

	/* The handler reports on the CPU it runs on, not on entry.cpu. */
	if (cpu != v->cpu || smp_processor_id() != v->cpu) {
		kt_pci_reject(v, seq, -EXDEV, KT_VS_MISDELIVERED);
		goto refused;
	}

	if (!repeat || repeat > KS_MAX_REPEAT ||
	    interval_ns > KS_MAX_INTERVAL_NS) {
		kt_pci_reject(v, seq, -EINVAL, KT_VS_BAD_ENTRY);
		goto refused;
	}

	/*
	 * -EINVAL from kt_regs_hw_check(): reg is neither KS_REG_THERM_STATUS
	 * nor KS_REG_PKG_THERM_STATUS (KT_REG_TEMPERATURE_TARGET has no
	 * hardware state either), or value sets bits it refuses.  -ENOSPC: no
	 * package slot.
	 */
	ret = kt_regs_hw_set(v->cpu, reg, value);
	if (ret) {
		kt_pci_reject(v, seq, ret, KT_VS_BAD_ENTRY);
		goto refused;
	}

	v->burst = (struct kt_burst) {
		.seq = seq,
		.value = value,
		.reg = reg,
		.repeat = repeat,
		.interval_ns = interval_ns,
	};
	return;

refused:
	(*budget)--;
}

/*
 * Whether the ring has an entry to take; a ring whose indices cannot be
 * trusted is resynchronised and counts as empty.
 */
static bool kt_pci_pending(struct kt_vec *v)
{
	struct ks_cpu *ring = v->ring;
	/* Pairs with the host's release: entries up to head are written. */
	u32 head = smp_load_acquire(&ring->head);

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
static bool kt_pci_run(struct kt_vec *v, ktime_t *next)
{
	unsigned int budget = KT_PCI_BUDGET;
	bool more;

	for (;;) {
		kt_pci_fire(v, &budget);
		more = kt_pci_firing(v) || kt_pci_pending(v);
		if (!more || !budget || kt_pci_firing(v))
			break;
		kt_pci_entry(v, &v->ring->ring[v->tail % KS_RING_ENTRIES],
			     &budget);
		v->tail++;
		/* The slot was copied: the host may overwrite it. */
		smp_store_release(&v->ring->tail, v->tail);
	}
	if (!more)
		return false;
	*next = kt_pci_firing(v) ? kt_pci_due(&v->burst) : 0;
	if (!budget)
		*next = max(*next, ktime_add_ns(ktime_get(), KT_PCI_YIELD_NS));
	return true;
}

/*
 * The budget bounds one run against a host that keeps the ring full.
 * Stopping with entries left loses nothing: the timer goes on with them,
 * and a ring that arrives while this handler runs is latched by the local
 * APIC and runs it again.
 */
static irqreturn_t kt_pci_irq(int irq, void *data)
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
	if (!v->stopped && !kt_pci_firing(v) && kt_pci_run(v, &next) &&
	    smp_processor_id() == v->cpu)
		hrtimer_start(&v->timer, next, HRTIMER_MODE_ABS_PINNED_HARD);
	raw_spin_unlock(&v->lock);
	return IRQ_HANDLED;
}

static enum hrtimer_restart kt_pci_timer(struct hrtimer *timer)
{
	struct kt_vec *v = container_of(timer, struct kt_vec, timer);
	enum hrtimer_restart restart = HRTIMER_NORESTART;
	ktime_t next;

	raw_spin_lock(&v->lock);
	if (!v->stopped && kt_pci_run(v, &next)) {
		hrtimer_set_expires(timer, next);
		restart = HRTIMER_RESTART;
	}
	raw_spin_unlock(&v->lock);
	return restart;
}

/* debugfs: device/hold_acks, device/stats */

static ssize_t kt_hold_acks_read(struct file *file, char __user *ubuf,
				 size_t count, loff_t *ppos)
{
	struct kt_pci_dev *kd = file->private_data;
	char buf[4];
	int len;

	len = scnprintf(buf, sizeof(buf), "%u\n", READ_ONCE(kd->hold_acks));
	return simple_read_from_buffer(ubuf, count, ppos, buf, len);
}

static ssize_t kt_hold_acks_write(struct file *file, const char __user *ubuf,
				  size_t count, loff_t *ppos)
{
	struct kt_pci_dev *kd = file->private_data;
	unsigned long flags;
	unsigned int i;
	u64 hold;
	int ret;

	ret = kt_get_u64(ubuf, count, 10, &hold);
	if (ret)
		return ret;
	if (hold > 1)
		return -EINVAL;

	raw_spin_lock_irqsave(&kd->ack_lock, flags);
	kd->hold_acks = hold;
	for (i = 0; i < kd->nr_vecs; i++) {
		if (!hold && kd->vecs[i].ack_held) {
			kd->vecs[i].ack_held = false;
			kt_pci_publish(kd, &kd->vecs[i]);
		}
	}
	raw_spin_unlock_irqrestore(&kd->ack_lock, flags);
	return count;
}

static const struct file_operations kt_hold_acks_fops = {
	.owner	= THIS_MODULE,
	.open	= simple_open,
	.read	= kt_hold_acks_read,
	.write	= kt_hold_acks_write,
	.llseek	= default_llseek,
};

static int kt_pci_stats_show(struct seq_file *m, void *unused)
{
	struct kt_pci_dev *kd = m->private;
	u64 acks, acks_held;
	unsigned long flags;
	unsigned int i, s;

	for (i = 0; i < kd->nr_vecs; i++)
		for (s = 0; s < KT_VS_NR; s++)
			seq_printf(m, "cpu%u_%s %llu\n", i,
				   kt_vec_stat_names[s],
				   READ_ONCE(kd->vecs[i].stat[s]));

	raw_spin_lock_irqsave(&kd->ack_lock, flags);
	acks = kd->acks;
	acks_held = kd->acks_held;
	raw_spin_unlock_irqrestore(&kd->ack_lock, flags);
	seq_printf(m, "acks %llu\nacks_held %llu\ndone_direct %llu\n",
		   acks, acks_held, kt_done_direct());
	return 0;
}

DEFINE_SHOW_ATTRIBUTE(kt_pci_stats);

/* Probe and remove */

static int kt_pci_check_header(struct device *dev, const struct ks_header *h,
			       unsigned int n)
{
	u64 magic = READ_ONCE(h->magic);
	u32 version = READ_ONCE(h->version);
	u32 nr_cpus = READ_ONCE(h->nr_cpus);
	u32 entries = READ_ONCE(h->ring_entries);
	unsigned int cpu;

	if (magic != KS_MAGIC) {
		dev_err(dev, "BAR2 magic is %#llx, not %#llx: no sensor host behind this ivshmem device\n",
			magic, KS_MAGIC);
		return -ENODEV;
	}
	if (version != KS_VERSION) {
		dev_err(dev, "sensor ABI version is %u, this driver speaks %u\n",
			version, KS_VERSION);
		return -ENODEV;
	}
	if (entries != KS_RING_ENTRIES) {
		dev_err(dev, "header ring_entries is %u, the ABI says %u\n",
			entries, KS_RING_ENTRIES);
		return -EINVAL;
	}
	if (nr_cpus > KS_MAX_CPUS) {
		dev_err(dev, "header nr_cpus is %u, the ABI allows at most %u\n",
			nr_cpus, KS_MAX_CPUS);
		return -EINVAL;
	}
	if (nr_cpus < n) {
		dev_err(dev, "host provides %u rings, but %u CPUs are online\n",
			nr_cpus, n);
		return -EINVAL;
	}
	for (cpu = 0; cpu < n; cpu++) {
		if (!cpu_online(cpu)) {
			dev_err(dev, "CPU%u is offline: vector i must be CPU i's interrupt for i < %u\n",
				cpu, n);
			return -EINVAL;
		}
	}
	return 0;
}

/* Forget what an earlier driver instance left; returns the ring's tail. */
static u32 kt_pci_reset_ring(struct ks_cpu *ring, unsigned int cpu)
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

static int kt_pci_request_vector(struct kt_pci_dev *kd, unsigned int i)
{
	struct device *dev = &kd->pdev->dev;
	struct kt_vec *v = &kd->vecs[i];
	int ret;

	v->irq = pci_irq_vector(kd->pdev, i);
	if (v->irq < 0)
		return v->irq;
	snprintf(v->name, sizeof(v->name), KBUILD_MODNAME "-cpu%u", i);

	/* After request_irq(), x86 would deliver the first one elsewhere. */
	ret = irq_set_affinity(v->irq, cpumask_of(i));
	if (ret) {
		dev_err(dev, "cannot pin vector %u (IRQ %d) to CPU%u: %pe\n",
			i, v->irq, i, ERR_PTR(ret));
		return ret;
	}
	/* kt_thermal_interrupt() must run in hard IRQ, even with threadirqs. */
	ret = request_irq(v->irq, kt_pci_irq,
			  IRQF_NOBALANCING | IRQF_NO_THREAD, v->name, v);
	if (ret)
		dev_err(dev, "cannot request IRQ %d for CPU%u: %pe\n",
			v->irq, i, ERR_PTR(ret));
	return ret;
}

/* The first @n vectors have handlers; acks still use BAR0 and BAR2. */
static void kt_pci_free_vectors(struct kt_pci_dev *kd, unsigned int n)
{
	struct kt_vec *v;
	unsigned int i;

	/*
	 * Stopped first, so that neither a handler nor the timer itself
	 * arms the timer again once it is cancelled: no firing after this,
	 * and an entry still firing is never acknowledged.
	 */
	for (i = 0; i < n; i++) {
		v = &kd->vecs[i];
		raw_spin_lock_irq(&v->lock);
		v->stopped = true;
		raw_spin_unlock_irq(&v->lock);
		hrtimer_cancel(&v->timer);
	}
	for (i = 0; i < n; i++)
		free_irq(kd->vecs[i].irq, &kd->vecs[i]);
	pci_free_irq_vectors(kd->pdev);
	kt_irq_flush();
}

static int kt_pci_probe(struct pci_dev *pdev, const struct pci_device_id *id)
{
	struct device *dev = &pdev->dev;
	struct ks_header *hdr;
	struct kt_pci_dev *kd;
	unsigned int n, i;
	int ret;

	kd = devm_kzalloc(dev, sizeof(*kd), GFP_KERNEL);
	if (!kd)
		return -ENOMEM;
	if (cmpxchg(&kt_pci_bound, NULL, kd)) {
		dev_err(dev, "a sensor device is already bound, only one is supported\n");
		return -EBUSY;
	}
	kd->pdev = pdev;
	raw_spin_lock_init(&kd->ack_lock);

	ret = pcim_enable_device(pdev);
	if (ret) {
		dev_err(dev, "cannot enable the device: %pe\n", ERR_PTR(ret));
		goto err;
	}

	if (pci_resource_len(pdev, 0) < KS_DOORBELL + sizeof(u32)) {
		dev_err(dev, "BAR0 is %llu bytes, too small for the doorbell\n",
			(u64)pci_resource_len(pdev, 0));
		ret = -ENODEV;
		goto err;
	}
	kd->bar0 = pcim_iomap_region(pdev, 0, KBUILD_MODNAME);
	if (IS_ERR(kd->bar0)) {
		ret = PTR_ERR(kd->bar0);
		dev_err(dev, "cannot map BAR0: %pe\n", kd->bar0);
		goto err;
	}

	if (!(pci_resource_flags(pdev, 2) & IORESOURCE_MEM) ||
	    pci_resource_len(pdev, 2) < sizeof(struct ks_region)) {
		dev_err(dev, "BAR2 is %llu bytes of %s, the sensor region needs %zu bytes of memory\n",
			(u64)pci_resource_len(pdev, 2),
			pci_resource_flags(pdev, 2) & IORESOURCE_MEM ?
			"memory" : "I/O space or nothing",
			sizeof(struct ks_region));
		ret = -ENODEV;
		goto err;
	}
	ret = pcim_request_region(pdev, 2, KBUILD_MODNAME);
	if (ret) {
		dev_err(dev, "cannot request BAR2: %pe\n", ERR_PTR(ret));
		goto err;
	}
	/* Shared RAM on the host, not registers: cacheable is right. */
	kd->region = devm_memremap(dev, pci_resource_start(pdev, 2),
				   sizeof(struct ks_region), MEMREMAP_WB);
	if (IS_ERR(kd->region)) {
		ret = PTR_ERR(kd->region);
		dev_err(dev, "cannot map BAR2: %pe\n", kd->region);
		goto err;
	}
	hdr = &kd->region->header;

	n = num_online_cpus();
	ret = kt_pci_check_header(dev, hdr, n);
	if (ret)
		goto err;

	/* The host waits for ready before it rings: no entry is lost here. */
	WRITE_ONCE(hdr->ready, 0);
	WRITE_ONCE(hdr->guest_cpus, 0);
	for (i = 0; i < KS_MAX_CPUS; i++) {
		struct kt_vec *v = &kd->vecs[i];

		v->ring = &kd->region->cpus[i];
		v->cpu = i;
		v->tail = kt_pci_reset_ring(v->ring, i);
		raw_spin_lock_init(&v->lock);
		hrtimer_init(&v->timer, CLOCK_MONOTONIC,
			     HRTIMER_MODE_ABS_PINNED_HARD);
		v->timer.function = kt_pci_timer;
	}
	kd->nr_vecs = n;

	/* MSI-X messages are memory writes by the device. */
	pci_set_master(pdev);
	ret = pci_alloc_irq_vectors(pdev, n, n, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(dev, "cannot get %u MSI-X vectors, one per online CPU (ivshmem-doorbell needs vectors=%u): %pe\n",
			n, n, ERR_PTR(ret));
		goto err;
	}
	for (i = 0; i < n; i++) {
		ret = kt_pci_request_vector(kd, i);
		if (ret) {
			kt_pci_free_vectors(kd, i);
			goto err;
		}
	}
	pci_set_drvdata(pdev, kd);

	kd->dir = debugfs_create_dir("device", kt_debugfs_root());
	debugfs_create_file("hold_acks", 0600, kd->dir, kd, &kt_hold_acks_fops);
	debugfs_create_file("stats", 0444, kd->dir, kd, &kt_pci_stats_fops);

	WRITE_ONCE(hdr->guest_cpus, n);
	/* Pairs with the host's acquire: rings and guest_cpus are set. */
	smp_store_release(&hdr->ready, 1);
	dev_info(dev, "thermal sensor ready: %u CPUs, host provides %u\n",
		 n, READ_ONCE(hdr->nr_cpus));
	return 0;

err:
	WRITE_ONCE(kt_pci_bound, NULL);
	return ret;
}

static void kt_pci_remove(struct pci_dev *pdev)
{
	struct kt_pci_dev *kd = pci_get_drvdata(pdev);
	struct ks_header *hdr = &kd->region->header;

	/* The host stops ringing before the handlers go. */
	smp_store_release(&hdr->ready, 0);
	WRITE_ONCE(hdr->guest_cpus, 0);
	debugfs_remove_recursive(kd->dir);
	kt_pci_free_vectors(kd, kd->nr_vecs);
	/* devres unmaps BAR0 and BAR2 after this, with no ack left. */
	WRITE_ONCE(kt_pci_bound, NULL);
}

static const struct pci_device_id kt_pci_ids[] = {
	{ PCI_DEVICE(KS_PCI_VENDOR, KS_PCI_DEVICE) },
	{ }
};
MODULE_DEVICE_TABLE(pci, kt_pci_ids);

static struct pci_driver kt_pci_driver = {
	.name		= KBUILD_MODNAME,
	.id_table	= kt_pci_ids,
	.probe		= kt_pci_probe,
	.remove		= kt_pci_remove,
};

/**
 * kt_pci_init() - register the sensor device driver
 *
 * Probe may run before this returns; with no such device nothing binds
 * and the module works as before.
 *
 * Return: 0 or the error of pci_register_driver().
 */
int kt_pci_init(void)
{
	return pci_register_driver(&kt_pci_driver);
}

/**
 * kt_pci_exit() - unbind and unregister
 *
 * After this, no device interrupt or ack runs.
 *
 * Return: nothing.
 */
void kt_pci_exit(void)
{
	pci_unregister_driver(&kt_pci_driver);
}
