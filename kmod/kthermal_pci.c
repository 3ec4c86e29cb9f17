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
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/pci.h>
#include <linux/seq_file.h>
#include <linux/smp.h>
#include <linux/spinlock.h>
#include <linux/string.h>

#include "kevent_sensor.h"
#include "kthermal.h"

static_assert(sizeof(struct ks_header) == 64);
static_assert(sizeof(struct ks_entry) == 32);
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

/* Per-vector counters, in the order of the stats file. */
enum kt_vec_stat {
	KT_VS_INTERRUPTS,
	KT_VS_ENTRIES,
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
	[KT_VS_REJECTED]	= "rejected",
	[KT_VS_BAD_SEQ]		= "bad_seq",
	[KT_VS_MISDELIVERED]	= "misdelivered",
	[KT_VS_BAD_ENTRY]	= "bad_entry",
	[KT_VS_RING_CORRUPT]	= "ring_corrupt",
};

/**
 * struct kt_vec - one MSI-X vector: the thermal interrupt of one CPU
 * @ring: the CPU's ring and ack words in BAR2
 * @cpu: the CPU the vector is pinned to, also the ring's index
 * @irq: Linux IRQ number of the vector
 * @tail: entries consumed (handler only)
 * @last_seq: highest seq accepted on the ring (handler only)
 * @ack_seq: highest seq acknowledged (under the device's ack_lock)
 * @ack_held: @ack_seq is held back by hold_acks (under ack_lock)
 * @stat: counters; written by the handler only, which never runs on two
 *	  CPUs at once for one vector
 * @name: IRQ name, one line per CPU in /proc/interrupts
 */
struct kt_vec {
	struct ks_cpu *ring;
	unsigned int cpu;
	int irq;
	u32 tail;
	u64 last_seq;
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

static void kt_pci_entry(struct kt_vec *v, const struct ks_entry *slot)
{
	u64 seq = READ_ONCE(slot->seq);
	u32 cpu = READ_ONCE(slot->cpu);
	u32 reg = READ_ONCE(slot->reg);
	u64 value = READ_ONCE(slot->value);
	int ret;

	kt_vec_inc(v, KT_VS_ENTRIES);

	/* acked_seq must only grow, or the host would lose track. */
	if (!seq || seq <= v->last_seq) {
		kt_pci_reject(v, seq, -EINVAL, KT_VS_BAD_SEQ);
		return;
	}
	v->last_seq = seq;

	/* The handler reports on the CPU it runs on, not on entry.cpu. */
	if (cpu != v->cpu || smp_processor_id() != v->cpu) {
		kt_pci_reject(v, seq, -EXDEV, KT_VS_MISDELIVERED);
		return;
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
		return;
	}

	kt_thermal_interrupt(kt_pci_ack, seq, 0);
}

/*
 * The budget bounds one run against a host that keeps the ring full.
 * Stopping with entries left loses nothing: the host rings after every
 * head update, and a ring that arrives while this handler runs is latched
 * by the local APIC and runs it again.
 */
static irqreturn_t kt_pci_irq(int irq, void *data)
{
	struct kt_vec *v = data;
	struct ks_cpu *ring = v->ring;
	unsigned int budget = KS_RING_ENTRIES;
	u32 head, tail = v->tail;

	kt_vec_inc(v, KT_VS_INTERRUPTS);
	WRITE_ONCE(ring->interrupts, v->stat[KT_VS_INTERRUPTS]);

	while (budget) {
		/* Pairs with the host's release: entries up to head are written. */
		head = smp_load_acquire(&ring->head);
		if (head == tail)
			break;
		if (head - tail > KS_RING_ENTRIES) {
			/* Nothing in the ring can be trusted: resync. */
			kt_vec_inc(v, KT_VS_RING_CORRUPT);
			tail = head;
			/* The host may reuse the slots once it sees tail. */
			smp_store_release(&ring->tail, tail);
			break;
		}
		for (; tail != head && budget; budget--) {
			kt_pci_entry(v, &ring->ring[tail % KS_RING_ENTRIES]);
			tail++;
			/* The slot was copied: the host may overwrite it. */
			smp_store_release(&ring->tail, tail);
		}
	}
	v->tail = tail;
	return IRQ_HANDLED;
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
	unsigned int i;

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
