// SPDX-License-Identifier: GPL-2.0
/*
 * mlfx_mem: physical RAM, read-only, for the mlfx agent (interface: mlfx_mem_uapi.h).
 *
 * The module only answers requests: it never writes a file or a socket. What it reads is
 * System RAM as the iomem tree says, nested ranges included (virtio-mem, dax kmem), and a
 * page it cannot read is an error with its reason, never zeros.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/capability.h>
#include <linux/compat.h>
#include <linux/fs.h>
#include <linux/highmem.h>
#include <linux/ioport.h>
#include <linux/memory_hotplug.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/page-flags.h>
#include <linux/sched/signal.h>
#include <linux/security.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>
#include <linux/version.h>

#include "mlfx_mem_uapi.h"

#define MLFX_MEM_MODULE_VERSION "1.0.0"

/* Bounds that keep a damaged or hostile tree from looping us forever. */
#define MLFX_MEM_MAX_RESOURCES 65536u
#define MLFX_MEM_MAX_DEPTH 64u

/* What the kernel itself images as RAM (walk_system_ram_range, kexec, LiME HEAD). */
#define MLFX_MEM_SYSRAM_FLAGS (IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY)

static unsigned long opened;          /* bit 0: the device has its one opener */
static DEFINE_MUTEX(io_mutex);        /* one pread or ioctl at a time: one bounce page */
static void *bounce;                  /* a page: RAM is copied here, then to the user */
static atomic64_t alloc_now = ATOMIC64_INIT(0);
static atomic64_t alloc_peak = ATOMIC64_INIT(0);

static void account_alloc(s64 bytes)
{
	s64 now = atomic64_add_return(bytes, &alloc_now);
	s64 peak = atomic64_read(&alloc_peak);

	while (now > peak) {
		s64 seen = atomic64_cmpxchg(&alloc_peak, peak, now);

		if (seen == peak)
			break;
		peak = seen;
	}
}

/* The module's text and data in memory: what loading it added to the image. */
static u64 module_core_bytes(void)
{
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	u64 total = 0;

	for_class_mod_mem_type(type, core)
		total += THIS_MODULE->mem[type].size;
	return total;
#else
	return THIS_MODULE->core_layout.size;
#endif
}

static long ioctl_info(void __user *arg)
{
	struct mlfx_mem_info info;

	memset(&info, 0, sizeof(info));
	info.uapi_version = MLFX_MEM_UAPI_VERSION;
	info.page_size = PAGE_SIZE;
	info.module_core_bytes = module_core_bytes();
	info.module_alloc_bytes = atomic64_read(&alloc_peak);
	strscpy(info.module_version, MLFX_MEM_MODULE_VERSION, sizeof(info.module_version));
	strscpy(info.kernel_release, init_utsname()->release, sizeof(info.kernel_release));
	return copy_to_user(arg, &info, sizeof(info)) ? -EFAULT : 0;
}

/*
 * The iomem tree, depth-first, into out[0..capacity). Returns the number of resources, or
 * -E2BIG past MLFX_MEM_MAX_RESOURCES. RAM is flagged on the outermost System RAM resources
 * only: those inside one (Kernel code, data, bss, Crash kernel) carry the same kernel flags
 * but are part of the range around them, which is what gets imaged.
 *
 * resource_lock is private to the kernel, so this reads the tree as LiME does, unlocked; it
 * copies into a kernel buffer without sleeping to keep the window short. The tree changes
 * only on hot-plug or a driver (un)binding a region.
 */
static long snapshot_iomem(struct mlfx_mem_range *out, u32 capacity)
{
	struct resource *p = READ_ONCE(iomem_resource.child);
	u32 count = 0, depth = 0;
	int ram_depth = -1; /* depth of the RAM range we are inside, -1 when none */

	while (p) {
		bool sysram = (p->flags & MLFX_MEM_SYSRAM_FLAGS) == MLFX_MEM_SYSRAM_FLAGS;

		if (count == MLFX_MEM_MAX_RESOURCES || depth >= MLFX_MEM_MAX_DEPTH)
			return -E2BIG;
		if (ram_depth >= 0 && depth <= (u32)ram_depth)
			ram_depth = -1;
		if (count < capacity) {
			struct mlfx_mem_range *r = &out[count];

			r->start = p->start;
			r->end = p->end;
			r->depth = depth;
			r->flags = 0;
			if (sysram && ram_depth < 0)
				r->flags |= MLFX_MEM_RANGE_RAM;
			if (p->flags & IORESOURCE_BUSY)
				r->flags |= MLFX_MEM_RANGE_BUSY;
			strscpy(r->name, p->name ? p->name : "<BAD>", sizeof(r->name));
		}
		if (sysram && ram_depth < 0)
			ram_depth = depth;
		count++;

		if (p->child) {
			p = p->child;
			depth++;
			continue;
		}
		while (!p->sibling && p->parent && p->parent != &iomem_resource) {
			p = p->parent;
			depth--;
		}
		p = p->sibling;
	}
	return count;
}

