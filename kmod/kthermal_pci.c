// SPDX-License-Identifier: GPL-2.0
/*
 * kevent_thermal: the driver of the sensor device the host emulates
 *
 * The host emulates the thermal sensor behind an ivshmem-doorbell PCI
 * device (include/kevent_sensor.h is the contract): BAR2 holds one ring of
 * register images per CPU, MSI-X vector i is CPU i's thermal interrupt.
 * The injection path of kthermal_inject.c fakes the interrupt with an
 * irq_work; here it is a real device interrupt, raised from outside the
 * guest.  This file finds and checks the device, maps it, and pins vector
 * i to CPU i with kt_ring_irq() (kthermal_ring.c, the consumer of the
 * rings) as its hard-IRQ handler.
 *
 * Vector i must run on CPU i, so CPUs 0 .. n-1 must be online at probe and
 * stay online.
 *
 * One device at most: the register file it drives and the completion it
 * receives (kt_done_fn has no device argument) are global.
 */

#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/build_bug.h>
#include <linux/cpumask.h>
#include <linux/err.h>
#include <linux/errno.h>
#include <linux/interrupt.h>
#include <linux/io.h>
#include <linux/pci.h>
#include <linux/sprintf.h>

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

/**
 * struct kt_pci_vec - the IRQ of one MSI-X vector
 * @irq: Linux IRQ number
 * @name: IRQ name, one line per CPU in /proc/interrupts
 */
struct kt_pci_vec {
	int irq;
	char name[32];
};

/**
 * struct kt_pci_dev - the bound sensor device
 * @pdev: PCI device
 * @bar0: ivshmem registers (the doorbell)
 * @region: BAR2
 * @rings: the consumer of its rings (kthermal_ring.c)
 * @vecs: the IRQs of vectors 0 .. kt_ring_nr() - 1
 */
struct kt_pci_dev {
	struct pci_dev *pdev;
	void __iomem *bar0;
	struct ks_region *region;
	struct kt_rings *rings;
	struct kt_pci_vec vecs[KS_MAX_CPUS];
};

/* Set while a device is bound: the register file it drives is global. */
static struct kt_pci_dev *kt_pci_bound;

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

static int kt_pci_request_vector(struct kt_pci_dev *kd, unsigned int i)
{
	struct device *dev = &kd->pdev->dev;
	struct kt_pci_vec *v = &kd->vecs[i];
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
	ret = request_irq(v->irq, kt_ring_irq, IRQF_NOBALANCING | IRQF_NO_THREAD,
			  v->name, kt_ring_vec(kd->rings, i));
	if (ret)
		dev_err(dev, "cannot request IRQ %d for CPU%u: %pe\n",
			v->irq, i, ERR_PTR(ret));
	else
		dev_dbg(dev, "vector %u is IRQ %d, CPU%u's thermal interrupt\n",
			i, v->irq, i);
	return ret;
}

/* The first @n vectors have handlers. */
static void kt_pci_free_vectors(struct kt_pci_dev *kd, unsigned int n)
{
	unsigned int i;

	kt_ring_stop(kd->rings);
	for (i = 0; i < n; i++)
		free_irq(kd->vecs[i].irq, kt_ring_vec(kd->rings, i));
	pci_free_irq_vectors(kd->pdev);
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
	kd->rings = kt_ring_create(dev, kd->bar0 + KS_DOORBELL, kd->region, n);
	if (IS_ERR(kd->rings)) {
		ret = PTR_ERR(kd->rings);
		goto err;
	}

	/* MSI-X messages are memory writes by the device. */
	pci_set_master(pdev);
	ret = pci_alloc_irq_vectors(pdev, n, n, PCI_IRQ_MSIX);
	if (ret < 0) {
		dev_err(dev, "cannot get %u MSI-X vectors, one per online CPU (ivshmem-doorbell needs vectors=%u): %pe\n",
			n, n, ERR_PTR(ret));
		goto err_rings;
	}
	for (i = 0; i < n; i++) {
		ret = kt_pci_request_vector(kd, i);
		if (ret)
			goto err_vectors;
	}
	pci_set_drvdata(pdev, kd);

	kt_debugfs_device_init(kd->rings);

	WRITE_ONCE(hdr->guest_cpus, n);
	/* Pairs with the host's acquire: rings and guest_cpus are set. */
	smp_store_release(&hdr->ready, 1);
	dev_info(dev, "thermal sensor ready: %u CPUs, host provides %u\n",
		 n, READ_ONCE(hdr->nr_cpus));
	return 0;

err_vectors:
	kt_pci_free_vectors(kd, i);
err_rings:
	kt_ring_destroy(kd->rings);
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
	kt_debugfs_device_exit();
	kt_pci_free_vectors(kd, kt_ring_nr(kd->rings));
	/* devres unmaps BAR0 and BAR2 after this, with no ack left. */
	kt_ring_destroy(kd->rings);
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