static long ioctl_ranges(void __user *arg)
{
	struct mlfx_mem_ranges req;
	struct mlfx_mem_range *buf = NULL;
	size_t bytes;
	u32 capacity;
	long count;

	if (copy_from_user(&req, arg, sizeof(req)))
		return -EFAULT;
	capacity = min(req.capacity, MLFX_MEM_MAX_RESOURCES);
	bytes = (size_t)capacity * sizeof(*buf);
	if (capacity) {
		buf = kvzalloc(bytes, GFP_KERNEL);
		if (!buf)
			return -ENOMEM;
		account_alloc(bytes);
	}
	count = snapshot_iomem(buf, capacity);
	if (count >= 0) {
		req.count = count;
		if (copy_to_user(u64_to_user_ptr(req.ranges), buf,
				 (size_t)min_t(u32, count, capacity) * sizeof(*buf)) ||
		    copy_to_user(arg, &req, sizeof(req)))
			count = -EFAULT;
	}
	if (buf) {
		kvfree(buf);
		account_alloc(-(s64)bytes);
	}
	return count < 0 ? count : 0;
}

static long mlfx_mem_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	long ret;

	if (mutex_lock_interruptible(&io_mutex))
		return -ERESTARTSYS;
	switch (cmd) {
	case MLFX_MEM_IOC_INFO:
		ret = ioctl_info((void __user *)arg);
		break;
	case MLFX_MEM_IOC_RANGES:
		ret = ioctl_ranges((void __user *)arg);
		break;
	default:
		ret = -ENOTTY;
	}
	mutex_unlock(&io_mutex);
	return ret;
}

/* walk_iomem_res_desc hands over the first System RAM piece in the window: keep it, stop. */
static int keep_first_piece(struct resource *res, void *arg)
{
	*(struct resource *)arg = *res;
	return 1;
}

/*
 * The last byte of the run of System RAM that starts at pos, looked up under the kernel's
 * resource lock (nested ranges included), within [pos, pos + len). -ENXIO when pos is not
 * System RAM.
 */
static int ram_run_end(u64 pos, u64 len, u64 *end)
{
	struct resource piece = {};
	u64 last = pos + max_t(u64, len, 2) - 1; /* the walk wants a window of 2 bytes or more */

	if (last < pos)
		last = U64_MAX;
	if (walk_iomem_res_desc(IORES_DESC_NONE, MLFX_MEM_SYSRAM_FLAGS, pos, last, &piece,
				keep_first_piece) != 1 || piece.start != pos)
		return -ENXIO;
	*end = piece.end;
	return 0;
}

/* Whether the kernel's own mapping of this address is present (secretmem, a loaded crash
 * kernel's reserve, debug_pagealloc and the like take pages out of the direct map). */
static bool kernel_mapping_present(const void *va)
{
#ifdef CONFIG_X86
	unsigned int level;
	pte_t *pte = lookup_address((unsigned long)va, &level);

	return pte && (pte_flags(*pte) & _PAGE_PRESENT);
#else
	return true; /* copy_from_kernel_nofault below catches the fault instead */
#endif
}

/*
 * Copies n bytes at physical address pa (all within one page) into the bounce page.
 * Returns 0 or the reason the page cannot be read.
 */
static int copy_ram(u64 pa, size_t n)
{
	unsigned long pfn = PHYS_PFN(pa);
	struct page *page;
	const u8 *src;
	int err = 0;

	if (!pfn_valid(pfn))
		return -ENXIO;
	page = pfn_to_online_page(pfn);
	if (!page)
		return -EAGAIN; /* its memory section is offline */
	if (is_page_hwpoison(page))
		return -EHWPOISON;
	if (PageOffline(page))
		return -EAGAIN; /* logically offline: ballooned, unplugged by virtio-mem */

	src = kmap_local_page(page);
	if (!kernel_mapping_present(src)) {
		err = -EAGAIN;
	} else {
#ifdef CONFIG_ARCH_HAS_COPY_MC
		if (copy_mc_to_kernel(bounce, src + offset_in_page(pa), n))
			err = kernel_mapping_present(src) ? -EIO : -EAGAIN;
#else
		if (copy_from_kernel_nofault(bounce, src + offset_in_page(pa), n))
			err = -EAGAIN;
#endif
	}
	kunmap_local(src);
	return err;
}

/*
 * pread(fd, buf, count, physical_address): System RAM only; a short count at the first byte
 * that cannot be read, and the error itself when that is the first byte asked for.
 */
static ssize_t mlfx_mem_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	u64 pos = *ppos;
	size_t done = 0;
	int err = 0;

	if (*ppos < 0)
		return -EINVAL;
	if (count == 0)
		return 0;
	if (mutex_lock_interruptible(&io_mutex))
		return -ERESTARTSYS;
	while (done < count && !err) {
		u64 run_end;

		err = ram_run_end(pos, count - done, &run_end);
		while (!err && done < count && pos <= run_end) {
			size_t n = min3((u64)(PAGE_SIZE - offset_in_page(pos)), (u64)(count - done),
					run_end - pos + 1);

			err = copy_ram(pos, n);
			if (!err && copy_to_user(buf + done, bounce, n))
				err = -EFAULT;
			if (!err) {
				pos += n;
				done += n;
			}
			if (fatal_signal_pending(current) && !err)
				err = -EINTR;
			cond_resched();
		}
	}
	mutex_unlock(&io_mutex);
	if (done) {
		*ppos = pos;
		return done;
	}
	return err;
}

static int mlfx_mem_open(struct inode *inode, struct file *file)
{
	int err;

	if (!capable(CAP_SYS_RAWIO))
		return -EPERM;
	if (file->f_mode & FMODE_WRITE)
		return -EACCES; /* read-only device */
	/* Confidentiality lockdown forbids reading kernel memory (it closes /proc/kcore): so do we. */
	err = security_locked_down(LOCKDOWN_KCORE);
	if (err) {
		pr_warn("refusing to read RAM: the kernel is locked down (confidentiality)\n");
		return err;
	}
	if (test_and_set_bit(0, &opened))
		return -EBUSY;
	return 0;
}

static int mlfx_mem_release(struct inode *inode, struct file *file)
{
	clear_bit(0, &opened);
	return 0;
}

static const struct file_operations mlfx_mem_fops = {
	.owner = THIS_MODULE, /* an open device holds the module: rmmod says "in use" */
	.llseek = default_llseek, /* read() at the position lseek set works too, like pread */
	.open = mlfx_mem_open,
	.release = mlfx_mem_release,
	.read = mlfx_mem_read,
	.unlocked_ioctl = mlfx_mem_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
};

static struct miscdevice mlfx_mem_device = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = MLFX_MEM_DEVICE_NAME,
	.fops = &mlfx_mem_fops,
	.mode = 0400,
};

static int __init mlfx_mem_init(void)
{
	int err;

	bounce = (void *)__get_free_page(GFP_KERNEL);
	if (!bounce)
		return -ENOMEM;
	account_alloc(PAGE_SIZE);
	err = misc_register(&mlfx_mem_device);
	if (err) {
		pr_err("cannot register /dev/%s: error %d\n", MLFX_MEM_DEVICE_NAME, err);
		free_page((unsigned long)bounce);
		return err;
	}
	pr_info("version %s: /dev/%s ready (read-only, one reader)\n", MLFX_MEM_MODULE_VERSION,
		MLFX_MEM_DEVICE_NAME);
	return 0;
}

static void __exit mlfx_mem_exit(void)
{
	misc_deregister(&mlfx_mem_device);
	free_page((unsigned long)bounce);
	pr_info("unloaded\n");
}

module_init(mlfx_mem_init);
module_exit(mlfx_mem_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("mlfx");
MODULE_DESCRIPTION("Read-only physical RAM for the mlfx agent: the whole iomem tree, pread by physical address, unreadable pages reported with their reason");
MODULE_VERSION(MLFX_MEM_MODULE_VERSION);
